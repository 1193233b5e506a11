"""The authentication and authorization interceptor every gRPC server runs in secure mode.

Per call: who is it (a bearer token in `authorization` metadata, else the verified client
certificate of the peer port), may it call this RPC (`policy.RULES`), and — for deployers
and invokers — on this function (its namespace, looked up through the service's
`namespace_of`). A call that proves nobody is answered `UNAUTHENTICATED`, one that may not
do what it asks `PERMISSION_DENIED`; either before the servicer sees it, so nothing
changes, and either logged as one audit line (logger `dilu.audit`: who, from where, what,
why; never the token). Health checks pass unauthenticated (probes). The servicer finds the
caller in `current_caller()` (to filter listings, to place a deploy in the deployer's
namespace).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from services.common.clock import SYSTEM_CLOCK, Clock
from services.common.interceptors import Handler, Undecodable
from services.common.security.access import AccessBook, Unauthenticated
from services.common.security.identity import Caller
from services.common.security.policy import (
    HEALTH_PREFIX,
    decide,
    decide_namespace,
    may_call,
)

audit = logging.getLogger("dilu.audit")
log = logging.getLogger(__name__)

_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("dilu_caller", default=None)
# The namespace of a function by name, or None when there is no such function.
NamespaceOf = Callable[[str], Awaitable[str | None]]


def current_caller() -> Caller | None:
    """The authenticated caller of the RPC being served; None in insecure mode."""
    return _caller.get()


class Denied(Exception):
    """Why a call is refused, with its status code."""

    def __init__(self, code: grpc.StatusCode, reason: str, caller: Caller | None = None,
                 resource: str = "") -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.caller = caller
        self.resource = resource


async def _no_namespace(_function: str) -> str | None:
    return None


class Authorizer:
    """Decides calls for one server. `book`: the access store's entries (None: tokens
    and bindings are not accepted, e.g. on workers); `namespace_of`: the namespace of a
    function by name; `local_node`: the server's node (workers)."""

    def __init__(self, book: AccessBook | None, *, namespace_of: NamespaceOf = _no_namespace,
                 local_node: str = "", clock: Clock = SYSTEM_CLOCK, hint: str = "") -> None:
        self._book = book if book is not None else AccessBook()
        self._namespace_of = namespace_of
        self._local_node = local_node
        self._clock = clock
        # Where credentials go, for the UNAUTHENTICATED message.
        self._hint = hint or ("send 'authorization: Bearer <token>', or a client certificate "
                              "on the peer port")

    def authenticate(self, context: grpc.aio.ServicerContext) -> Caller:
        """The caller, or `Denied(UNAUTHENTICATED)`."""
        token = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                text = value if isinstance(value, str) else value.decode(errors="replace")
                scheme, _, credential = text.strip().partition(" ")
                if scheme.lower() != "bearer" or not credential.strip():
                    raise Denied(grpc.StatusCode.UNAUTHENTICATED,
                                 "malformed authorization metadata (expected 'Bearer <token>')")
                token = credential.strip()
                break
        try:
            if token is not None:
                return self._book.caller_for_token(token, self._clock.time())
            names = (context.auth_context() or {}).get("x509_common_name") or []
            if names:
                return self._book.caller_for_certificate(names[0].decode(errors="replace"))
        except Unauthenticated as error:
            raise Denied(grpc.StatusCode.UNAUTHENTICATED, str(error)) from None
        raise Denied(grpc.StatusCode.UNAUTHENTICATED, f"no credentials: {self._hint}")

    async def authorize(self, method: str, request: Any, context: grpc.aio.ServicerContext) -> Caller | None:
        """The caller if it may make this call (None for an unauthenticated health check);
        `Denied` otherwise."""
        if method.startswith(HEALTH_PREFIX):
            return None
        caller = self.authenticate(context)
        # An undecodable request names nothing to check: the error interceptor answers it
        # INVALID_ARGUMENT, as long as the caller may call the RPC at all.
        if isinstance(request, Undecodable):
            verdict = may_call(caller, method, local_node=self._local_node)
        else:
            verdict = decide(caller, method, request, local_node=self._local_node)
        if verdict.function and not verdict.allowed:
            verdict = decide_namespace(caller, verdict.function,
                                       await self._namespace_of(verdict.function))
        if not verdict.allowed:
            raise Denied(grpc.StatusCode.PERMISSION_DENIED, verdict.reason, caller, verdict.resource)
        return caller

    def unary(self, method: str, inner: Handler) -> Handler:
        async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                caller = await self.authorize(method, request, context)
            except Denied as denied:
                _audit(method, context, denied)
                await context.abort(denied.code, denied.reason)
            token = _caller.set(caller)
            try:
                return await inner(request, context)
            finally:
                _caller.reset(token)

        return handle

    def stream(self, method: str,
               inner: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
        async def handle(request_iterator: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            try:
                await self.authorize(method, None, context)
            except Denied as denied:
                _audit(method, context, denied)
                await context.abort(denied.code, denied.reason)
            async for response in inner(request_iterator, context):
                yield response

        return handle


def _audit(method: str, context: grpc.aio.ServicerContext, denied: Denied) -> None:
    try:
        peer = context.peer()
    except Exception:
        peer = "?"
    who = denied.caller.describe() if denied.caller is not None else "caller=anonymous"
    resource = f" {denied.resource}" if denied.resource else ""
    audit.warning("audit: refused %s %s %s peer=%s%s: %s", denied.code.name, method, who, peer,
                  resource, denied.reason)


class _AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method  # type: ignore[attr-defined]
        if handler is None:
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._authorizer.unary(method, handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.stream_stream is not None and not method.startswith(HEALTH_PREFIX):
            return grpc.stream_stream_rpc_method_handler(
                self._authorizer.stream(method, handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler


def auth_interceptor(authorizer: Authorizer) -> grpc.aio.ServerInterceptor:
    """The interceptor; place it after metrics and tracing and before error mapping."""
    return _AuthInterceptor(authorizer)

"""Server interceptors: RPC metrics, domain errors to status codes, a server span per RPC."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import trace
from opentelemetry.propagate import extract

from services.common.errors import DiluError, InvalidArgument
from services.common.metrics import measured_unary

log = logging.getLogger(__name__)

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _status_for(error: DiluError) -> grpc.Status:
    details = []
    if isinstance(error, InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=error.field, description=error.problem
                )
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        details.append(packed)
    for detail in error.details():
        packed = any_pb2.Any()
        packed.Pack(detail)
        details.append(packed)
    status = status_pb2.Status(
        code=getattr(code_pb2, error.code.name), message=error.message, details=details
    )
    return rpc_status.to_status(status)


class Undecodable:
    """Stands in for a request whose bytes are not the RPC's request message, so that the
    error interceptor answers INVALID_ARGUMENT instead of grpc's UNKNOWN and a traceback."""

    def __init__(self, type_name: str, problem: str) -> None:
        self.type_name = type_name
        self.problem = problem


def _lenient(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def decode(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as error:  # DecodeError, RecursionError on absurd nesting, ...
            owner = getattr(deserializer, "__self__", None)
            name = getattr(owner, "DESCRIPTOR", None)
            return Undecodable(name.full_name if name is not None else "the request message",
                               str(error).split(":")[-1].strip() or type(error).__name__)

    return decode


def _wrap_unary(method: str, inner: Handler) -> Handler:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            await context.abort_with_status(_status_for(InvalidArgument(
                "request", f"is not a valid {request.type_name}: {request.problem}")))
        try:
            return await inner(request, context)
        except DiluError as error:
            await context.abort_with_status(_status_for(error))
        except grpc.aio.AbortError:
            raise
        except Exception:
            # Never leak internals to callers; the traceback goes to the log.
            log.exception("unhandled error in %s", method)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}")

    return handle


def _traced_unary(method: str, inner: Handler) -> Handler:
    tracer = trace.get_tracer("dilu.grpc")

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        carrier = {k: v for k, v in (context.invocation_metadata() or ()) if isinstance(v, str)}
        with tracer.start_as_current_span(
            method, context=extract(carrier), kind=trace.SpanKind.SERVER
        ) as span:
            span.set_attribute("rpc.system", "grpc")
            span.set_attribute("rpc.method", method)
            return await inner(request, context)

    return handle


class _UnaryWrapping(grpc.aio.ServerInterceptor):
    """Wraps every unary-unary handler with `wrapper(method, handler)` (and, when
    `lenient`, its request decoding); reflection streams pass through untouched."""

    def __init__(self, wrapper: Callable[[str, Handler], Handler], lenient: bool = False) -> None:
        self._wrapper = wrapper
        self._lenient = lenient

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        return _rewrap(handler, handler_call_details.method, self._wrapper,  # type: ignore[attr-defined]
                       self._lenient)


def error_interceptor() -> grpc.aio.ServerInterceptor:
    """Turns `DiluError` into its status code (with BadRequest details for bad fields and
    the error's own `details()`, e.g. where a GPU had no room), an undecodable request into
    INVALID_ARGUMENT, and anything else into INTERNAL."""
    return _UnaryWrapping(_wrap_unary, lenient=True)


def metrics_interceptor() -> grpc.aio.ServerInterceptor:
    """Counts every unary RPC and times it, by method and final status code (Prometheus)."""
    return _UnaryWrapping(measured_unary)


def tracing_interceptor() -> grpc.aio.ServerInterceptor:
    """Continues the caller's W3C trace (from metadata) with a server span per RPC."""
    return _UnaryWrapping(_traced_unary)


def _rewrap(
    handler: grpc.RpcMethodHandler | None,
    method: str,
    wrapper: Callable[[str, Handler], Handler],
    lenient: bool,
) -> grpc.RpcMethodHandler:
    if handler is None or handler.unary_unary is None:
        return handler  # type: ignore[return-value]
    deserializer = handler.request_deserializer
    return grpc.unary_unary_rpc_method_handler(
        wrapper(method, handler.unary_unary),
        request_deserializer=_lenient(deserializer) if lenient else deserializer,
        response_serializer=handler.response_serializer,
    )

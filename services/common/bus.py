"""NATS bus client: connect with backoff, reconnect forever, protobuf events with trace
context in headers, JetStream key-value buckets of protobuf values. In secure mode the
connection is TLS with the process's certificate, which NATS maps to the identity's user
and permissions (`services.common.security.nats_access`)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import nats
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js import errors as js_errors
from nats.js.kv import KeyValue
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from services.common.errors import Unavailable
from services.common.security.identity import NATS_IDENTITY
from services.common.security.nats_access import inbox_prefix
from services.common.security.tls import TlsFiles, client_context
from services.common.tracing import trace_headers

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)


class Bus:
    """A NATS connection shared by one service."""

    def __init__(self, nc: Client, name: str, lost: asyncio.Event | None = None) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream(timeout=2.0)
        self._name = name
        self._tracer = trace.get_tracer("dilu.bus")
        # Set while the connection is down (so a drain at shutdown need not wait for it).
        self._lost = lost if lost is not None else asyncio.Event()

    @classmethod
    async def connect(cls, url: str, name: str, *, connect_timeout_s: float = 60.0,
                      tls: TlsFiles | None = None) -> Bus:
        """Connect, retrying with exponential backoff while the server is not up yet.

        Once connected, nats-py reconnects by itself forever (every ~0.5 s with jitter) and
        re-creates subscriptions, so a restarted NATS is picked up without our help. With
        `tls`, the connection presents the certificate and verifies the server as
        `dilu-nats`, and replies come to the identity's own inbox (the only one NATS lets
        it read).
        """

        lost = asyncio.Event()

        async def on_disconnect() -> None:
            lost.set()
            log.warning("bus disconnected; reconnecting")

        async def on_reconnect() -> None:
            lost.clear()
            log.info("bus reconnected")

        async def on_error(error: Exception) -> None:
            if "permissions violation" in str(error).lower():
                # The server refused something this identity may not do: a bug worth seeing.
                log.warning("bus refused: %s", error)
            else:
                log.debug("bus error: %s", error)

        secure: dict[str, object] = {}
        if tls is not None:
            secure = {"tls": client_context(tls), "tls_hostname": NATS_IDENTITY,
                      "inbox_prefix": inbox_prefix(tls.identity)}
            quiet_ssl_close()
        servers = [s.strip() for s in url.split(",") if s.strip()]
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(Exception),
            wait=wait_exponential(multiplier=0.1, max=2.0),
            stop=stop_after_delay(connect_timeout_s),
            reraise=True,
        ):
            with attempt:
                nc = await nats.connect(
                    servers=servers,
                    name=name,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    connect_timeout=2,
                    ping_interval=5,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                    error_cb=on_error,
                    **secure,  # type: ignore[arg-type]
                )
        log.info("bus connected to %s", nc.connected_url.netloc if nc.connected_url else url)
        return cls(nc, name, lost)

    @property
    def connected(self) -> bool:
        return self.nc.is_connected

    async def publish(self, subject: str, message: Message) -> None:
        """Publish an event; failures are logged, never raised into business code."""
        try:
            await self.nc.publish(subject, message.SerializeToString(), headers=trace_headers())
        except Exception as error:
            log.warning("could not publish on %s: %s", subject, error)

    def _handler(self, message_type: type[M],
                 handler: Callable[[str, M], Awaitable[None]]) -> Callable[[Msg], Awaitable[None]]:
        """Decode, continue the publisher's trace, call the handler, never raise."""

        async def on_message(msg: Msg) -> None:
            event = message_type()
            try:
                event.ParseFromString(msg.data)
            except DecodeError:
                log.warning("dropping undecodable %s on %s", message_type.__name__, msg.subject)
                return
            token = otel_context.attach(extract(msg.headers or {}))
            try:
                with self._tracer.start_as_current_span(
                    f"receive {msg.subject}", kind=trace.SpanKind.CONSUMER
                ):
                    await handler(msg.subject, event)
            except Exception:
                log.exception("handler for %s failed", msg.subject)
            finally:
                otel_context.detach(token)

        return on_message

    async def subscribe(
        self,
        subject: str,
        message_type: type[M],
        handler: Callable[[str, M], Awaitable[None]],
    ) -> None:
        """Call `handler(subject, event)` for every event published from now on."""
        await self.nc.subscribe(subject, cb=self._handler(message_type, handler))

    async def ensure_stream(self, name: str, subject: str, max_msgs: int) -> None:
        """Keep the last `max_msgs` events on `subject` in a JetStream stream."""
        async for attempt in _setup_retries():
            with attempt:
                try:
                    await self.js.stream_info(name)
                except js_errors.NotFoundError:
                    await self.js.add_stream(name=name, subjects=[subject], max_msgs=max_msgs)

    async def replay(
        self,
        subject: str,
        message_type: type[M],
        handler: Callable[[str, M], Awaitable[None]],
        stream: str | None = None,
    ) -> None:
        """Call `handler` for every event a stream holds on `subject`, then for new ones
        (an ordered consumer: it resumes where it was after a NATS restart). Naming the
        `stream` saves looking it up by subject."""
        await self.js.subscribe(subject, cb=self._handler(message_type, handler), stream=stream,
                                ordered_consumer=True, deliver_policy=js_api.DeliverPolicy.ALL)

    async def kv(self, bucket: str, message_type: type[M], *, ttl_s: float | None = None,
                 history: int = 1) -> ProtoKV[M]:
        """Open a key-value bucket, creating it on first use."""
        async for attempt in _setup_retries():
            with attempt:
                try:
                    store = await self.js.key_value(bucket)
                except js_errors.BucketNotFoundError:
                    store = await self.js.create_key_value(
                        js_api.KeyValueConfig(bucket=bucket, ttl=ttl_s, history=history)
                    )
        return ProtoKV(store, message_type, connected=lambda: self.nc.is_connected)

    async def close(self) -> None:
        """Drain (deliver what was published, stop subscriptions) and close. When NATS is
        away too (a stack stopping all at once), there is nothing to deliver: close at once,
        since draining a connection that is reconnecting only waits and leaves nats-py's
        tasks behind."""
        if self.nc.is_closed:
            return
        # nats-py leaves futures of an interrupted drain unretrieved; at shutdown that is
        # expected, not a bug worth asyncio's traceback in the log.
        asyncio.get_running_loop().set_exception_handler(_quiet_at_shutdown)
        if self.nc.is_connected and not self._lost.is_set():
            drain = asyncio.ensure_future(self.nc.drain())
            lost = asyncio.ensure_future(self._lost.wait())
            await asyncio.wait({drain, lost}, timeout=5, return_when=asyncio.FIRST_COMPLETED)
            lost.cancel()
            if drain.done() and not drain.cancelled() and drain.exception() is None:
                return
            drain.cancel()
            log.warning("bus drain did not finish: %s", "NATS went away" if self._lost.is_set()
                        else drain.exception() if drain.done() else "timed out")
        try:
            await asyncio.wait_for(self.nc.close(), timeout=2)
        except asyncio.CancelledError:
            # nats-py may cancel its own transport's close while it reconnects; only a
            # cancellation of this task itself is passed on.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            log.warning("bus did not close cleanly: its transport's close was cancelled")
        except Exception as error:
            log.warning("bus did not close cleanly: %s", error)


class _SslCloseNoise(logging.Filter):
    """asyncio warns, for every TLS connection nats-py closes, that `eof_received` returned
    true (which it does for plain TCP too): noise, not a problem."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "eof_received()" not in record.getMessage()


def quiet_ssl_close() -> None:
    """Drop asyncio's warning about TLS connections' `eof_received` (see `_SslCloseNoise`)."""
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _SslCloseNoise) for f in asyncio_log.filters):
        asyncio_log.addFilter(_SslCloseNoise())


def _quiet_at_shutdown(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    log.warning("at shutdown: %s (%r)", context.get("message"), context.get("exception"))


_UNAVAILABLE = (
    asyncio.TimeoutError,
    nats.errors.TimeoutError,
    nats.errors.ConnectionClosedError,
    nats.errors.NoRespondersError,
    nats.errors.OutboundBufferLimitError,
    js_errors.ServiceUnavailableError,
    js_errors.ServerError,  # a 500 from JetStream: transient, retried like a 503
)


def _setup_retries() -> AsyncRetrying:
    """Start-up calls to JetStream (opening buckets and streams) retry while the server is
    still coming up; anything but unavailability is a real error and is raised."""
    return AsyncRetrying(
        retry=retry_if_exception_type(_UNAVAILABLE),
        wait=wait_exponential(multiplier=0.1, max=2.0),
        stop=stop_after_delay(30),
        reraise=True,
    )


class ProtoKV(Generic[M]):
    """A JetStream KV bucket whose values are one protobuf message type.

    Bus outages surface as `Unavailable`, which callers see as gRPC UNAVAILABLE (retryable).
    """

    def __init__(self, store: KeyValue, message_type: type[M],
                 connected: Callable[[], bool] = lambda: True) -> None:
        self._store = store
        self._type = message_type
        self._connected = connected

    def _check_connected(self) -> None:
        # nats-py buffers publishes while reconnecting; a write the caller was told failed
        # must not land later, so refuse writes outright while disconnected.
        if not self._connected():
            raise Unavailable("state store unavailable: not connected to NATS")

    def _decode(self, data: bytes | None) -> M:
        message = self._type()
        message.ParseFromString(data or b"")
        return message

    async def get(self, key: str) -> M | None:
        found = await self.entry(key)
        return found[1] if found is not None else None

    async def entry(self, key: str) -> tuple[int, M] | None:
        """The value with its revision (for `update`), or None."""
        try:
            entry = await self._store.get(key)
        except js_errors.KeyNotFoundError:
            return None
        except _UNAVAILABLE as error:
            raise Unavailable(f"state store unavailable: {error!r}") from error
        return entry.revision or 0, self._decode(entry.value)

    async def create(self, key: str, message: M) -> int | None:
        """Write `message` only if the key holds nothing; its revision, or None when
        something was there (another writer was first)."""
        self._check_connected()
        try:
            return await self._store.create(key, message.SerializeToString())
        except js_errors.KeyWrongLastSequenceError:
            return None
        except _UNAVAILABLE as error:
            raise Unavailable(f"state store unavailable: {error!r}") from error

    async def update(self, key: str, message: M, revision: int) -> int | None:
        """Write `message` only if the key is still at `revision`; the new revision, or
        None when it changed meanwhile (compare and set)."""
        self._check_connected()
        try:
            return await self._store.update(key, message.SerializeToString(), last=revision)
        except js_errors.KeyWrongLastSequenceError:
            return None
        except _UNAVAILABLE as error:
            raise Unavailable(f"state store unavailable: {error!r}") from error

    async def put(self, key: str, message: M) -> int:
        self._check_connected()
        try:
            return await self._store.put(key, message.SerializeToString())
        except _UNAVAILABLE as error:
            raise Unavailable(f"state store unavailable: {error!r}") from error

    async def delete(self, key: str) -> None:
        self._check_connected()
        try:
            await self._store.purge(key)
        except js_errors.KeyNotFoundError:
            return
        except _UNAVAILABLE as error:
            raise Unavailable(f"state store unavailable: {error!r}") from error

    async def items(self) -> dict[str, tuple[int, M]]:
        """Every live key with its revision and value."""
        try:
            # keys() waits on a watcher with no deadline of its own; a bus that drops
            # mid-listing must not hang the caller.
            keys = await asyncio.wait_for(self._store.keys(), timeout=5.0)
        except js_errors.NoKeysError:
            return {}
        except (*_UNAVAILABLE, js_errors.APIError) as error:
            # Listing creates a consumer on the server; under load JetStream may answer that
            # with an error of its own. The read failed, and the caller's next pass retries:
            # the store was unavailable to it, which is not a bug worth a traceback.
            raise Unavailable(f"state store unavailable: {error!r}") from error
        found: dict[str, tuple[int, M]] = {}
        for key in keys:
            try:
                entry = await self._store.get(key)
            except js_errors.KeyNotFoundError:
                continue  # deleted or expired between keys() and get()
            except _UNAVAILABLE as error:
                raise Unavailable(f"state store unavailable: {error!r}") from error
            found[key] = (entry.revision or 0, self._decode(entry.value))
        return found

"""Prometheus metrics: the `/metrics` HTTP endpoint every service serves, and the RPC
figures its gRPC server records.

Each service process exports its figures on its own port (`--metrics-port`, env
`DILU_METRICS_PORT`; 0 picks a free port, -1 turns the endpoint off). The endpoint runs on
the service's asyncio loop, so collectors read service state on the thread that changes it
and need no locks; the price is that a scrape waits while the loop is busy, which is also
what a hung service should look like from outside.

Metric names start with `dilu_`; the default registry also carries the client library's
`process_*` and `python_*` figures.

In secure mode (the service has TLS files) the endpoint speaks HTTPS with the service's
certificate, and `/metrics` answers only a client that presents a certificate of the
Dilu CA (`dilu-prometheus` from `dilu certs init`, or any other): the figures change
nothing but name every function, instance and node, which tenants should not read of each
other. `/healthz` answers everyone, 200 while the service serves and 503 otherwise, so
that probes that cannot speak gRPC over TLS (Kubernetes') can use it; it exists in
insecure mode too. The metrics of each service are defined next to it
(`services/<service>/metrics.py`); the names are listed in the README.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from importlib import metadata
from typing import Any

import grpc
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from services.common.security.tls import TlsFiles, server_context

log = logging.getLogger(__name__)

# --metrics-port value that turns the endpoint off.
METRICS_DISABLED = -1
# RPC latency buckets, seconds: sub-millisecond reads up to the 30 s deploys may take.
RPC_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
               10.0, 30.0)
# A scrape request larger than this, or slower to arrive, is dropped.
_MAX_REQUEST_BYTES = 16 * 1024
_REQUEST_TIMEOUT_S = 5.0


class MetricsServer:
    """A minimal HTTP/1.1 server answering `GET /metrics` from a registry, on the loop."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry = REGISTRY,
                 tls: TlsFiles | None = None) -> None:
        self._host = host
        self._requested_port = port
        self._registry = registry
        self._tls = tls
        self._server: asyncio.Server | None = None
        self.port = 0
        # Whether the service serves (`/healthz`); set by the server bootstrap.
        self.health: Callable[[], bool] | None = None

    @property
    def enabled(self) -> bool:
        return self._requested_port != METRICS_DISABLED

    @property
    def address(self) -> str:
        """`host:port` once started; empty when disabled or not started."""
        return f"{self._host}:{self.port}" if self.port else ""

    async def start(self) -> str:
        """Bind and serve; returns the bound address ("" when disabled). Idempotent."""
        if not self.enabled or self._server is not None:
            return self.address
        ssl = server_context(self._tls) if self._tls is not None else None
        tls_options: dict[str, Any] = {"ssl": ssl, "ssl_handshake_timeout": _REQUEST_TIMEOUT_S} if ssl else {}
        self._server = await asyncio.start_server(self._serve, self._host, self._requested_port,
                                                  **tls_options)
        self.port = int(self._server.sockets[0].getsockname()[1])
        if ssl is not None:
            log.info("metrics on https://%s/metrics (client certificates of the Dilu CA)",
                     self.address)
        else:
            log.info("metrics on http://%s/metrics", self.address)
            from services.common.grpc_server import is_loopback  # the server imports this module

            if not is_loopback(self._host):
                log.warning("serving metrics WITHOUT TLS on %s: anyone who can reach it reads "
                            "every function's figures (secure mode: --tls-ca/--tls-cert/--tls-key)",
                            self.address)
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _REQUEST_TIMEOUT_S)
            if len(head) > _MAX_REQUEST_BYTES:
                raise ValueError("request head too large")
            certified = self._tls is None or bool(writer.get_extra_info("peercert"))
            status, content_type, body = self._answer(head.decode("latin-1"), certified)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
                + body)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError,
                ConnectionError, ValueError):
            pass  # a client that went away or spoke nonsense gets nothing
        except Exception:
            log.exception("serving a metrics request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _answer(self, head: str, certified: bool = True) -> tuple[str, str, bytes]:
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or parts[0] not in ("GET", "HEAD"):
            return "405 Method Not Allowed", "text/plain", b"only GET /metrics\n"
        path = parts[1].split("?", 1)[0]
        if path == "/healthz":
            serving = self.health is None or self.health()
            return ("200 OK" if serving else "503 Service Unavailable", "text/plain",
                    b"SERVING\n" if serving else b"NOT_SERVING\n")
        if path not in ("/metrics", "/"):
            return "404 Not Found", "text/plain", b"see /metrics\n"
        if not certified:
            return ("403 Forbidden", "text/plain",
                    b"/metrics needs a client certificate of the Dilu CA\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(":") for line in lines[1:] if line)}
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        body = encoder(self._registry)
        return "200 OK", content_type, b"" if parts[0] == "HEAD" else body


def init_process_metrics(service: str, registry: CollectorRegistry = REGISTRY) -> None:
    """Once per process: `dilu_service_info{service, version} 1` (which Dilu service and
    release this is), and no `*_created` series beside counters (they only add noise)."""
    disable_created_metrics()
    try:
        version = metadata.version("dilu")
    except metadata.PackageNotFoundError:
        version = "unknown"
    Gauge("dilu_service_info", "Which Dilu service this process is, and its version (always 1)",
          ["service", "version"], registry=registry).labels(service, version).set(1)


def metrics_server(service: str, host: str, port: int, *collectors: Collector,
                   tls: TlsFiles | None = None) -> MetricsServer:
    """A service's endpoint on the default registry, with its own collectors registered
    (HTTPS with client certificates when `tls` is given)."""
    init_process_metrics(service)
    for collector in collectors:
        REGISTRY.register(collector)
    return MetricsServer(host, port, tls=tls)


class RpcMetrics:
    """Counts and latency of every unary RPC a server handled, by method and status code."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        labels = ["grpc_service", "grpc_method", "grpc_code"]
        self.handled = Counter(
            "dilu_grpc_server_handled", "RPCs completed by this server, by method and status code",
            labels, registry=registry)
        self.latency = Histogram(
            "dilu_grpc_server_handling_seconds",
            "Time from receiving an RPC to its answer, by method and status code",
            labels, buckets=RPC_BUCKETS, registry=registry)

    def observe(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        service, _, name = method.lstrip("/").rpartition("/")
        self.handled.labels(service, name, code.name).inc()
        self.latency.labels(service, name, code.name).observe(seconds)


_rpc_metrics: RpcMetrics | None = None


def rpc_metrics() -> RpcMetrics:
    """The process's RPC metrics, on the default registry (created on first use)."""
    global _rpc_metrics
    if _rpc_metrics is None:
        _rpc_metrics = RpcMetrics()
    return _rpc_metrics


Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def measured_unary(method: str, inner: Handler, metrics: RpcMetrics | None = None) -> Handler:
    """Wrap a unary handler so its outcome and duration are recorded. Outermost of the
    interceptors, so what it sees is what the caller gets (error mapping included)."""
    recorder = metrics or rpc_metrics()

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.perf_counter()
        code = grpc.StatusCode.UNKNOWN
        try:
            response = await inner(request, context)
            code = _code_of(context) or grpc.StatusCode.OK
            return response
        except grpc.aio.AbortError:
            code = _code_of(context) or grpc.StatusCode.UNKNOWN
            raise
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        finally:
            recorder.observe(method, code, time.perf_counter() - started)

    return handle


def _code_of(context: grpc.aio.ServicerContext) -> grpc.StatusCode | None:
    """The status code a handler set or aborted with, if any."""
    try:
        code = context.code()
    except Exception:  # telemetry never breaks an RPC
        return None
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):  # some grpcio versions hand back the numeric code
        return next((c for c in grpc.StatusCode if c.value[0] == code), None)
    return None

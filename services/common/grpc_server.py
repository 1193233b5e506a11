"""The aio gRPC server every service runs: health, reflection, error mapping, tracing,
RPC metrics, graceful shutdown on SIGTERM/SIGINT, readiness and watchdog for systemd; in
secure mode TLS on a public and a peer (mutual-TLS) port, and the authorization
interceptor (`services.common.security`)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import systemd
from services.common.interceptors import (
    error_interceptor,
    metrics_interceptor,
    tracing_interceptor,
)
from services.common.metrics import MetricsServer
from services.common.security.interceptor import Authorizer, auth_interceptor
from services.common.security.tls import TlsFiles, server_credentials

log = logging.getLogger(__name__)


class PortUnavailable(RuntimeError):
    """The server's port is taken (or its address is not local)."""


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host` (wildcards reach every interface)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class ServerSecurity:
    """Secure mode of a server: its TLS files, the authorizer of every call, and its
    peer (mutual-TLS) port. `peer_port` None: the server has only a mutual-TLS port, its
    `port` (workers, which only services may call)."""

    tls: TlsFiles
    authorizer: Authorizer
    peer_port: int | None


class GrpcServer:
    """One aio server hosting a service's servicers plus health and reflection."""

    def __init__(self, host: str, port: int, security: ServerSecurity | None = None) -> None:
        self._requested = f"{host}:{port}"
        self._host = host
        self._security = security
        interceptors = [metrics_interceptor(), tracing_interceptor(), error_interceptor()]
        if security is not None:
            # After metrics and tracing (refusals are counted and traced), before the error
            # mapping (nothing of the servicer runs for a refused call).
            interceptors.insert(2, auth_interceptor(security.authorizer))
        # The first interceptor is the outermost: metrics see the code the caller gets.
        # grpcio sets SO_REUSEPORT by default: a second server on a taken port would bind
        # too and share its connections (two schedulers, split brain). A port is owned.
        self._server = grpc.aio.server(interceptors=interceptors,
                                       options=[("grpc.so_reuseport", 0)])
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self._service_names: list[str] = [health.SERVICE_NAME, reflection.SERVICE_NAME]
        self.port = 0
        self.peer_port = 0
        self._started = False
        self._stopping = False

    def add(self, register: Callable[[Any, grpc.aio.Server], None], servicer: Any,
            full_name: str) -> None:
        """Register a servicer, e.g. `add(add_XServicer_to_server, impl, "dilu.v1.XService")`."""
        register(servicer, self._server)
        self._service_names.append(full_name)

    @property
    def address(self) -> str:
        return f"{self._host}:{self.port}"

    @property
    def peer_address(self) -> str:
        """The mutual-TLS listener's address ("" without one)."""
        return f"{self._host}:{self.peer_port}" if self.peer_port else ""

    @property
    def secure(self) -> bool:
        return self._security is not None

    def bind(self) -> int:
        """Take the port(s) (before serving: a service that cannot own its port must not
        start its work); returns the bound (public) port. Raises `PortUnavailable` when a
        port is taken. Calling it again does nothing."""
        if self.port:
            return self.port
        security = self._security
        if security is None:
            self.port = self._add(self._requested, None)
        elif security.peer_port is None:
            self.port = self._add(self._requested, server_credentials(security.tls, mutual=True))
        else:
            self.port = self._add(self._requested, server_credentials(security.tls, mutual=False))
            self.peer_port = self._add(f"{self._host}:{security.peer_port}",
                                       server_credentials(security.tls, mutual=True))
        return self.port

    def _add(self, address: str, credentials: grpc.ServerCredentials | None) -> int:
        try:
            if credentials is None:
                return self._server.add_insecure_port(address)
            return self._server.add_secure_port(address, credentials)
        except RuntimeError as error:
            raise PortUnavailable(
                f"cannot listen on {address}: the port is taken by another process "
                "or the address is not this machine's") from error

    async def start(self) -> int:
        """Bind (if not yet) and serve; returns the bound port. Calling it again does nothing."""
        if self._started:
            return self.port
        self.bind()
        reflection.enable_server_reflection(self._service_names, self._server)
        await self._server.start()
        self._started = True
        for name in [*self._service_names, ""]:
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        served = ", ".join(self._service_names[2:])
        if self._security is None:
            log.info("serving %s on %s", served, self.address)
            if not is_loopback(self._host):
                log.warning("serving %s WITHOUT TLS OR AUTHENTICATION on %s: anyone who can "
                            "reach this address may call every RPC; give --tls-ca, --tls-cert "
                            "and --tls-key (README, Security)", served, self.address)
        elif self.peer_port:
            log.info("serving %s with TLS on %s (bearer tokens) and %s (client certificates)",
                     served, self.address, self.peer_address)
        else:
            log.info("serving %s with mutual TLS on %s", served, self.address)
        return self.port

    @property
    def serving(self) -> bool:
        """Started and not shutting down (what `/healthz` reports)."""
        return self._started and not self._stopping

    async def stop(self, grace_s: float) -> None:
        """Health NOT_SERVING first so balancers move away, then let in-flight RPCs finish."""
        self._stopping = True
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace_s)


def write_ready_file(path: str | None, address: str, metrics_address: str = "",
                     peer_address: str = "") -> None:
    """Announce the bound addresses atomically (tests and `dilu up` wait for this file)."""
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(target.suffix + ".tmp")
    tmp.write_text(json.dumps({"address": address, "metrics_address": metrics_address,
                               "peer_address": peer_address, "pid": os.getpid()}))
    tmp.replace(target)


async def serve_until_stopped(server: GrpcServer, ready_file: str | None, grace_s: float,
                              *cleanups: Callable[[], Awaitable[None]],
                              metrics: MetricsServer | None = None) -> None:
    """Start serving (gRPC, then the metrics endpoint), announce readiness (the ready file,
    then `READY=1` to systemd) and feed systemd's watchdog from this loop; on SIGTERM/SIGINT
    shut down in order: health NOT_SERVING and in-flight RPCs finish, then each cleanup
    (e.g. the bus drain)."""
    await start_or_exit(server)
    if metrics is not None:
        metrics.health = lambda: server.serving
    metrics_address = await metrics.start() if metrics is not None else ""
    write_ready_file(ready_file, server.address, metrics_address, server.peer_address)
    notifier = systemd.Notifier.from_environment()
    watchdog = notifier.start_watchdog()
    notifier.ready(f"serving on {server.address}")
    await wait_for_stop_signal()
    notifier.stopping("shutting down")
    exit_if_stuck(grace_s + SHUTDOWN_SLACK_S)
    await server.stop(grace_s)
    for cleanup in cleanups:
        try:
            await cleanup()
        except Exception:
            log.exception("cleanup during shutdown failed")
    if metrics is not None:
        await metrics.stop()
    if watchdog is not None:  # fed until the end: a shutdown that hangs is killed too
        watchdog.cancel()
    notifier.close()
    log.info("stopped")


# Time a shutdown may take beyond the RPCs' grace: cleanups (a bus drain of at most 5 s,
# agents asked to stop) and the event loop's own wind-down.
SHUTDOWN_SLACK_S = 10.0


def exit_if_stuck(limit_s: float) -> None:
    """Exit the process if it is still running `limit_s` from now. A stop was asked for;
    whatever hangs in the cleanup (a library task that swallows its cancellation, a peer
    that never answers) must not keep the process, its port and its state alive: a
    supervisor that died (parent-death signal) cannot follow up with SIGKILL."""

    def give_up() -> None:
        log.error("shutdown did not finish within %.0f s; exiting now", limit_s)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(limit_s, give_up)
    timer.daemon = True  # a shutdown that finishes in time exits without waiting for it
    timer.start()


def bind_or_exit(server: GrpcServer) -> int:
    """`server.bind()`, or exit with status 2 and one clear log line (no traceback)."""
    try:
        return server.bind()
    except PortUnavailable as error:
        log.error("%s", error)
        raise SystemExit(2) from None


async def start_or_exit(server: GrpcServer) -> int:
    """`server.start()`, or exit with status 2 when its port cannot be had."""
    bind_or_exit(server)
    return await server.start()


async def wait_for_stop_signal() -> None:
    """Return on the first SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stop signal received; shutting down")

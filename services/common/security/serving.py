"""Secure mode for a service's server in one call: the live access store and the
authorizer built on it, or nothing in insecure mode.

    security, close_access = await server_security(config, bus, namespace_of=...)
    server = GrpcServer(config.host, config.port, security)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from services.common.bus import Bus
from services.common.config import ServerConfig
from services.common.grpc_server import ServerSecurity
from services.common.security.access_store import AccessStore
from services.common.security.interceptor import Authorizer, NamespaceOf


async def _nothing() -> None:
    return None


async def server_security(config: ServerConfig, bus: Bus, *,
                          namespace_of: NamespaceOf | None = None,
                          ) -> tuple[ServerSecurity | None, Callable[[], Awaitable[None]]]:
    """(the server's security, what closes it at shutdown); (None, a no-op) when the
    service runs without TLS files. The access store is read in full before this returns,
    so the server never serves on an empty one."""
    if config.tls is None:
        return None, _nothing
    store = AccessStore(bus.js)
    await store.start()
    peer = f"port {config.peer_port}" if config.peer_port else "the peer port"
    authorizer = Authorizer(
        store.book, namespace_of=namespace_of or _unknown,
        hint=f"send 'authorization: Bearer <token>' here, or call {peer} with a client "
             "certificate of the Dilu CA")
    return ServerSecurity(config.tls, authorizer, config.peer_port), store.close


async def _unknown(_function: str) -> str | None:
    return None

"""Addresses a process listens on versus the address others dial.

A server bound to a wildcard (`0.0.0.0`, `::`) listens on every interface, but nobody can
dial `0.0.0.0`: what a node announces (its agent's address, its workers' endpoints) must be
an address other machines route to. Unless one is configured, that is the address this
machine uses to reach the NATS server (the bus every node shares), found from the routing
table without sending a packet.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from urllib.parse import urlsplit

WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})
# A documentation address (RFC 5737): asking the kernel for its route finds the default
# route's source address; nothing is ever sent there.
_SOME_REMOTE = "192.0.2.1"


def join_host_port(host: str, port: int) -> str:
    """`host:port`, with an IPv6 literal in brackets."""
    if ":" in host and not host.startswith("["):
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def nats_host(nats_url: str) -> str | None:
    """The host of the first server in a NATS URL list."""
    first = nats_url.split(",")[0].strip()
    return urlsplit(first if "://" in first else f"nats://{first}").hostname


def _source_address(remote: str) -> str | None:
    """The local address the kernel would send from to reach `remote` (UDP connect sends
    nothing)."""
    try:
        infos = socket.getaddrinfo(remote, 9, type=socket.SOCK_DGRAM)
    except OSError:
        return None
    for family, kind, proto, _, target in infos:
        with contextlib.suppress(OSError), socket.socket(family, kind, proto) as probe:
            probe.connect(target)
            return str(probe.getsockname()[0])
    return None


def routable_host(towards: str | None = None) -> str:
    """An address of this machine that others can reach: the source address of the route
    to `towards` (e.g. the NATS server), else of the default route, else 127.0.0.1 (a
    machine without a network reaches only itself)."""
    for remote in (towards, _SOME_REMOTE):
        if not remote:
            continue
        found = _source_address(remote)
        if found and not ipaddress.ip_address(found.split("%")[0]).is_unspecified:
            return found
    return "127.0.0.1"


def advertised_host(bind_host: str, configured: str = "", towards: str | None = None) -> str:
    """The host others dial for a server bound to `bind_host`: the configured one, else the
    bind address itself, else (bound to a wildcard) this machine's routable address."""
    if configured:
        return configured
    if bind_host not in WILDCARD_HOSTS:
        return bind_host
    return routable_host(towards)

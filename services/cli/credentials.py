"""Credentials on the client side: a local secure stack's files, and how the `dilu` command
(and the demo) dial a service with a token or a client certificate.

A secure local stack keeps everything in `<state dir>/tls` (`dilu certs init`): the CA,
one certificate per identity, and `operator.token`, the operator's bearer token, which
`dilu up --secure` registers in the access store at every start (the stack's operator can
always get back in; delete the file to stop that).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import nats
from nats.aio.client import Client

from services.common.bus import quiet_ssl_close
from services.common.security.access import new_token
from services.common.security.access_store import AccessAdmin, binding_of, open_bucket
from services.common.security.certs import init_certs
from services.common.security.identity import (
    NATS_IDENTITY,
    OPERATOR_IDENTITY,
    node_agent_identity,
    service_identity,
)
from services.common.security.nats_access import NatsTls, bus_users, inbox_prefix
from services.common.security.tls import TlsFiles, channel_credentials, client_context

OPERATOR_PRINCIPAL = "operator"


@dataclass(frozen=True, slots=True)
class StackCredentials:
    """The certificates and the operator token of a secure stack, in `directory`."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.crt"

    def files(self, identity: str) -> TlsFiles:
        return TlsFiles(self.ca, self.directory / f"{identity}.crt", self.directory / f"{identity}.key")

    def service(self, service: str, node_id: str = "") -> TlsFiles:
        """`scheduler` ... or `node-agent` (of `node_id`)."""
        if service == "node-agent":
            return self.files(node_agent_identity(node_id))
        return self.files(service_identity(service))

    @property
    def operator(self) -> TlsFiles:
        return self.files(OPERATOR_IDENTITY)

    @property
    def token_path(self) -> Path:
        return self.directory / "operator.token"

    def operator_token(self) -> str:
        return self.token_path.read_text().strip()

    def nodes(self) -> list[str]:
        """The nodes whose agent certificates are here."""
        prefix = "dilu-node-agent."
        return sorted(p.name[len(prefix):-len(".crt")] for p in self.directory.glob(f"{prefix}*.crt"))

    def nats(self) -> NatsTls:
        """The bundled nats-server's TLS and a user for every identity here."""
        files = self.files(NATS_IDENTITY)
        return NatsTls(files.ca, files.cert, files.key, bus_users(self.nodes()))


def ensure_credentials(directory: Path, nodes: list[str], hosts: list[str] = (),  # type: ignore[assignment]
                       ) -> tuple[StackCredentials, bool]:
    """The stack's credentials, made (`dilu certs init`) where missing; True when anything
    was made."""
    credentials = StackCredentials(directory)
    before = set(directory.glob("*.crt")) if directory.exists() else set()
    init_certs(directory, nodes, hosts)
    made = set(directory.glob("*.crt")) != before
    if not credentials.token_path.exists():
        fd = os.open(credentials.token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(new_token() + "\n")
        made = True
    return credentials, made


async def connect_operator(nats_url: str, operator: TlsFiles, timeout_s: float = 10.0) -> Client:
    """A NATS connection as an operator (the `dilu-operator` certificate's user)."""
    quiet_ssl_close()
    return await nats.connect(nats_url, tls=client_context(operator), tls_hostname=NATS_IDENTITY,
                              inbox_prefix=inbox_prefix(operator.identity),
                              connect_timeout=timeout_s, max_reconnect_attempts=0)


async def register_operator_token(credentials: StackCredentials, nats_url: str) -> None:
    """Put the stack's operator token (and the operator's binding) into the access store."""
    nc = await connect_operator(nats_url, credentials.operator)
    try:
        admin = AccessAdmin(await open_bucket(nc.jetstream(timeout=5.0)))
        await admin.create_token(OPERATOR_PRINCIPAL, binding_of("operator"),
                                 token=credentials.operator_token())
    finally:
        await nc.close()


def register_operator_token_sync(credentials: StackCredentials, nats_url: str) -> None:
    asyncio.run(register_operator_token(credentials, nats_url))


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    """How a client authenticates: a bearer token (public ports) and/or a client
    certificate (peer ports), over TLS to servers of `ca`. No `ca`: insecure mode."""

    ca: Path | None = None
    token: str = ""
    cert: Path | None = None
    key: Path | None = None

    @property
    def secure(self) -> bool:
        return self.ca is not None

    @property
    def has_certificate(self) -> bool:
        return self.cert is not None and self.key is not None

    def _credentials(self) -> grpc.ChannelCredentials:
        assert self.ca is not None
        cert = self.cert.read_bytes() if self.cert is not None else None
        key = self.key.read_bytes() if self.key is not None else None
        return channel_credentials(self.ca.read_bytes(), cert, key)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The token as call metadata (what grpcurl's -H sends). Added by a client
        interceptor rather than gRPC's call credentials, whose Python plugin runs each call
        through a thread: at saturation that costs the client a fifth of its throughput."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()

    def channel(self, address: str, identity: str) -> grpc.Channel:
        """A blocking channel to `address`, whose server must prove `identity`."""
        if not self.secure:
            return grpc.insecure_channel(address)
        channel = grpc.secure_channel(address, self._credentials(),
                                      options=[("grpc.ssl_target_name_override", identity)])
        if self.token:
            return grpc.intercept_channel(channel, _WithMetadata(self.metadata()))
        return channel

    def aio_channel(self, address: str, identity: str) -> grpc.aio.Channel:
        if not self.secure:
            return grpc.aio.insecure_channel(address)
        interceptors = [_AioWithMetadata(self.metadata())] if self.token else None
        return grpc.aio.secure_channel(address, self._credentials(), interceptors=interceptors,
                                       options=[("grpc.ssl_target_name_override", identity)])

    def tls_files(self) -> TlsFiles | None:
        """The client certificate as a process's TLS files (NATS), when there is one."""
        if self.ca is None or self.cert is None or self.key is None:
            return None
        return TlsFiles(self.ca, self.cert, self.key)


def _with(details: Any, metadata: tuple[tuple[str, str], ...]) -> Any:
    """Call details with `metadata` added to what the call already carries."""
    return details._replace(metadata=(*(details.metadata or ()), *metadata))


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _WithMetadata(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        details = _Details(client_call_details.method, client_call_details.timeout,
                           client_call_details.metadata, client_call_details.credentials,
                           client_call_details.wait_for_ready, client_call_details.compression)
        return continuation(_with(details, self._metadata), request)


class _AioWithMetadata(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, metadata: tuple[tuple[str, str], ...]) -> None:
        self._metadata = metadata

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return await continuation(_with(client_call_details, self._metadata), request)


def operator_client(credentials: StackCredentials) -> ClientCredentials:
    """What the demo and `dilu up` use: the operator token over TLS."""
    return ClientCredentials(ca=credentials.ca, token=credentials.operator_token(),
                             cert=credentials.operator.cert, key=credentials.operator.key)

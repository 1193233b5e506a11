"""TLS material of one process and what gRPC, NATS and the metrics endpoint make of it.

A process in secure mode has three PEM files (flags `--tls-ca`, `--tls-cert`, `--tls-key`,
env `DILU_TLS_CA` ...): the CA every Dilu certificate chains to, and its own certificate
and key (its identity, `identity.py`).

gRPC servers listen twice (grpcio's Python API can require client certificates or not
request them at all, never request them optionally):

- the **public port** (`--port`): TLS with the server's certificate; callers authenticate
  with a bearer token (`authorization: Bearer <token>`). Client certificates are not
  requested there.
- the **peer port** (`--peer-port`): mutual TLS; the handshake requires a client
  certificate from the same CA, whose identity the call is authorized as. Services call
  each other here; people and tools with a client certificate may too.

Workers serve on one mutual-TLS port only: nobody but services may call them.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc

from services.common.security.certs import identity_of


class TlsError(RuntimeError):
    """TLS files missing or unreadable."""


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """A process's CA, certificate and key (paths)."""

    ca: Path
    cert: Path
    key: Path

    @classmethod
    def from_paths(cls, ca: str, cert: str, key: str) -> TlsFiles | None:
        """None when none is given (insecure mode); all three, or a TlsError."""
        given = [p for p in (ca, cert, key) if p]
        if not given:
            return None
        if len(given) != 3:
            raise TlsError("secure mode needs all three of --tls-ca, --tls-cert and --tls-key")
        files = cls(Path(ca), Path(cert), Path(key))
        for path in (files.ca, files.cert, files.key):
            if not os.access(path, os.R_OK):
                raise TlsError(f"cannot read {path}")
        return files

    @classmethod
    def from_environment(cls, prefix: str = "DILU_TLS_") -> TlsFiles | None:
        return cls.from_paths(os.environ.get(f"{prefix}CA", ""), os.environ.get(f"{prefix}CERT", ""),
                              os.environ.get(f"{prefix}KEY", ""))

    def read(self) -> tuple[bytes, bytes, bytes]:
        try:
            return self.ca.read_bytes(), self.cert.read_bytes(), self.key.read_bytes()
        except OSError as error:
            raise TlsError(f"cannot read TLS files: {error}") from error

    @property
    def identity(self) -> str:
        """The identity its certificate names."""
        return identity_of(self.cert.read_bytes())

    def as_environment(self, prefix: str = "DILU_TLS_") -> dict[str, str]:
        return {f"{prefix}CA": str(self.ca), f"{prefix}CERT": str(self.cert),
                f"{prefix}KEY": str(self.key)}


def server_credentials(files: TlsFiles, *, mutual: bool) -> grpc.ServerCredentials:
    """The public port's (`mutual=False`: no client certificate requested) or the peer
    port's (`mutual=True`: a client certificate of the CA required) credentials."""
    ca, cert, key = files.read()
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca if mutual else None,
                                       require_client_auth=mutual)


def channel_credentials(ca: bytes, cert: bytes | None = None,
                        key: bytes | None = None) -> grpc.ChannelCredentials:
    """TLS to a server of the CA, presenting a client certificate when given."""
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key,
                                        certificate_chain=cert)


def client_context(files: TlsFiles) -> ssl.SSLContext:
    """Client side of a TLS connection with a client certificate (NATS)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(files.ca))
    context.load_cert_chain(str(files.cert), str(files.key))
    return context


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """Server side with client certificates of the CA requested but optional (the
    metrics endpoint: `/metrics` wants one, `/healthz` does not)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(files.ca))
    context.load_cert_chain(str(files.cert), str(files.key))
    context.verify_mode = ssl.CERT_OPTIONAL
    return context

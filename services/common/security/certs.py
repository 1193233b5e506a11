"""A development certificate authority: `dilu certs init` and `dilu certs issue`.

Creates, in one directory (by default `<state dir>/tls`, mode 0700), a CA and one
certificate and key per identity of the naming scheme (`identity.py`):

    ca.crt, ca.key                          the CA (10 years); keep ca.key offline in production
    <identity>.crt, <identity>.key          e.g. dilu-scheduler.crt, dilu-node-agent.n1.key

Keys are ECDSA P-256 (cheap handshakes), written 0600. Each certificate names its identity
as common name and DNS subject-alternative name; server certificates also name the hosts
given (`localhost`, `127.0.0.1` and `::1` always, so that local tools verify them by
address). Extended key usage says what it may do: services and node agents serve and call,
workers and NATS only serve, people and tools only call.

This is for development and small clusters. A production CA (Vault, cert-manager, an
internal PKI) issues the same names; Dilu checks only the chain, the validity period and the
names.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common.security.identity import (
    NATS_IDENTITY,
    OPERATOR_IDENTITY,
    PROMETHEUS_IDENTITY,
    SERVICES,
    Role,
    builtin_caller,
    is_person_name,
    node_agent_identity,
    service_identity,
    worker_identity,
)

CA_DAYS = 3650
LEAF_DAYS = 365
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
SERVER = (ExtendedKeyUsageOID.SERVER_AUTH,)
CLIENT = (ExtendedKeyUsageOID.CLIENT_AUTH,)
BOTH = SERVER + CLIENT


class CertError(RuntimeError):
    """A certificate could not be made (a bad name, no CA to sign with)."""


@dataclass(frozen=True, slots=True)
class Issued:
    identity: str
    cert: Path
    key: Path


def usages_of(identity: str) -> tuple[x509.ObjectIdentifier, ...]:
    """What a certificate of this identity may be used for (see the module docstring)."""
    builtin = builtin_caller(identity)
    if builtin is not None:
        if builtin.role == Role.WORKER or identity == NATS_IDENTITY:
            return SERVER
        if builtin.role in (Role.NODE_AGENT, *(Role(s) for s in SERVICES)):
            return BOTH
        return CLIENT  # the operator, the metrics scraper
    if is_person_name(identity):
        return CLIENT
    raise CertError(f"{identity!r} is not an identity of the scheme (see `dilu certs --help`)")


def _name(identity: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Dilu"),
                      x509.NameAttribute(NameOID.COMMON_NAME, identity)])


def _alt_names(identity: str, hosts: Iterable[str]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(identity)]
    for host in dict.fromkeys(hosts):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    path.with_suffix(".tmp").replace(path)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tmp.replace(path)


class DevCa:
    """The CA in `directory` (created by `create`, or loaded) and what it issues there."""

    def __init__(self, directory: Path, cert: x509.Certificate,
                 key: ec.EllipticCurvePrivateKey) -> None:
        self.directory = directory
        self.cert = cert
        self._key = key

    @property
    def ca_path(self) -> Path:
        return self.directory / "ca.crt"

    @classmethod
    def open_or_create(cls, directory: Path, *, name: str = "Dilu development CA",
                       now: datetime.datetime | None = None) -> DevCa:
        """The CA of `directory`, created (with the directory, 0700) when it has none."""
        directory.mkdir(parents=True, exist_ok=True)
        directory.chmod(0o700)
        cert_path, key_path = directory / "ca.crt", directory / "ca.key"
        if cert_path.exists() and key_path.exists():
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise CertError(f"{key_path} is not an EC key")
            return cls(directory, x509.load_pem_x509_certificate(cert_path.read_bytes()), key)
        now = now or datetime.datetime.now(datetime.UTC)
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Dilu"),
                             x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                             crl_sign=True, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        _write_key(key_path, key)
        _write_cert(cert_path, cert)
        return cls(directory, cert, key)

    def issue(self, identity: str, hosts: Iterable[str] = (), *, days: float = LEAF_DAYS,
              not_before: datetime.datetime | None = None, force: bool = True) -> Issued:
        """A key and certificate for `identity` (replacing any unless `force` is False).
        `not_before` and `days` place its validity, e.g. in the past for a test of an
        expired certificate."""
        usages = usages_of(identity)
        cert_path = self.directory / f"{identity}.crt"
        key_path = self.directory / f"{identity}.key"
        if not force and cert_path.exists() and key_path.exists():
            return Issued(identity, cert_path, key_path)
        start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        key = ec.generate_private_key(ec.SECP256R1())
        serves = ExtendedKeyUsageOID.SERVER_AUTH in usages
        alt = _alt_names(identity, [*LOCAL_HOSTS, *hosts] if serves else [])
        cert = (x509.CertificateBuilder().subject_name(_name(identity))
                .issuer_name(self.cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False,
                                             crl_sign=False, content_commitment=False,
                                             key_encipherment=False, data_encipherment=False,
                                             key_agreement=False, encipher_only=False,
                                             decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
                .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                    self._key.public_key()), critical=False)
                .sign(self._key, hashes.SHA256()))
        _write_key(key_path, key)
        _write_cert(cert_path, cert)
        return Issued(identity, cert_path, key_path)


def default_identities(nodes: Iterable[str]) -> list[str]:
    """What `dilu certs init` issues: the services, NATS, the operator, the metrics
    scraper, and a node agent and a worker identity per node."""
    identities = [*(service_identity(s) for s in SERVICES), NATS_IDENTITY, OPERATOR_IDENTITY,
                  PROMETHEUS_IDENTITY]
    for node in nodes:
        identities += [node_agent_identity(node), worker_identity(node)]
    return identities


def init_certs(directory: Path, nodes: Iterable[str], hosts: Iterable[str] = (), *,
               force: bool = False) -> list[Issued]:
    """The CA (if none) and every default identity's certificate (only those missing,
    unless `force`)."""
    ca = DevCa.open_or_create(directory)
    hosts = list(hosts)
    return [ca.issue(identity, hosts, force=force) for identity in default_identities(nodes)]


def identity_of(cert_pem: bytes) -> str:
    """The common name of a PEM certificate."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else ""

"""The secure server bootstrap in process, on port 0 with real TLS: the public port takes
bearer tokens, the peer port client certificates, and every refusal is the right code,
changes nothing and is audited."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path

import grpc
import pytest
from dilu.v1 import access_pb2, scaler_pb2, scaler_pb2_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.grpc_server import GrpcServer, ServerSecurity
from services.common.security.access import AccessBook, new_token, role_key, token_key
from services.common.security.access_store import binding_of
from services.common.security.certs import DevCa, init_certs
from services.common.security.interceptor import Authorizer, current_caller
from services.common.security.tls import TlsFiles, channel_credentials
from services.scaler.observer import QosObserver
from services.scaler.service import ScalerServicer


class _Counting(ScalerServicer):
    calls = 0

    async def GetStatus(self, request, context):  # type: ignore[no-untyped-def]
        _Counting.calls += 1
        caller = current_caller()
        assert caller is not None
        return scaler_pb2.GetStatusResponse(co_scaling_active=caller.via == "certificate")


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    init_certs(directory, ["n1", "n2"])
    ca = DevCa.open_or_create(directory)
    ca.issue("alice")
    ca.issue("stale", not_before=datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC), days=1)
    DevCa.open_or_create(directory / "foreign").issue("dilu-operator")
    return directory


def _files(certs: Path, identity: str, ca: Path | None = None) -> TlsFiles:
    return TlsFiles(ca or certs / "ca.crt", certs / f"{identity}.crt", certs / f"{identity}.key")


@pytest.fixture
async def server(certs: Path):
    book = AccessBook()
    tokens = {}
    for principal, role in (("root", "operator"), ("alice", "deployer")):
        token = new_token()
        book.apply(token_key(token), access_pb2.AccessToken(principal=principal).SerializeToString())
        book.apply(role_key(principal), binding_of(role, "team-a" if role == "deployer" else "")
                   .SerializeToString())
        tokens[principal] = token
    security = ServerSecurity(_files(certs, "dilu-scaler"), Authorizer(book), peer_port=0)
    srv = GrpcServer("127.0.0.1", 0, security)
    srv.add(scaler_pb2_grpc.add_ScalerServiceServicer_to_server, _Counting(QosObserver()),
            "dilu.v1.ScalerService")
    await srv.start()
    _Counting.calls = 0
    yield srv, tokens
    await srv.stop(0.5)


def _channel(certs: Path, address: str, token: str = "", identity: str = "",
             ca: Path | None = None) -> grpc.aio.Channel:
    files = _files(certs, identity) if identity else None
    tls = channel_credentials((ca or certs / "ca.crt").read_bytes(),
                              files.cert.read_bytes() if files else None,
                              files.key.read_bytes() if files else None)
    if token:
        tls = grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(token))
    return grpc.aio.secure_channel(address, tls, options=[("grpc.ssl_target_name_override",
                                                           "dilu-scaler")])


async def _status(channel: grpc.aio.Channel) -> grpc.StatusCode:
    async with channel:
        try:
            await scaler_pb2_grpc.ScalerServiceStub(channel).GetStatus(
                scaler_pb2.GetStatusRequest(), timeout=5)
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


async def test_the_public_port_takes_tokens_and_refuses_everyone_else(server, certs, caplog):
    srv, tokens = server
    caplog.set_level(logging.WARNING, logger="dilu.audit")
    assert await _status(_channel(certs, srv.address, tokens["root"])) == grpc.StatusCode.OK
    assert await _status(_channel(certs, srv.address)) == grpc.StatusCode.UNAUTHENTICATED
    assert await _status(_channel(certs, srv.address, new_token())) == grpc.StatusCode.UNAUTHENTICATED
    assert await _status(_channel(certs, srv.address, tokens["alice"])) == \
        grpc.StatusCode.PERMISSION_DENIED
    # A certificate is not asked for on the public port: alone it proves nothing there.
    assert await _status(_channel(certs, srv.address, identity="dilu-operator")) == \
        grpc.StatusCode.UNAUTHENTICATED
    assert _Counting.calls == 1  # refused calls never reached the servicer
    lines = [r.getMessage() for r in caplog.records if r.name == "dilu.audit"]
    assert len(lines) == 4 and all("GetStatus" in line for line in lines)
    assert any("caller=alice role=deployer/team-a via=token" in line for line in lines)
    assert not any(tokens["alice"] in line or tokens["root"] in line for line in lines)


async def test_the_peer_port_authorizes_the_certificates_identity(server, certs):
    srv, tokens = server
    assert await _status(_channel(certs, srv.peer_address, identity="dilu-operator")) == grpc.StatusCode.OK
    assert await _status(_channel(certs, srv.peer_address, identity="dilu-node-agent.n1")) == \
        grpc.StatusCode.PERMISSION_DENIED
    assert await _status(_channel(certs, srv.peer_address, identity="alice")) == \
        grpc.StatusCode.PERMISSION_DENIED  # no binding: no role
    # A token beside the certificate speaks for the caller.
    assert await _status(_channel(certs, srv.peer_address, tokens["root"], "dilu-node-agent.n1")) == \
        grpc.StatusCode.OK


@pytest.mark.parametrize("identity", ["", "stale", "foreign"])
async def test_the_peer_port_refuses_the_handshake_without_a_valid_certificate(server, certs, identity):
    srv, _ = server
    if identity == "foreign":
        foreign = certs / "foreign"
        channel = grpc.aio.secure_channel(srv.peer_address, channel_credentials(
            (certs / "ca.crt").read_bytes(), (foreign / "dilu-operator.crt").read_bytes(),
            (foreign / "dilu-operator.key").read_bytes()),
            options=[("grpc.ssl_target_name_override", "dilu-scaler")])
    else:
        channel = _channel(certs, srv.peer_address, identity=identity)
    assert await _status(channel) == grpc.StatusCode.UNAVAILABLE
    assert _Counting.calls == 0


async def test_health_answers_without_credentials(server, certs):
    srv, _ = server
    async with _channel(certs, srv.address) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_a_client_refuses_a_server_that_is_not_the_identity_it_expects(server, certs):
    srv, tokens = server
    tls = grpc.composite_channel_credentials(channel_credentials((certs / "ca.crt").read_bytes()),
                                             grpc.access_token_call_credentials(tokens["root"]))
    channel = grpc.aio.secure_channel(srv.address, tls, options=[
        ("grpc.ssl_target_name_override", "dilu-node-agent.n1")])
    assert await _status(channel) == grpc.StatusCode.UNAVAILABLE


async def test_grpcio_does_not_ask_for_optional_client_certificates(certs):
    """Why every service has two ports: with require_client_auth=False grpcio requests no
    client certificate at all, so one port cannot take both tokens and certificates. If
    this fails, grpcio learned to and the two ports could become one."""
    seen = []

    class Probe(ScalerServicer):
        async def GetStatus(self, request, context):  # type: ignore[no-untyped-def]
            seen.append((context.auth_context() or {}).get("x509_common_name"))
            return scaler_pb2.GetStatusResponse()

    srv = grpc.aio.server()
    scaler_pb2_grpc.add_ScalerServiceServicer_to_server(Probe(QosObserver()), srv)
    files = _files(certs, "dilu-scaler")
    port = srv.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials(
        [(files.key.read_bytes(), files.cert.read_bytes())],
        root_certificates=files.ca.read_bytes(), require_client_auth=False))
    await srv.start()
    try:
        assert await _status(_channel(certs, f"127.0.0.1:{port}", identity="dilu-operator")) == \
            grpc.StatusCode.OK
    finally:
        await srv.stop(0)
    assert seen == [None]

"""`dilu certs init`: one certificate per identity of the scheme, with the names and uses
the scheme gives it, keys only their owner can read."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.common.security.certs import CertError, DevCa, identity_of, init_certs, usages_of
from services.common.security.nats_access import NatsTls, bus_users


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_issues_every_identity_once_with_its_names_and_uses(tmp_path: Path):
    issued = {i.identity: i for i in init_certs(tmp_path / "tls", ["n1", "n2"], ["gpu-7.example"])}
    assert set(issued) == {"dilu-scheduler", "dilu-scaler", "dilu-profiler", "dilu-nats",
                           "dilu-operator", "dilu-prometheus", "dilu-node-agent.n1",
                           "dilu-worker.n1", "dilu-node-agent.n2", "dilu-worker.n2"}
    ca = _cert(tmp_path / "tls" / "ca.crt")
    agent = _cert(issued["dilu-node-agent.n1"].cert)
    assert agent.issuer == ca.subject
    assert agent.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dilu-node-agent.n1"
    names = agent.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns = set(names.get_values_for_type(x509.DNSName))
    assert {"dilu-node-agent.n1", "localhost", "gpu-7.example"} <= dns
    uses = set(agent.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    assert uses == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    worker = set(_cert(issued["dilu-worker.n1"].cert).extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value)
    assert worker == {ExtendedKeyUsageOID.SERVER_AUTH}  # workers only serve
    operator = _cert(issued["dilu-operator"].cert)
    assert set(operator.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == {
        ExtendedKeyUsageOID.CLIENT_AUTH}
    assert stat.S_IMODE((tmp_path / "tls").stat().st_mode) == 0o700
    for one in issued.values():
        assert stat.S_IMODE(one.key.stat().st_mode) == 0o600
    assert identity_of(issued["dilu-scheduler"].cert.read_bytes()) == "dilu-scheduler"


def test_init_again_keeps_what_exists(tmp_path: Path):
    first = init_certs(tmp_path, ["n1"])
    before = {i.identity: i.cert.read_bytes() for i in first}
    init_certs(tmp_path, ["n1", "n2"])
    assert all(Path(tmp_path / f"{name}.crt").read_bytes() == pem for name, pem in before.items())
    assert (tmp_path / "dilu-node-agent.n2.crt").exists()


def test_a_certificate_can_be_issued_for_a_validity_in_the_past(tmp_path: Path):
    old = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    issued = DevCa.open_or_create(tmp_path).issue("alice", not_before=old, days=1)
    assert _cert(issued.cert).not_valid_after_utc < datetime.datetime.now(datetime.UTC)


@pytest.mark.parametrize("identity", ["dilu-admin", "dilu-worker.", "a b", "dilu-node-agent.x/y"])
def test_names_outside_the_scheme_are_refused(identity: str):
    with pytest.raises(CertError):
        usages_of(identity)


def test_the_nats_configuration_names_every_identity_with_its_permissions(tmp_path: Path):
    init_certs(tmp_path, ["n1"])
    text = NatsTls(tmp_path / "ca.crt", tmp_path / "dilu-nats.crt", tmp_path / "dilu-nats.key",
                   bus_users(["n1"])).config()
    assert '"verify_and_map": true' in text
    for user in ("dilu-scheduler", "dilu-scaler", "dilu-profiler", "dilu-operator",
                 "dilu-node-agent.n1"):
        assert f'"user": "{user}"' in text


def test_a_node_agent_may_publish_only_under_its_own_node_and_write_only_its_own_key():
    permissions = bus_users(["n1", "n2"])["dilu-node-agent.n1"].permissions("dilu-node-agent.n1")
    publish = permissions["publish"]["allow"]
    assert {"dilu.qos.n1.>", "dilu.telemetry.gpu.n1.>", "dilu.events.instance.n1.>",
            "$KV.dilu-nodes.n1"} <= set(publish)
    assert not [s for s in publish if "n2" in s or s.startswith("dilu.events.scaling")]
    assert not [s for s in publish if s.startswith("$KV.") and s != "$KV.dilu-nodes.n1"]
    # It reads no other node's heartbeat, and only its own inbox.
    assert not [s for s in publish if "GET.KV_dilu-nodes" in s or "CONSUMER.CREATE.KV_dilu-nodes" in s]
    assert permissions["subscribe"]["allow"] == ["_INBOX_dilu-node-agent_n1.>"]


def test_only_the_scheduler_and_the_scaler_publish_scaling_decisions():
    users = bus_users(["n1"])
    deciders = {name for name, access in users.items()
                if access.everything or "dilu.events.scaling.>" in access.publish}
    assert deciders == {"dilu-scheduler", "dilu-scaler", "dilu-operator"}


def test_the_scaler_writes_only_its_lease_and_reads_only_what_it_uses():
    users = bus_users(["n1"])
    publish = users["dilu-scaler"].permissions("dilu-scaler")["publish"]["allow"]
    assert [s for s in publish if s.startswith("$KV.")] == ["$KV.dilu-scaler-lease.>"]
    # Its lease (create, read back a deleted key) and the access store, no other bucket.
    read = {s.split(".")[4] for s in publish if s.startswith("$JS.API.DIRECT.GET.KV_")}
    assert read == {"KV_dilu-scaler-lease", "KV_dilu-access"}
    assert "$JS.API.STREAM.CREATE.KV_dilu-scaler-lease" in publish
    subscribe = users["dilu-scaler"].permissions("dilu-scaler")["subscribe"]["allow"]
    assert set(subscribe) == {"dilu.qos.>", "dilu.telemetry.gpu.>", "dilu.events.scaling.>",
                              "_INBOX_dilu-scaler.>"}
    # Nobody else writes the lease.
    for name, access in users.items():
        if name not in ("dilu-scaler", "dilu-operator"):
            assert not [s for s in access.permissions(name)["publish"]["allow"]
                        if "dilu-scaler-lease" in s], name

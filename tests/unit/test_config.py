from __future__ import annotations

import pytest

from services.common.config import server_config, service_parser


def test_flags_fall_back_to_dilu_environment_variables(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DILU_PORT", "6000")
    monkeypatch.setenv("DILU_NATS_URL", "nats://bus:4222")
    config = server_config("scheduler", service_parser("scheduler", "").parse_args([]))
    assert (config.port, config.nats_url) == (6000, "nats://bus:4222")


def test_a_flag_beats_the_environment_and_defaults_are_the_documented_ports(
        monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("DILU_PORT", "6000")
    assert service_parser("scaler", "").parse_args(["--port", "7"]).port == 7
    monkeypatch.delenv("DILU_PORT")
    assert service_parser("scaler", "").parse_args([]).port == 50054


def test_a_malformed_environment_value_is_named(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]):
    monkeypatch.setenv("DILU_GRACE_S", "soon")
    with pytest.raises(SystemExit):
        service_parser("profiler", "")
    assert "DILU_GRACE_S='soon'" in capsys.readouterr().err

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


def test_each_service_has_its_documented_metrics_port_and_env_overrides_it(
        monkeypatch: pytest.MonkeyPatch):
    defaults = {service: server_config(service, service_parser(service, "").parse_args([]))
                .metrics_port for service in ("scheduler", "node-agent", "profiler", "scaler")}
    assert defaults == {"scheduler": 9451, "node-agent": 9452, "profiler": 9453, "scaler": 9454}
    monkeypatch.setenv("DILU_METRICS_PORT", "0")
    assert server_config("scaler", service_parser("scaler", "").parse_args([])).metrics_port == 0
    args = service_parser("scaler", "").parse_args(["--metrics-port", "-1"])
    assert server_config("scaler", args).metrics_port == -1


@pytest.mark.parametrize("value", ["-2", "65536", "off"])
def test_a_metrics_port_that_is_no_port_is_refused(value: str, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        service_parser("profiler", "").parse_args(["--metrics-port", value])
    assert "--metrics-port" in capsys.readouterr().err

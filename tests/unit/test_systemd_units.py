"""deploy/systemd: every unit passes `systemd-analyze verify` without a warning, is as
hardened as the README says (`systemd-analyze security` exposure scores), and asks for
readiness and a watchdog. Both tools work offline against a scratch root (no running
systemd needed): the host's own unit directory (for the targets the units name), our
units, and stand-ins at the ExecStart paths."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS_DIR = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
UNITS = sorted(p.name for p in UNITS_DIR.glob("dilu-*.service"))
HOST_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
# `systemd-analyze security` rates 0 (locked down) to 10 (exposed); "OK" is below 2.
MAX_EXPOSURE = 2.0

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze is not installed")


def _directives(unit: str) -> list[tuple[str, str]]:
    pairs = []
    for line in (UNITS_DIR / unit).read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            pairs.append((key.strip(), value.strip()))
    return pairs


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    host = next((d for d in HOST_UNIT_DIRS if (d / "sysinit.target").exists()), None)
    if host is None:
        pytest.skip("no systemd unit directory on this host to verify against")
    scratch = tmp_path_factory.mktemp("systemd-root")
    shutil.copytree(host, scratch / "usr" / "lib" / "systemd" / "system", symlinks=True)
    units = scratch / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(UNITS_DIR / unit, units / unit)
        for key, value in _directives(unit):
            if key == "ExecStart":
                stand_in = scratch / value.split()[0].lstrip("/")
                stand_in.parent.mkdir(parents=True, exist_ok=True)
                stand_in.write_text("#!/bin/sh\n")
                stand_in.chmod(0o755)
    return scratch


def test_there_is_a_unit_per_service():
    assert UNITS == ["dilu-node-agent.service", "dilu-profiler.service", "dilu-scaler.service",
                     "dilu-scheduler.service"]


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_analyze_verify_passes_without_a_warning(root: Path, unit: str):
    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", unit],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        result.stdout + result.stderr


def _exposure(root: Path, unit: str) -> float:
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={root}",
                             "--no-pager", unit], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert found, result.stdout[-500:]
    return float(found.group(1))


def _readme_scores() -> dict[str, float]:
    rows = re.findall(r"^\| `(dilu-[\w-]+\.service)` \| ([\d.]+) ",
                      (UNITS_DIR / "README.md").read_text(), re.MULTILINE)
    return {unit: float(score) for unit, score in rows}


@pytest.mark.parametrize("unit", UNITS)
def test_exposure_is_low_and_as_the_readme_reports(root: Path, unit: str):
    score = _exposure(root, unit)
    assert score <= MAX_EXPOSURE
    assert _readme_scores().get(unit) == score, "update deploy/systemd/README.md"


@pytest.mark.parametrize("unit", UNITS)
def test_each_unit_runs_hardened_as_its_own_user_with_readiness_and_a_watchdog(unit: str):
    directives = _directives(unit)
    settings = dict(directives)
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "main"
    assert float(settings["WatchdogSec"]) > 0
    assert settings["User"] == settings["Group"] == "dilu"
    assert settings["NoNewPrivileges"] == "yes"
    assert settings["ProtectSystem"] == "strict"
    assert settings["PrivateTmp"] == "yes"
    assert settings["CapabilityBoundingSet"] == "" and settings["AmbientCapabilities"] == ""
    assert "RuntimeDirectory" in settings
    devices = [value for key, value in directives if key == "DeviceAllow"]
    if unit == "dilu-node-agent.service":
        assert settings["DevicePolicy"] == "closed"
        assert devices and all(d.startswith("char-nvidia") for d in devices)
        assert "PrivateDevices" not in settings
    else:
        assert settings["PrivateDevices"] == "yes" and not devices

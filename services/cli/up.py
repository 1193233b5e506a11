"""`dilu up`: run nats-server, the four services and one node agent until Ctrl-C,
restarting any that dies (as systemd's Restart=on-failure would)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from services.cli.stack import ManagedProcess, NatsServer, ServiceLauncher, StackError
from services.common.config import DEFAULT_METRICS_PORTS, DEFAULT_PORTS

# A service that keeps dying is given up on: this many restarts within the window.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


@dataclass(frozen=True, slots=True)
class StackOptions:
    state_dir: Path
    nats_port: int = 4222
    scheduler_port: int = DEFAULT_PORTS["scheduler"]
    node_agent_port: int = DEFAULT_PORTS["node-agent"]
    profiler_port: int = DEFAULT_PORTS["profiler"]
    scaler_port: int = DEFAULT_PORTS["scaler"]
    sim_gpus: int = 2
    node_id: str = "local"
    # Prometheus /metrics port per service (0: a free one, -1: none).
    metrics_ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_METRICS_PORTS))


@dataclass(frozen=True, slots=True)
class _ServiceSpec:
    service: str
    port: int
    extra: tuple[str, ...] = ()
    metrics_port: int | None = None


@dataclass
class RunningStack:
    nats: NatsServer
    launcher: ServiceLauncher
    specs: dict[str, _ServiceSpec]
    services: dict[str, ManagedProcess] = field(default_factory=dict)
    restarts: dict[str, list[float]] = field(default_factory=dict)

    def endpoints(self) -> dict[str, str]:
        return {"nats": self.nats.url, **{n: p.address for n, p in self.services.items()}}

    def metrics_endpoints(self) -> dict[str, str]:
        """Each service's Prometheus endpoint, as a URL."""
        return {n: f"http://{p.metrics_address}/metrics" for n, p in self.services.items()
                if p.metrics_address}

    def pids(self) -> dict[str, int]:
        procs = {n: p.pid for n, p in self.services.items()}
        return {"nats": self.nats.proc.pid, **procs} if self.nats.proc else procs

    def start(self, name: str) -> ManagedProcess:
        spec = self.specs[name]
        # Re-binding the same port right after a crash may briefly fail; the launcher
        # reports that as a StackError and the supervisor tries again.
        process = self.launcher.start(spec.service, *spec.extra, port=spec.port,
                                      metrics_port=spec.metrics_port)
        self.services[name] = process
        return process

    def revive(self) -> list[str]:
        """Restart whatever died; returns what was restarted. Raises StackError when a
        process keeps dying."""
        revived = []
        now = time.monotonic()
        dead = ([] if self.nats.proc is None or self.nats.proc.alive() else ["nats"]) + [
            n for n, p in self.services.items() if not p.alive()]
        for name in dead:
            recent = [t for t in self.restarts.get(name, []) if now - t < RESTART_WINDOW_S]
            if len(recent) >= MAX_RESTARTS:
                raise StackError(f"{name} died {len(recent)} times within {RESTART_WINDOW_S:.0f} s")
            self.restarts[name] = [*recent, now]
            if name == "nats":
                self.nats.start()  # same port, same JetStream store
            else:
                self.start(name)
            revived.append(name)
        return revived

    def stop(self) -> None:
        for process in reversed(list(self.services.values())):
            process.stop()
        self.nats.stop()


@contextmanager
def running_stack(options: StackOptions) -> Iterator[RunningStack]:
    """Start everything, yield, then stop in reverse order (services first, NATS last)."""
    options.state_dir.mkdir(parents=True, exist_ok=True)
    nats = NatsServer(options.state_dir / "nats", port=options.nats_port)
    metrics = options.metrics_ports
    specs = {
        "scheduler": _ServiceSpec("scheduler", options.scheduler_port,
                                  metrics_port=metrics.get("scheduler")),
        "node-agent": _ServiceSpec("node-agent", options.node_agent_port, (
            "--node-id", options.node_id, "--sim-gpus", str(options.sim_gpus),
            # Pages live under the state dir, so two stacks on one host never share them.
            "--runtime-dir", str(options.state_dir / "run")), metrics_port=metrics.get("node-agent")),
        "profiler": _ServiceSpec("profiler", options.profiler_port,
                                 metrics_port=metrics.get("profiler")),
        "scaler": _ServiceSpec("scaler", options.scaler_port, metrics_port=metrics.get("scaler")),
    }
    stack = RunningStack(nats, ServiceLauncher(options.state_dir, ""), specs)
    try:
        nats.start()
        stack.launcher.nats_url = nats.url
        for name in specs:
            stack.start(name)
        yield stack
    finally:
        stack.stop()


def stack_file(state_dir: Path) -> Path:
    return state_dir / "stack.json"


def _write_stack_file(state_dir: Path, stack: RunningStack) -> None:
    stack_file(state_dir).write_text(json.dumps(
        {"pid": os.getpid(), "endpoints": stack.endpoints(), "pids": stack.pids(),
         "metrics": stack.metrics_endpoints()}, indent=2))


def run_up(options: StackOptions) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    code = 0
    try:
        with running_stack(options) as stack:
            _write_stack_file(options.state_dir, stack)
            print("Dilu is up:")
            metrics = stack.metrics_endpoints()
            for name, address in stack.endpoints().items():
                print(f"  {name:<11} {address:<24} pid {stack.pids()[name]:<8} "
                      f"{metrics.get(name, '')}".rstrip())
            print(f"logs in {options.state_dir / 'logs'}; Ctrl-C or `dilu down` stops everything",
                  flush=True)
            while not stop.wait(0.5):
                try:
                    revived = stack.revive()
                except StackError as error:
                    print(f"giving up: {error}; see {options.state_dir / 'logs'}", flush=True)
                    code = 1
                    break
                for name in revived:
                    print(f"{name} exited; restarted as pid {stack.pids()[name]}", flush=True)
                if revived:
                    _write_stack_file(options.state_dir, stack)
            print("stopping Dilu ...", flush=True)
    finally:
        stack_file(options.state_dir).unlink(missing_ok=True)
    print("stopped")
    return code


def run_down(state_dir: Path, timeout_s: float = 30.0) -> int:
    path = stack_file(state_dir)
    if not path.exists():
        print(f"no running stack recorded in {path}")
        return 1
    pid = json.loads(path.read_text())["pid"]
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        path.unlink(missing_ok=True)
        print(f"stack process {pid} was already gone")
        return 0
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # `dilu up` removes its stack file once every child has stopped.
        if not path.exists() or not _alive(pid):
            print("stopped")
            return 0
        time.sleep(0.1)
    print(f"stack process {pid} did not stop within {timeout_s} s")
    return 1


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True

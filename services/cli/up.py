"""`dilu up`: run nats-server, the four services and one node agent until Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from services.cli.stack import ManagedProcess, NatsServer, ServiceLauncher
from services.common.config import DEFAULT_PORTS


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


@dataclass
class RunningStack:
    nats: NatsServer
    services: dict[str, ManagedProcess]

    def endpoints(self) -> dict[str, str]:
        return {"nats": self.nats.url, **{n: p.address for n, p in self.services.items()}}

    def dead(self) -> list[str]:
        procs = [*self.services.values(), *([self.nats.proc] if self.nats.proc else [])]
        return [p.name for p in procs if not p.alive()]


@contextmanager
def running_stack(options: StackOptions) -> Iterator[RunningStack]:
    """Start everything, yield, then stop in reverse order (services first, NATS last)."""
    options.state_dir.mkdir(parents=True, exist_ok=True)
    nats = NatsServer(options.state_dir / "nats", port=options.nats_port)
    started: dict[str, ManagedProcess] = {}
    try:
        nats.start()
        launcher = ServiceLauncher(options.state_dir, nats.url)
        started["scheduler"] = launcher.start(
            "scheduler", port=options.scheduler_port)
        started["node-agent"] = launcher.start(
            "node-agent", "--node-id", options.node_id, "--sim-gpus", str(options.sim_gpus),
            port=options.node_agent_port)
        started["profiler"] = launcher.start("profiler", port=options.profiler_port)
        started["scaler"] = launcher.start("scaler", port=options.scaler_port)
        yield RunningStack(nats, started)
    finally:
        for process in reversed(list(started.values())):
            process.stop()
        nats.stop()


def stack_file(state_dir: Path) -> Path:
    return state_dir / "stack.json"


def run_up(options: StackOptions) -> int:
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with running_stack(options) as stack:
        stack_file(options.state_dir).write_text(
            json.dumps({"pid": os.getpid(), "endpoints": stack.endpoints()}, indent=2))
        print("Dilu is up:")
        for name, address in stack.endpoints().items():
            print(f"  {name:<11} {address}")
        print(f"logs in {options.state_dir / 'logs'}; Ctrl-C or `dilu down` stops everything",
              flush=True)
        while not stop.wait(0.5):
            dead = stack.dead()
            if dead:
                print(f"stopping: {', '.join(dead)} exited; see {options.state_dir / 'logs'}")
                stack_file(options.state_dir).unlink(missing_ok=True)
                return 1
        print("stopping Dilu ...", flush=True)
    stack_file(options.state_dir).unlink(missing_ok=True)
    print("stopped")
    return 0


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

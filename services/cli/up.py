"""`dilu up`: run nats-server, the four services and one node agent until Ctrl-C,
restarting any that dies (as systemd's Restart=on-failure would).

One stack owns its state dir (`<state dir>/dilu-up.lock` holds the owner's pid; a second
`dilu up` on it refuses to start, and the lock of a dead owner is taken over). Every child
dies with `dilu up` (parent-death signal), so a `kill -9` of it leaves nothing running; if
something survives anyway, `dilu down` finds it from the stack file and stops it. A process
that keeps dying (`MAX_RESTARTS` deaths within `RESTART_WINDOW_S`) is reported and left
down; the rest of the stack, serving workers included, keeps running.

`dilu up --secure` runs the same stack in secure mode (README, Security): certificates and
the operator token in `<state dir>/tls` (made on first use, as `dilu certs init` would),
nats-server with TLS and per-identity permissions, every service with TLS and
authentication on its public port and mutual TLS on its peer port.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from services.cli.credentials import (
    StackCredentials,
    ensure_credentials,
    register_operator_token_sync,
)
from services.cli.ownership import AlreadyOwned, Ownership, same_process, start_time
from services.cli.stack import ManagedProcess, NatsServer, ServiceLauncher, StackError
from services.common.config import DEFAULT_METRICS_PORTS, DEFAULT_PEER_PORTS, DEFAULT_PORTS
from services.common.security.tls import TlsFiles

# A process that keeps dying is given up on: this many deaths within the window.
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
    # The scaler's policy at start: "coscale" (it acts) or "static" (it only observes).
    scaler_policy: str = "coscale"
    # Prometheus /metrics port per service (0: a free one, -1: none).
    metrics_ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_METRICS_PORTS))
    # Secure mode: TLS and authentication everywhere, credentials in <state dir>/tls.
    secure: bool = False
    # Secure mode: each service's mutual-TLS port (0: a free one).
    peer_ports: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_PEER_PORTS))
    # More flags for the node agent (e.g. --worker-uids), and environment for every child.
    agent_flags: tuple[str, ...] = ()
    # More flags for the profiler (e.g. a smaller grid).
    profiler_flags: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)

    @property
    def credentials_dir(self) -> Path:
        return self.state_dir / "tls"


@dataclass(frozen=True, slots=True)
class _ServiceSpec:
    service: str
    port: int
    extra: tuple[str, ...] = ()
    metrics_port: int | None = None
    tls: TlsFiles | None = None
    peer_port: int = 0


@dataclass
class RunningStack:
    nats: NatsServer
    launcher: ServiceLauncher
    specs: dict[str, _ServiceSpec]
    services: dict[str, ManagedProcess] = field(default_factory=dict)
    deaths: dict[str, list[float]] = field(default_factory=dict)
    # Processes that kept dying and are left down, with why.
    given_up: dict[str, str] = field(default_factory=dict)
    # Secure mode: the stack's certificates and operator token.
    credentials: StackCredentials | None = None

    def endpoints(self) -> dict[str, str]:
        return {"nats": self.nats.url, **{n: p.address for n, p in self.services.items()}}

    def peer_endpoints(self) -> dict[str, str]:
        """Secure mode: each service's mutual-TLS listener."""
        return {n: p.peer_address for n, p in self.services.items() if p.peer_address}

    def metrics_endpoints(self) -> dict[str, str]:
        """Each service's Prometheus endpoint, as a URL (HTTPS in secure mode)."""
        scheme = "https" if self.credentials is not None else "http"
        return {n: f"{scheme}://{p.metrics_address}/metrics" for n, p in self.services.items()
                if p.metrics_address}

    def processes(self) -> dict[str, ManagedProcess]:
        procs = {"nats": self.nats.proc} if self.nats.proc else {}
        return {**procs, **self.services}

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.processes().items()}

    def start(self, name: str) -> ManagedProcess:
        spec = self.specs[name]
        extra = spec.extra
        scheduler = self.services.get("scheduler")
        if name == "profiler" and scheduler is not None:
            # Its hidden instances and load go through the scheduler: in secure mode its
            # peer port, where the profiler's certificate is what the scheduler authorizes.
            extra = (*extra, "--scheduler", scheduler.peer_address or scheduler.address)
        process = self.launcher.start(spec.service, *extra, port=spec.port,
                                      metrics_port=spec.metrics_port, tls=spec.tls,
                                      peer_port=spec.peer_port)
        self.services[name] = process
        bound = process.address.rpartition(":")[2]
        if spec.port == 0 and bound.isdigit():
            # A restart comes back on the same address: the profiler dials the scheduler.
            self.specs[name] = replace(spec, port=int(bound))
        peer_bound = process.peer_address.rpartition(":")[2]
        if spec.peer_port == 0 and peer_bound.isdigit():
            self.specs[name] = replace(self.specs[name], peer_port=int(peer_bound))
        return process

    def revive(self, now: float | None = None) -> tuple[list[str], list[str]]:
        """Restart whatever died; returns (restarted, given up now). A process that died
        `MAX_RESTARTS` times within `RESTART_WINDOW_S` (a failed restart counts as a death)
        is left down and reported; the others keep running."""
        now = time.monotonic() if now is None else now
        restarted, given_up = [], []
        for name, process in self.processes().items():
            if name in self.given_up or process.alive():
                continue
            recent = [t for t in self.deaths.get(name, []) if now - t < RESTART_WINDOW_S]
            self.deaths[name] = [*recent, now]
            if len(self.deaths[name]) >= MAX_RESTARTS:
                self.given_up[name] = (f"died {len(self.deaths[name])} times within "
                                       f"{RESTART_WINDOW_S:.0f} s")
                given_up.append(name)
                continue
            try:
                if name == "nats":
                    self.nats.start()  # same port, same JetStream store
                else:
                    self.start(name)
            except StackError as error:
                # Counted as a death at the next pass (the process is not alive).
                print(f"{name} could not be restarted: {str(error).splitlines()[0]}", flush=True)
                continue
            restarted.append(name)
        return restarted, given_up

    def stop(self) -> None:
        for process in reversed(list(self.services.values())):
            process.stop()
        self.nats.stop()


@contextmanager
def running_stack(options: StackOptions) -> Iterator[RunningStack]:
    """Start everything, yield, then stop in reverse order (services first, NATS last)."""
    options.state_dir.mkdir(parents=True, exist_ok=True)
    credentials = None
    if options.secure:
        credentials, _ = ensure_credentials(options.credentials_dir, [options.node_id])
    nats = NatsServer(options.state_dir / "nats", port=options.nats_port,
                      secure=credentials.nats() if credentials is not None else None)
    metrics = options.metrics_ports

    def spec(service: str, port: int, *extra: str) -> _ServiceSpec:
        tls = credentials.service(service, options.node_id) if credentials is not None else None
        return _ServiceSpec(service, port, extra, metrics.get(service), tls,
                            options.peer_ports.get(service, 0))

    specs = {
        "scheduler": spec("scheduler", options.scheduler_port),
        "node-agent": spec("node-agent", options.node_agent_port,
                           "--node-id", options.node_id, "--sim-gpus", str(options.sim_gpus),
                           # Pages live under the state dir, so two stacks on one host never
                           # share them.
                           "--runtime-dir", str(options.state_dir / "run"), *options.agent_flags),
        "profiler": spec("profiler", options.profiler_port, *options.profiler_flags),
        "scaler": spec("scaler", options.scaler_port),
    }
    stack = RunningStack(nats, ServiceLauncher(options.state_dir, "", dict(options.env)), specs,
                         credentials=credentials)
    try:
        nats.start()
        if credentials is not None:
            register_operator_token_sync(credentials, nats.url)
        stack.launcher.nats_url = nats.url
        for name in specs:
            if name == "scaler":  # it acts through the scheduler, wherever that listens
                # (secure mode: the scheduler's peer port, where the scaler's certificate
                # is what the scheduler authorizes).
                scheduler = stack.services["scheduler"]
                specs[name] = replace(specs[name], extra=(
                    "--scheduler", scheduler.peer_address or scheduler.address,
                    "--policy", options.scaler_policy))
            stack.start(name)
        yield stack
    finally:
        stack.stop()


def stack_file(state_dir: Path) -> Path:
    return state_dir / "stack.json"


def lock_file(state_dir: Path) -> Path:
    return state_dir / "dilu-up.lock"


def _write_stack_file(state_dir: Path, stack: RunningStack) -> None:
    processes = stack.processes()
    # Written beside and renamed into place: `dilu down`, `dilu status` and tests read it
    # while the stack rewrites it after each restart, and must never see half a file.
    staged = stack_file(state_dir).with_suffix(".json.tmp")
    staged.write_text(json.dumps({
        "pid": os.getpid(), "started": start_time(os.getpid()),
        "endpoints": stack.endpoints(), "peer_endpoints": stack.peer_endpoints(),
        "pids": stack.pids(),
        "metrics": stack.metrics_endpoints(),
        "starts": {name: p.started for name, p in processes.items()},
        "down": stack.given_up}, indent=2))
    os.replace(staged, stack_file(state_dir))


def run_up(options: StackOptions) -> int:
    try:
        owner = Ownership.take(lock_file(options.state_dir), f"the state dir {options.state_dir}")
    except AlreadyOwned as error:
        print(f"error: {error}: a stack already runs there (`dilu down --state-dir "
              f"{options.state_dir}` stops it)", file=sys.stderr)
        return 1
    try:
        return _run_owned(options)
    finally:
        owner.release()


def _run_owned(options: StackOptions) -> int:
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
            if stack.credentials is not None:
                _print_secure(stack)
            print(f"logs in {options.state_dir / 'logs'}; Ctrl-C or `dilu down` stops everything",
                  flush=True)
            while not stop.wait(0.5):
                restarted, given_up = stack.revive()
                for name in restarted:
                    print(f"{name} exited; restarted as pid {stack.pids()[name]}", flush=True)
                for name in given_up:
                    print(f"{name} {stack.given_up[name]}: left down, the rest keeps running; "
                          f"see {options.state_dir / 'logs'}", flush=True)
                    code = 1
                if restarted or given_up:
                    _write_stack_file(options.state_dir, stack)
            print("stopping Dilu ...", flush=True)
    except StackError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        stack_file(options.state_dir).unlink(missing_ok=True)
    print("stopped")
    return code


def _print_secure(stack: RunningStack) -> None:
    credentials = stack.credentials
    assert credentials is not None
    peers = ", ".join(f"{name} {address}" for name, address in stack.peer_endpoints().items())
    print(f"secure: TLS and authentication on every port; mutual TLS (client certificates) "
          f"on {peers}")
    print(f"  credentials in {credentials.directory}; to use the CLI as the operator:")
    print(f"  export DILU_CA={credentials.ca} DILU_TOKEN_FILE={credentials.token_path}")
    print(f"  (or DILU_CERT={credentials.operator.cert} DILU_KEY={credentials.operator.key} "
          "with a peer address)")


def run_down(state_dir: Path, timeout_s: float = 30.0) -> int:
    path = stack_file(state_dir)
    if not path.exists():
        print(f"no running stack recorded in {path}")
        return 1
    record = json.loads(path.read_text())
    pid = record["pid"]
    if not same_process(pid, record.get("started")) and not _alive_unchecked(pid, record):
        left = _stop_leftovers(record)
        path.unlink(missing_ok=True)
        print(f"stack process {pid} was gone; "
              + (f"stopped what it left running: {', '.join(left)}" if left
                 else "nothing it started was still running"))
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        # `dilu up` removes its stack file once every child has stopped.
        if not path.exists() or not _alive(pid):
            print("stopped")
            return 0
        time.sleep(0.1)
    print(f"stack process {pid} did not stop within {timeout_s} s")
    return 1


def _alive_unchecked(pid: int, record: dict[str, object]) -> bool:
    """A stack file without a start time (an older `dilu up`): trust the pid alone."""
    return record.get("started") is None and _alive(pid)


def _stop_leftovers(record: dict[str, object], timeout_s: float = 10.0) -> list[str]:
    """Stop the processes a dead `dilu up` recorded that still run, identified by pid and
    start time (never by name): SIGTERM, then SIGKILL after `timeout_s`."""
    pids: dict[str, int] = record.get("pids", {})  # type: ignore[assignment]
    starts: dict[str, int | None] = record.get("starts", {})  # type: ignore[assignment]
    running = {name: pid for name, pid in pids.items() if same_process(pid, starts.get(name))}
    for pid in running.values():
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(
            same_process(pid, starts.get(name)) for name, pid in running.items()):
        time.sleep(0.1)
    for name, pid in running.items():
        if same_process(pid, starts.get(name)):
            _signal(pid, signal.SIGKILL)
    return sorted(running)


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True

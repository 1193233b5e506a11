"""A local stack in secure mode for the integration tests (`dilu up --secure`, on free
ports), clients that call it as an identity of their choosing, and what it takes to run
workers under their own uids on this machine."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import nats
from nats.aio.client import Client

from services.cli.credentials import StackCredentials
from services.cli.up import RunningStack, StackOptions, running_stack
from services.common.config import DEFAULT_METRICS_PORTS, DEFAULT_PEER_PORTS
from services.common.security.identity import NATS_IDENTITY
from services.common.security.nats_access import inbox_prefix
from services.common.security.tls import TlsFiles, channel_credentials, client_context

WORKER_IDS = "61000-61099"
# A profile measures two points (batches 1 and 2 at the whole GPU) in a few seconds.
PROFILER_FLAGS = ("--shares", "1", "--batches", "1,2", "--trial-requests", "20",
                  "--warmup-requests", "2", "--training-shares", "0.5,1")


def unprivileged_python() -> tuple[str, dict[str, str]] | None:
    """An interpreter (and environment) with which a worker may run under an unprivileged
    uid on this machine: this one, or, when its installation is not readable by other users
    (a pyenv under /root), the system's of the same minor version with this one's packages;
    None when neither works or this process cannot switch users."""
    if os.geteuid() != 0:
        return None
    root = Path(__file__).resolve().parents[2]
    path = os.pathsep.join([str(root), str(root / "gen" / "python"), *site.getsitepackages()])
    for python, env in ((sys.executable, {}),
                        (f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}",
                         {"PYTHONPATH": path})):
        try:
            probe = subprocess.run([python, "-c", "import grpc, services.node_agent.worker"],
                                   user=61001, group=61001, extra_groups=[], timeout=30,
                                   env={**os.environ, "PYTHONPATH": path, **env},
                                   capture_output=True, check=False)
        except (OSError, subprocess.SubprocessError):
            continue
        if probe.returncode == 0:
            return python, {**env, "PYTHONPATH": path} if env else {}
    return None


@dataclass
class SecureStack:
    stack: RunningStack
    credentials: StackCredentials
    state_dir: Path
    isolated: bool
    runtime_dir: Path

    def address(self, service: str) -> str:
        return self.stack.services[service].address

    def peer_address(self, service: str) -> str:
        return self.stack.services[service].peer_address

    @property
    def nats_url(self) -> str:
        return self.stack.nats.url

    def files(self, identity: str) -> TlsFiles:
        return self.credentials.files(identity)

    def channel(self, address: str, expect: str, *, token: str = "",
                identity: str = "") -> grpc.Channel:
        """A channel to a server that must prove `expect`, calling with a token and/or the
        certificate of `identity`."""
        files = self.files(identity) if identity else None
        tls = channel_credentials(self.credentials.ca.read_bytes(),
                                  files.cert.read_bytes() if files else None,
                                  files.key.read_bytes() if files else None)
        if token:
            tls = grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(token))
        return grpc.secure_channel(address, tls, options=[("grpc.ssl_target_name_override", expect)])

    async def bus_as(self, identity: str, errors: list[str] | None = None) -> Client:
        """A NATS connection as `identity` (its certificate's user)."""
        files = self.files(identity)

        async def on_error(error: Exception) -> None:
            if errors is not None:
                errors.append(str(error))

        return await nats.connect(self.nats_url, tls=client_context(files), tls_hostname=NATS_IDENTITY,
                                  inbox_prefix=inbox_prefix(identity), error_cb=on_error,
                                  max_reconnect_attempts=0)

    def logs(self) -> list[Path]:
        return sorted([*(self.state_dir / "logs").glob("*.log*"),
                       *self.runtime_dir.rglob("*.log*"),
                       *(self.state_dir / "nats").glob("*.log*")])


@contextmanager
def secure_stack(state_dir: Path, *, isolate: bool = True) -> Iterator[SecureStack]:
    """`dilu up --secure` on free ports (the agent "local", heartbeats 5 Hz, the profiler on
    a small grid); workers under
    their own uids when `isolate` and this machine allows it."""
    worker = unprivileged_python() if isolate else None
    flags: tuple[str, ...] = ("--heartbeat-interval-s", "0.2")
    env: dict[str, str] = {}
    runtime_dir = state_dir / "run"
    if worker is not None:
        python, env = worker
        # Workers must reach their pages: not under pytest's directories, which only root
        # may enter.
        runtime_dir = Path(tempfile.mkdtemp(prefix="dilu-run-"))
        flags += ("--worker-uids", WORKER_IDS, "--worker-python", python,
                  "--runtime-dir", str(runtime_dir))
    options = StackOptions(state_dir=state_dir, nats_port=0, scheduler_port=0,
                           node_agent_port=0, profiler_port=0, scaler_port=0,
                           metrics_ports=dict.fromkeys(DEFAULT_METRICS_PORTS, 0),
                           peer_ports=dict.fromkeys(DEFAULT_PEER_PORTS, 0), secure=True,
                           agent_flags=flags, profiler_flags=PROFILER_FLAGS, env=env)
    try:
        with running_stack(options) as stack:
            assert stack.credentials is not None
            yield SecureStack(stack, stack.credentials, state_dir, worker is not None,
                              runtime_dir / "local")
    finally:
        if runtime_dir != state_dir / "run":
            shutil.rmtree(runtime_dir, ignore_errors=True)

"""Real processes for integration tests: a JetStream nats-server on a free port with a
temporary store, and the services started as `python -m services.<x>` on port 0."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from dilu.v1 import node_agent_pb2_grpc, scheduler_pb2, scheduler_pb2_grpc, types_pb2

from services.cli.stack import ManagedProcess, NatsServer, ServiceLauncher
from tests.helpers import assert_eventually

pytestmark = pytest.mark.integration

# Fast clocks so failure detection fits in a test: heartbeats 5 Hz, nodes lost after 1.5 s.
FAST_SCHEDULER = ("--node-timeout-s", "1.5", "--reconcile-interval-s", "0.2",
                  "--agent-grace-s", "3")
FAST_AGENT = ("--heartbeat-interval-s", "0.2")


@dataclass
class Cluster:
    """A running stack a test can poke: start/kill processes by their own pids."""

    tmp: Path
    nats: NatsServer
    launcher: ServiceLauncher
    processes: list[ManagedProcess] = field(default_factory=list)
    channels: list[grpc.Channel] = field(default_factory=list)
    scheduler: ManagedProcess | None = None

    def start_scheduler(self, *extra: str) -> ManagedProcess:
        self.scheduler = self._track(self.launcher.start("scheduler", *FAST_SCHEDULER, *extra))
        return self.scheduler

    def start_agent(self, node_id: str, gpus: int = 2, *extra: str) -> ManagedProcess:
        return self._track(self.launcher.start(
            "node-agent", "--node-id", node_id, "--sim-gpus", str(gpus), "--gpu-backend", "sim",
            "--runtime-dir", str(self.runtime_dir), *FAST_AGENT, *extra,
            name=f"node-agent-{node_id}"))

    @property
    def runtime_dir(self) -> Path:
        return self.tmp / "run"

    def start_service(self, service: str, *extra: str) -> ManagedProcess:
        return self._track(self.launcher.start(service, *extra))

    def start_profiler(self, *extra: str) -> ManagedProcess:
        """A profiler on this cluster's scheduler (started first) with `extra` flags."""
        assert self.scheduler is not None
        return self.start_service("profiler", "--scheduler", self.scheduler.address, *extra)

    def _track(self, process: ManagedProcess) -> ManagedProcess:
        self.processes.append(process)
        return process

    def channel(self, address: str) -> grpc.Channel:
        channel = grpc.insecure_channel(address)
        self.channels.append(channel)
        return channel

    @property
    def sched(self) -> scheduler_pb2_grpc.SchedulerServiceStub:
        assert self.scheduler is not None
        return scheduler_pb2_grpc.SchedulerServiceStub(self.channel(self.scheduler.address))

    def agent_stub(self, agent: ManagedProcess) -> node_agent_pb2_grpc.NodeAgentServiceStub:
        return node_agent_pb2_grpc.NodeAgentServiceStub(self.channel(agent.address))

    def deploy(self, spec: types_pb2.FunctionSpec) -> types_pb2.Function:
        return self.sched.Deploy(scheduler_pb2.DeployRequest(function=spec), timeout=15).function

    def function(self, name: str) -> types_pb2.Function:
        return self.sched.GetFunction(scheduler_pb2.GetFunctionRequest(name=name),
                                      timeout=10).function

    def nodes(self) -> dict[str, types_pb2.NodeView]:
        views = self.sched.ListNodes(scheduler_pb2.ListNodesRequest(), timeout=10).nodes
        return {v.node.id: v for v in views}

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
        for process in reversed(self.processes):
            process.stop(timeout_s=5)
        self.nats.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    nats = NatsServer(tmp_path / "nats").start()
    stack = Cluster(tmp_path, nats, ServiceLauncher(tmp_path, nats.url))
    try:
        yield stack
    finally:
        stack.close()
        for log in sorted((tmp_path / "logs").glob("*.log")):
            # Shown by pytest only when the test failed.
            print(f"----- {log.name}\n{log.read_text(errors='replace')[-4000:]}")


@pytest.fixture
def one_node(cluster: Cluster) -> Cluster:
    """A scheduler and one node agent "n1" with two simulated GPUs, registered."""
    cluster.start_scheduler()
    cluster.start_agent("n1")
    assert_eventually(lambda: cluster.nodes().get("n1"), message="n1 registered")
    return cluster


def inference_spec(name: str, *, request: float = 0.3, limit: float = 0.5,
                   memory_mib: int = 4096, min_replicas: int = 1,
                   max_replicas: int = 4) -> types_pb2.FunctionSpec:
    return types_pb2.FunctionSpec(
        name=name, kind=types_pb2.FUNCTION_KIND_INFERENCE, runtime=types_pb2.RUNTIME_SIM,
        model="resnet152", slo=types_pb2.Slo(latency_ms=100),
        resources=types_pb2.Resources(sm_request=request, sm_limit=limit, memory_mib=memory_mib),
        replicas=types_pb2.Replicas(min=min_replicas, max=max_replicas))


def torch_inference_spec(name: str) -> types_pb2.FunctionSpec:
    """A tiny real PyTorch CNN (16×16 images, 10 classes) that answers in milliseconds."""
    spec = inference_spec(name)
    spec.runtime = types_pb2.RUNTIME_TORCH
    spec.model = "resnet"
    spec.runtime_options.update({"image_size": "16", "width": "4", "blocks": "1,1",
                                 "classes": "10", "threads": "1"})
    return spec

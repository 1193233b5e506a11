"""A real stack to fuzz (nats-server, scheduler, one node agent with two simulated GPUs,
profiler, scaler, and seeded functions whose workers serve), the call that sends one
request and judges its outcome, and the checks that nothing seeded changed.

A request fails the suite when its answer is INTERNAL or UNKNOWN, when it hangs (no answer
within the per-call deadline), or when any process of the stack died. After fuzzing, no log
of any service or worker may hold a traceback, and the seeded functions and instances must
be as they were.

`FuzzStack(root, secure=True)` runs the same stack in secure mode (`dilu up --secure`'s
certificates and NATS permissions), and fuzzes it either with valid credentials
(`authenticated=True`: the operator's token on the services' public ports, the scheduler's
certificate on the workers') or with none: then every answer must be UNAUTHENTICATED (a
worker refuses the TLS handshake, UNAVAILABLE), whatever the request.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from dilu.v1 import scheduler_pb2, scheduler_pb2_grpc, types_pb2
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed

from services.cli.credentials import StackCredentials, ensure_credentials, register_operator_token_sync
from services.cli.stack import ManagedProcess, NatsServer, ServiceLauncher
from services.common.security.identity import (
    SCHEDULER_IDENTITY,
    node_agent_identity,
    service_identity,
    worker_identity,
)
from services.common.security.tls import TlsFiles, channel_credentials
from tests.fuzz.rpcs import FuzzContext, Rpc
from tests.fuzz.strategies import SEEDED_PREFIX

S = types_pb2
CALL_DEADLINE_S = 15.0
_FAILING_CODES = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
# Fast failure detection, as in the integration tests.
_PROFILER_FLAGS = ("--shares", "1", "--batches", "1", "--trial-requests", "20",
                   "--warmup-requests", "2", "--training-shares", "0.5,1", "--max-queued", "4")
# Invoke holds a request for a function with no ready instance: at most 5 s here, well
# within a call's deadline.
_SCHEDULER_FLAGS = ("--node-timeout-s", "3", "--reconcile-interval-s", "0.2", "--agent-grace-s", "3",
                    "--hold-max-wait-s", "5")


def seed_specs() -> list[types_pb2.FunctionSpec]:
    """Functions deployed before fuzzing, under names the fuzzer never draws."""
    infer = types_pb2.FunctionSpec(
        name=f"{SEEDED_PREFIX}-infer", kind=S.FUNCTION_KIND_INFERENCE, runtime=S.RUNTIME_SIM,
        model="resnet152", slo=types_pb2.Slo(latency_ms=100), max_batch=8,
        resources=types_pb2.Resources(sm_request=0.2, sm_limit=0.4, memory_mib=4096))
    train = types_pb2.FunctionSpec(
        name=f"{SEEDED_PREFIX}-train", kind=S.FUNCTION_KIND_TRAINING, runtime=S.RUNTIME_SIM,
        model="bert-base", resources=types_pb2.Resources(sm_request=0.1, sm_limit=0.5, memory_mib=4096))
    torch = types_pb2.FunctionSpec(
        name=f"{SEEDED_PREFIX}-torch", kind=S.FUNCTION_KIND_INFERENCE, runtime=S.RUNTIME_TORCH,
        model="resnet", slo=types_pb2.Slo(latency_ms=1000), max_batch=4,
        resources=types_pb2.Resources(sm_request=0.2, sm_limit=0.4, memory_mib=64),
        runtime_options={"image_size": "16", "width": "4", "blocks": "1,1", "classes": "10",
                         "threads": "1"})
    return [infer, train, torch]


def _snapshot(function: types_pb2.Function) -> tuple[object, ...]:
    """What must not change: the spec, and each instance's id, state, placement, endpoint
    and quota (the effective share is the arbiter's and moves with the load)."""
    instances = sorted((i.id, i.state, i.node, tuple(i.gpu_uuids), i.endpoint, i.quota.sm_request,
                        i.quota.sm_limit, i.quota.memory_limit_mib) for i in function.status.instances)
    return function.spec.SerializeToString(deterministic=True), function.status.desired_replicas, instances


@dataclass
class Outcome:
    code: grpc.StatusCode
    elapsed_s: float
    details: str


@dataclass
class RpcResult:
    calls: int = 0
    failures: list[str] = field(default_factory=list)
    codes: Counter[str] = field(default_factory=Counter)  # answers by status code

    def merge(self, other: RpcResult) -> None:
        self.calls += other.calls
        self.failures += other.failures
        self.codes.update(other.codes)

    def summary(self) -> str:
        return ", ".join(f"{code} {count}" for code, count in self.codes.most_common())


NODE = "n1"
# The identity each target must prove in secure mode.
_IDENTITIES = {"scheduler": service_identity("scheduler"), "node-agent": node_agent_identity(NODE),
               "profiler": service_identity("profiler"), "scaler": service_identity("scaler"),
               "worker-sim": worker_identity(NODE), "worker-torch": worker_identity(NODE)}


@dataclass
class FuzzStack:
    root: Path
    secure: bool = False
    authenticated: bool = True
    credentials: StackCredentials | None = None
    nats: NatsServer | None = None
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    targets: dict[str, str] = field(default_factory=dict)
    seeded: dict[str, tuple[object, ...]] = field(default_factory=dict)
    context: FuzzContext = field(default_factory=lambda: FuzzContext(()))
    _channels: dict[tuple[str, str], grpc.Channel] = field(default_factory=dict)

    # ---- life cycle --------------------------------------------------------------------

    def start(self) -> FuzzStack:
        if self.secure:
            self.credentials, _ = ensure_credentials(self.root / "tls", [NODE])
        credentials = self.credentials
        self.nats = NatsServer(self.root / "nats",
                               secure=credentials.nats() if credentials else None).start()
        if credentials is not None:
            register_operator_token_sync(credentials, self.nats.url)
        launcher = ServiceLauncher(self.root, self.nats.url)

        def tls(service: str) -> TlsFiles | None:
            return credentials.service(service, NODE) if credentials is not None else None

        self.processes["scheduler"] = launcher.start("scheduler", *_SCHEDULER_FLAGS,
                                                     tls=tls("scheduler"))
        self.processes["node-agent"] = launcher.start(
            "node-agent", "--node-id", NODE, "--sim-gpus", "2", "--gpu-backend", "sim",
            "--runtime-dir", str(self.root / "run"), "--heartbeat-interval-s", "0.5",
            tls=tls("node-agent"))
        # Profiles (a Deploy left to its profile, ProfileFunction) run for real, on a grid and
        # with trials small enough that a run takes seconds on the fuzz stack (secure: through
        # the scheduler's peer port, with the profiler's certificate).
        scheduler = self.processes["scheduler"]
        self.processes["profiler"] = launcher.start(
            "profiler", "--scheduler", scheduler.peer_address or scheduler.address,
            *_PROFILER_FLAGS, tls=tls("profiler"))
        self.processes["scaler"] = launcher.start("scaler", tls=tls("scaler"))
        self.targets = {name: p.address for name, p in self.processes.items()}
        nodes = self._wait(lambda: self.scheduler.ListNodes(
            scheduler_pb2.ListNodesRequest(), timeout=5).nodes, "the node registers")
        self.context = FuzzContext(tuple(g.uuid for g in nodes[0].node.gpus))
        self._seed()
        return self

    def _seed(self) -> None:
        for spec in seed_specs():
            self.scheduler.Deploy(scheduler_pb2.DeployRequest(function=spec), timeout=15)
        for spec in seed_specs():
            function = self._wait(lambda s=spec: (f := self.function(s.name)).status.ready_replicas
                                  == 1 and f, f"{spec.name} serves", timeout_s=60)
            self.seeded[spec.name] = _snapshot(function)
        self.targets["worker-sim"] = self.function(f"{SEEDED_PREFIX}-infer").status.instances[0].endpoint
        self.targets["worker-torch"] = self.function(f"{SEEDED_PREFIX}-torch").status.instances[0].endpoint

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        for process in reversed(list(self.processes.values())):
            process.stop(timeout_s=10)
        if self.nats is not None:
            self.nats.stop()

    # ---- calls -------------------------------------------------------------------------

    def channel(self, target: str, *, operator: bool = True) -> grpc.Channel:
        """A channel to a target of the stack; in secure mode with the operator's token (a
        worker: the scheduler's certificate), or, `operator=False` on an unauthenticated
        stack, with no credentials at all."""
        address = self.targets[target]
        with_credentials = operator or self.authenticated
        key = (address, "operator" if with_credentials else "none")
        if key not in self._channels:
            self._channels[key] = self._open(target, address, with_credentials)
        return self._channels[key]

    def _open(self, target: str, address: str, with_credentials: bool) -> grpc.Channel:
        credentials = self.credentials
        if credentials is None:
            return grpc.insecure_channel(address)
        ca = credentials.ca.read_bytes()
        if not with_credentials:
            tls = channel_credentials(ca)
        elif target.startswith("worker"):  # only services may call workers
            scheduler = credentials.files(SCHEDULER_IDENTITY)
            tls = channel_credentials(ca, scheduler.cert.read_bytes(), scheduler.key.read_bytes())
        else:
            tls = grpc.composite_channel_credentials(
                channel_credentials(ca), grpc.access_token_call_credentials(credentials.operator_token()))
        return grpc.secure_channel(address, tls, options=[("grpc.ssl_target_name_override",
                                                           _IDENTITIES[target])])

    @property
    def scheduler(self) -> scheduler_pb2_grpc.SchedulerServiceStub:
        return scheduler_pb2_grpc.SchedulerServiceStub(self.channel("scheduler"))

    def function(self, name: str) -> types_pb2.Function:
        return self.scheduler.GetFunction(scheduler_pb2.GetFunctionRequest(name=name),
                                          timeout=10).function

    def _wait(self, check: Callable[[], object], what: str, timeout_s: float = 30.0):  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                found = check()
                if found:
                    return found
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {timeout_s} s: {what}")
            time.sleep(0.1)

    def call(self, rpc: Rpc, request: bytes) -> Outcome:
        """Send raw request bytes; the answer's status, whatever it is."""
        method = self.channel(rpc.target, operator=False).unary_unary(
            rpc.path, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        started = time.monotonic()
        try:
            method(request, timeout=CALL_DEADLINE_S)
        except grpc.RpcError as error:
            return Outcome(error.code(), time.monotonic() - started, error.details() or "")  # type: ignore[attr-defined]
        return Outcome(grpc.StatusCode.OK, time.monotonic() - started, "")

    def judge(self, rpc: Rpc, request: bytes, outcome: Outcome) -> str | None:
        """Why this call failed the suite, or None."""
        problem = None
        if self.secure and not self.authenticated:
            # A worker refuses the handshake of a caller without a certificate.
            expected = (grpc.StatusCode.UNAVAILABLE if rpc.target.startswith("worker")
                        else grpc.StatusCode.UNAUTHENTICATED)
            if outcome.code != expected:
                problem = f"answered {outcome.code.name} without credentials: {outcome.details[:200]}"
        if outcome.code in _FAILING_CODES:
            problem = f"{outcome.code.name}: {outcome.details[:300]}"
        elif (outcome.code == grpc.StatusCode.DEADLINE_EXCEEDED
              and outcome.elapsed_s >= CALL_DEADLINE_S - 0.5):
            problem = f"no answer within {CALL_DEADLINE_S:.0f} s"
        dead = self.dead()
        if dead:
            problem = f"{', '.join(dead)} died" + (f" ({problem})" if problem else "")
        if problem is None:
            return None
        return f"{rpc.name}: {problem}; request {request[:300]!r}"

    def dead(self) -> list[str]:
        dead = [name for name, p in self.processes.items() if not p.alive()]
        if self.nats is not None and self.nats.proc is not None and not self.nats.proc.alive():
            dead.append("nats-server")
        return dead

    # ---- after fuzzing -----------------------------------------------------------------

    def tracebacks(self) -> list[str]:
        """Logs of services and workers that hold a traceback (with its first lines)."""
        found = []
        logs = [*(self.root / "logs").glob("*.log*"), *(self.root / "run").rglob("*.log*")]
        for log in sorted(logs):
            text = log.read_text(errors="replace")
            at = text.find("Traceback")
            if at >= 0:
                found.append(f"traceback in {log.name}: {text[max(0, at - 300):at + 1500]}")
        return found

    def seeded_changes(self) -> list[str]:
        changes = []
        for name, before in self.seeded.items():
            try:
                after = _snapshot(self.function(name))
            except grpc.RpcError as error:
                changes.append(f"seeded function {name}: {error.code().name}")  # type: ignore[attr-defined]
                continue
            if after != before:
                changes.append(f"seeded function {name} changed: {before[1:]} -> {after[1:]}")
        return changes

    def check(self) -> list[str]:
        """Every invariant that must hold after fuzzing; the violations."""
        dead = self.dead()
        return ([f"{', '.join(dead)} died"] if dead else []) + self.tracebacks() + self.seeded_changes()


def fuzz_rpc(stack: FuzzStack, rpc: Rpc, examples: int, *, seed: int | None = None,
             derandomize: bool = False) -> RpcResult:
    """Run `examples` generated requests of `rpc` against the stack; count and judge them.
    Failures are collected, not raised, so that one run reports all it found."""
    result = RpcResult()

    @settings(max_examples=examples, deadline=None, database=None, derandomize=derandomize,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck), print_blob=False)
    @given(rpc.requests(stack.context))
    def one(request: bytes) -> None:
        outcome = stack.call(rpc, request)
        result.calls += 1
        result.codes[outcome.code.name] += 1
        problem = stack.judge(rpc, request, outcome)
        if problem is not None:
            result.failures.append(problem)

    if seed is not None:
        one = hypothesis_seed(seed)(one)
    one()
    return result


def fuzz_rounds(stack: FuzzStack, rpcs: Sequence[Rpc], rounds: int, examples: int, *,
                first_seed: int = 0, until: float | None = None,
                results: dict[str, RpcResult] | None = None) -> dict[str, RpcResult]:
    """`rounds` rounds in each of which every RPC gets `examples` requests, in an order
    shuffled per round, so that deploys, scale calls, invocations, starts, quota changes,
    stops and deletes meet each other. Deterministic for a given `first_seed`; stops early
    after the round in which `until` (monotonic time) passes."""
    results = results if results is not None else {rpc.name: RpcResult() for rpc in rpcs}
    for round_index in range(rounds):
        seed = first_seed + round_index
        order = list(rpcs)
        random.Random(seed).shuffle(order)
        for rpc in order:
            results.setdefault(rpc.name, RpcResult()).merge(fuzz_rpc(stack, rpc, examples, seed=seed))
        if until is not None and time.monotonic() >= until:
            break
    return results

"""`python -m services.node_agent.worker`: the process that runs one instance.

The node agent starts it with the instance's files in the environment:
DILU_INSTANCE_ID, DILU_SPEC (a serialized FunctionSpec), DILU_CONTROL (control page),
DILU_STATS (stats page), and DILU_TRACEPARENT (the W3C trace its start-up span joins); in
secure mode DILU_TLS_CA, DILU_TLS_CERT and DILU_TLS_KEY (its node's worker identity,
`dilu-worker.<node>`) and DILU_NODE_ID: it then serves mutual TLS only, to the scheduler,
the profiler and its own node's agent (services/common/security/policy.py).
When it serves, it prints one line `READY <endpoint>` on stdout
(training workers print `READY` alone); logs go to stderr. SIGTERM drains: no new
requests, queued and running ones finish, then it exits 0. Exit code 2 means the
instance cannot run as specified (the reason is the last log line).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from pathlib import Path

from dilu.v1 import types_pb2, worker_pb2_grpc

from services.common.addresses import advertised_host, join_host_port
from services.common.errors import DiluError
from services.common.grpc_server import GrpcServer, ServerSecurity, wait_for_stop_signal
from services.common.lifetime import die_with_parent
from services.common.logs import (
    DEFAULT_LOG_BACKUPS,
    DEFAULT_LOG_MAX_BYTES,
    RotatingProcessLog,
    setup_logging,
)
from services.common.security.interceptor import Authorizer
from services.common.security.tls import TlsError, TlsFiles
from services.common.tracing import setup_tracing
from services.node_agent.pages import ControlPageReader, StatsWriter
from services.node_agent.shim import shim_enforcing_here
from services.node_agent.worker.engines import inference_engine, training_engine
from services.node_agent.worker.gate import QuotaGate
from services.node_agent.worker.requirements import checked_batch, memory_need_bytes
from services.node_agent.worker.serving import InferenceWorker
from services.node_agent.worker.spans import record_startup

log = logging.getLogger("services.node_agent.worker")

EXIT_BAD_SPEC = 2
# How long a drain may take before the worker gives up on stragglers; the agent enforces
# its own (shorter) drain timeout with SIGKILL.
MAX_DRAIN_S = 60.0
# Unix ns when main() began, the start of the worker's start-up span.
_STARTED_NS = 0


class CannotRun(Exception):
    """The instance cannot run as specified (bad options, out of memory)."""


_log_file: RotatingProcessLog | None = None


def _announce(endpoint: str = "") -> None:
    record_startup(_STARTED_NS, os.environ.get("DILU_TRACEPARENT", ""))
    sys.stdout.write(f"READY {endpoint}".rstrip() + "\n")
    sys.stdout.flush()
    # Nobody reads stdout after READY: later prints (ours, torch's, C libraries') go to the
    # log instead of filling the pipe and blocking the worker.
    os.dup2(2, 1)
    if _log_file is not None:
        _log_file.redirected_fds = (1, 2)  # and follow it when it rotates


def _check_memory(needed_bytes: int, limit_bytes: int) -> None:
    if limit_bytes and needed_bytes > limit_bytes:
        raise CannotRun(f"out of GPU memory: the model needs {needed_bytes >> 20} MiB, "
                        f"the instance's quota is {limit_bytes >> 20} MiB")


def _check_memory_before_building(spec: types_pb2.FunctionSpec, limit_bytes: int) -> None:
    """The memory need computed from the spec alone, before torch is even imported:
    building a model takes host memory in proportion to its size, so a model too large
    for its quota must be refused before it exists (and on every restart)."""
    _check_memory(memory_need_bytes(spec, checked_batch(spec)), limit_bytes)


def _gpu_work(spec: types_pb2.FunctionSpec) -> bool:
    if spec.runtime != types_pb2.RUNTIME_TORCH:
        return False
    from services.node_agent.worker import torch_runtime

    return torch_runtime.pick_device() == "cuda"


def _record_memory(stats: StatsWriter, gate: QuotaGate, memory_bytes: int) -> None:
    # Under the CUDA shim the memory counters are the shim's: it sees every allocation.
    if gate.enforcing:
        stats.set("memory_used_bytes", memory_bytes)
        stats.set("memory_peak_bytes", memory_bytes)


async def run_inference(spec: types_pb2.FunctionSpec, gate: QuotaGate, stats: StatsWriter) -> None:
    engine = inference_engine(spec, gate)
    _check_memory(engine.memory_bytes, gate.control().memory_limit_bytes)
    _record_memory(stats, gate, engine.memory_bytes)
    worker = InferenceWorker(engine, gate, stats, spec.slo.latency_ms, spec.max_batch)
    # The agent passes its settings: where to listen, and the address others dial.
    bind_host = os.environ.get("DILU_WORKER_HOST", "127.0.0.1")
    server = GrpcServer(bind_host, 0, _security())
    server.add(worker_pb2_grpc.add_WorkerServiceServicer_to_server, worker,
               "dilu.v1.WorkerService")
    port = await server.start()
    endpoint = join_host_port(advertised_host(bind_host, os.environ.get(
        "DILU_WORKER_ADVERTISE_HOST", "")), port)
    batcher = asyncio.create_task(worker.run(), name="batcher")
    log.info("%s serving on %s, advertised as %s (max batch %d)", spec.name, server.address,
             endpoint, worker.max_batch)
    _announce(endpoint)
    await wait_for_stop_signal()
    log.info("draining")
    await server.stop(MAX_DRAIN_S)  # refuses new calls; returns when in-flight ones finished
    batcher.cancel()
    await asyncio.gather(batcher, return_exceptions=True)


def _security() -> ServerSecurity | None:
    """Mutual TLS, its callers' identities checked, when the agent gave it TLS files.
    No access store: only services (certificates) may call a worker, never a token."""
    try:
        tls = TlsFiles.from_environment()
    except TlsError as error:
        raise CannotRun(f"secure mode: {error}") from None
    if tls is None:
        return None
    return ServerSecurity(tls, Authorizer(None, local_node=os.environ.get("DILU_NODE_ID", "")),
                          peer_port=None)


async def run_training(spec: types_pb2.FunctionSpec, gate: QuotaGate, stats: StatsWriter) -> None:
    engine = training_engine(spec, gate)
    _check_memory(engine.memory_bytes, gate.control().memory_limit_bytes)
    _record_memory(stats, gate, engine.memory_bytes)
    stop = asyncio.create_task(wait_for_stop_signal())
    _announce()
    log.info("%s training", spec.name)
    while not stop.done():
        await engine.step()  # a step in progress finishes before the worker exits
        stats.add("iterations", 1)


async def run(spec: types_pb2.FunctionSpec, control_path: Path, stats_path: Path) -> None:
    control = ControlPageReader(control_path)
    stats = StatsWriter(stats_path)
    _check_memory_before_building(spec, control.read().memory_limit_bytes)
    # A torch worker on a GPU runs under the CUDA shim, which enforces the share kernel by
    # kernel; the gate must not throttle it a second time. A worker whose work stays on the
    # CPU (sim, or torch without a usable GPU) launches nothing the shim could see.
    under_shim = _gpu_work(spec) and shim_enforcing_here()
    if under_shim:
        log.info("the CUDA shim enforces this worker's quota")
    gate = QuotaGate(control, stats, enforcing=not under_shim)
    if spec.kind == types_pb2.FUNCTION_KIND_TRAINING:
        await run_training(spec, gate, stats)
    else:
        await run_inference(spec, gate, stats)


def main() -> None:
    global _STARTED_NS, _log_file
    _STARTED_NS = time.time_ns()
    instance_id = os.environ.get("DILU_INSTANCE_ID", "worker")
    # Stdout carries the READY line to the agent: only stderr follows the log's rotation.
    _log_file = setup_logging(
        f"worker {instance_id}", os.environ.get("DILU_LOG_LEVEL", "info"),
        os.environ.get("DILU_LOG_FILE") or None,
        int(os.environ.get("DILU_LOG_MAX_BYTES", DEFAULT_LOG_MAX_BYTES)),
        int(os.environ.get("DILU_LOG_BACKUPS", DEFAULT_LOG_BACKUPS)), redirected_fds=(2,))
    # Unsupervised, a worker would keep GPU memory and a stale share while a restarted
    # agent reuses its GPU: it dies with the agent that started it.
    die_with_parent(pid_env="DILU_AGENT_PID", sig=signal.SIGKILL)
    try:
        spec = types_pb2.FunctionSpec.FromString(Path(os.environ["DILU_SPEC"]).read_bytes())
        control_path = Path(os.environ["DILU_CONTROL"])
        stats_path = Path(os.environ["DILU_STATS"])
    except KeyError as missing:
        log.error("missing environment variable %s (the node agent sets it)", missing)
        sys.exit(EXIT_BAD_SPEC)
    setup_tracing("dilu-worker", **{"dilu.instance.id": instance_id, "dilu.function": spec.name})
    try:
        asyncio.run(run(spec, control_path, stats_path))
    except (CannotRun, DiluError) as error:
        log.error("cannot run %s: %s", spec.name, error)
        sys.exit(EXIT_BAD_SPEC)


if __name__ == "__main__":
    main()

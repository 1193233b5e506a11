"""`python -m services.node_agent`: the node agent of one GPU node."""

from __future__ import annotations

import os

# Set before gRPC loads: the agent forks its workers (with per-worker uids subprocess cannot
# use vfork) and each child execs at once, so gRPC's fork handlers have nothing to do; with
# another thread inside gRPC at that moment they abort the child (SIGABRT, "Check failure").
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import argparse
import asyncio
import logging
import re
import socket
import tempfile
from pathlib import Path

from dilu.v1 import node_agent_pb2_grpc, profiler_pb2, types_pb2

from services.common import limits, subjects
from services.common.addresses import WILDCARD_HOSTS, advertised_host, join_host_port, nats_host
from services.common.bounds import AGENT_DEFAULT, PlacementBounds
from services.common.bus import Bus
from services.common.config import ServerConfig, server_config, service_parser, setup_service_logging
from services.common.grpc_server import GrpcServer, serve_until_stopped, start_or_exit
from services.common.lifetime import die_with_parent
from services.common.metrics import metrics_server
from services.common.security.identity import worker_identity
from services.common.security.serving import server_security
from services.common.security.tls import TlsError, TlsFiles
from services.common.tracing import setup_tracing
from services.node_agent.agent import AgentSettings, NodeAgent
from services.node_agent.gpus import BACKENDS, SIM_GPU_TYPES, GpuBackendUnavailable, open_backend
from services.node_agent.isolation import IsolationError, WorkerIds, missing_privileges
from services.node_agent.metrics import NodeAgentCollector
from services.node_agent.service import NodeAgentServicer
from services.node_agent.shim import ShimBuildError, build_shim

log = logging.getLogger("services.node_agent")


def default_node_id() -> str:
    # KV keys and subject tokens allow only these characters.
    return re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname()) or "node"


def default_runtime_dir() -> Path:
    """Pages belong in shared memory: /dev/shm when the host has it."""
    base = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())
    return base / f"dilu-{os.getuid()}"


def main() -> None:
    parser = service_parser("node-agent", "Dilu node agent: runs instances on this node's GPUs.")
    parser.add("--node-id", default=default_node_id(), help="this node's id")
    parser.add("--advertise-host", default="",
               help="host name or IP the scheduler and clients dial for this node's agent and "
                    "workers (default: --host, or when that is a wildcard such as 0.0.0.0, "
                    "this machine's address on the route to NATS)")
    parser.add("--advertise-address", default="",
               help="full host:port the scheduler dials for the agent, overriding "
                    "--advertise-host (e.g. behind port forwarding)")
    parser.add("--advertise-peer-address", default="",
               help="secure mode: full host:port services dial for the agent's mutual-TLS "
                    "listener (default: the advertised host and --peer-port)")
    parser.add("--worker-tls-cert", default="",
               help="secure mode: the certificate its workers serve with, identity "
                    "dilu-worker.<node> (default: dilu-worker.<node>.crt beside --tls-cert)")
    parser.add("--worker-tls-key", default="",
               help="secure mode: its key (default: dilu-worker.<node>.key beside --tls-cert)")
    parser.add("--worker-uids", default="",
               help="run each worker as its own unprivileged uid from FIRST-LAST (FIRST is "
                    "the workers' shared group), so that no worker can open another "
                    "instance's pages; needs root or CAP_SETUID, CAP_SETGID, CAP_CHOWN, "
                    "CAP_KILL and CAP_DAC_READ_SEARCH (empty: workers run as the agent)")
    parser.add("--worker-python", default="",
               help="the Python interpreter workers run with (default: the agent's own); with "
                    "--worker-uids, one the workers' uids may execute")
    parser.add("--worker-host", default="",
               help="address workers listen on (default: --host)")
    parser.add("--worker-advertise-host", default="",
               help="host others dial for workers (default: --advertise-host if set, else "
                    "--worker-host unless it is a wildcard, else as for --advertise-host)")
    parser.add("--worker-log-max-bytes", default=1024 * 1024, type=int,
               help="rotate each worker's log (in the runtime dir) at this size")
    parser.add("--worker-log-backups", default=2, type=int,
               help="rotated files kept per worker log")
    parser.add("--gpu-backend", default="auto",
               help="GPU backend: auto (nvml when an NVIDIA driver and GPU are found, else sim), "
                    "nvml or sim")
    parser.add("--sim-gpus", default=2, type=int, help="number of simulated GPUs")
    parser.add("--sim-gpu-type", default="A100-40GB",
               help=f"simulated GPU type: {', '.join(SIM_GPU_TYPES)}")
    parser.add("--heartbeat-interval-s", default=2.0, type=float, help="heartbeat period")
    parser.add("--runtime-dir", default=str(default_runtime_dir()),
               help="where control/stats pages and worker logs live (a per-node subdirectory)")
    parser.add("--arbiter-period-ms", default=10.0, type=float,
               help="period of the per-GPU arbiter that sets effective shares")
    parser.add("--telemetry-interval-s", default=0.5, type=float, help="GPU telemetry period")
    parser.add("--qos-window-s", default=1.0, type=float, help="QoS report window")
    parser.add("--drain-timeout-s", default=10.0, type=float,
               help="default time a stopping worker may take to finish in-flight requests")
    parser.add("--max-requested", default=AGENT_DEFAULT.max_requested, type=float,
               help="placement bound: the SM requests on one GPU add up to at most this, "
                    "in (0, 1] (announced to the scheduler; StartInstance and SetQuota "
                    "beyond it are RESOURCE_EXHAUSTED)")
    parser.add("--max-limited", default=AGENT_DEFAULT.max_limited, type=float,
               help="placement bound: the SM limits on one GPU add up to at most this, "
                    "at least --max-requested ('inf': unbounded)")
    parser.add("--cuda-shim", default="auto",
               help="preload the CUDA shim into torch workers: auto (when the GPUs are real), "
                    "on, or off")
    args = parser.parse_args()
    if args.cuda_shim not in CUDA_SHIM_MODES:
        parser.error(f"--cuda-shim: {args.cuda_shim!r} is not one of {', '.join(CUDA_SHIM_MODES)}")
    if args.gpu_backend not in BACKENDS:
        parser.error(f"--gpu-backend: {args.gpu_backend!r} is not one of {', '.join(BACKENDS)}")
    for flag in ("arbiter_period_ms", "telemetry_interval_s", "qos_window_s", "drain_timeout_s",
                 "heartbeat_interval_s"):
        if getattr(args, flag) <= 0:
            parser.error(f"--{flag.replace('_', '-')}: must be > 0, got {getattr(args, flag)}")
    try:
        args.bounds = PlacementBounds(args.max_requested, args.max_limited)
    except ValueError as error:
        parser.error(str(error).replace("max_requested", "--max-requested")
                     .replace("max_limited", "--max-limited"))
    if not limits.SAFE_ID_PATTERN.match(args.node_id):
        parser.error(f"--node-id: {args.node_id!r} must be 1-{limits.ID_MAX} letters, digits, "
                     "'_' or '-', starting with a letter or digit")
    try:
        args.worker_ids = WorkerIds.parse(args.worker_uids)
    except ValueError as error:
        parser.error(f"--worker-uids: {error}")
    if args.worker_ids is not None and missing_privileges():
        parser.error(f"--worker-uids needs root or the capabilities "
                     f"{', '.join(missing_privileges())} to run workers as other users")
    if not 1 <= args.sim_gpus <= MAX_SIM_GPUS:
        parser.error(f"--sim-gpus: must be in [1, {MAX_SIM_GPUS}], got {args.sim_gpus}")
    if len(args.advertise_address) > limits.ADDRESS_MAX:
        parser.error(f"--advertise-address: longer than {limits.ADDRESS_MAX} characters")
    for flag in ("advertise_host", "worker_advertise_host"):
        if getattr(args, flag) in WILDCARD_HOSTS - {""}:
            parser.error(f"--{flag.replace('_', '-')}: {getattr(args, flag)!r} is not an address "
                         "anyone can dial; give this node's name or IP")
    config = server_config("node-agent", args, parser)
    args.worker_tls = None
    if config.tls is not None:
        args.worker_tls = worker_tls(config.tls, args.node_id, args.worker_tls_cert,
                                     args.worker_tls_key, parser)
    die_with_parent()
    setup_service_logging(config)
    setup_tracing("dilu-node-agent", **{"dilu.node.id": args.node_id})
    asyncio.run(run(config, args))


def worker_tls(agent: TlsFiles, node_id: str, cert: str, key: str,
               parser: argparse.ArgumentParser) -> TlsFiles:
    """The files the node's workers serve with: given, or the scheme's names beside the
    agent's own certificate."""
    default = agent.cert.parent / worker_identity(node_id)
    try:
        files = TlsFiles.from_paths(str(agent.ca), cert or f"{default}.crt", key or f"{default}.key")
    except TlsError as error:
        parser.error(f"--worker-tls-cert/--worker-tls-key: {error} (issue it with "
                     f"`dilu certs issue {worker_identity(node_id)}`)")
    assert files is not None
    return files


CUDA_SHIM_MODES = ("auto", "on", "off")
# Beyond any machine built; bounds what the node announces.
MAX_SIM_GPUS = 16


def cuda_shim(mode: str, gpu_backend: str) -> Path | None:
    """The shim to preload into torch workers, built now (a second or so) so that a broken
    build shows at start-up rather than at the first deploy. `auto` wants it only on real
    GPUs, and runs without it (the Python gate enforces instead) if it cannot be built."""
    if mode == "off" or (mode == "auto" and gpu_backend != "nvml"):
        return None
    try:
        path = build_shim()
    except ShimBuildError as error:
        if mode == "on":
            log.error("--cuda-shim on: %s", error)
            raise SystemExit(2) from error
        log.warning("no CUDA shim (%s); torch workers are throttled by the Python gate", error)
        return None
    log.info("CUDA shim %s is preloaded into torch workers", path)
    return path


async def run(config: ServerConfig, args: argparse.Namespace) -> None:
    try:
        gpus = open_backend(args.gpu_backend, args.node_id, args.sim_gpus, args.sim_gpu_type)
    except (GpuBackendUnavailable, ValueError) as error:
        log.error("--gpu-backend %s: %s", args.gpu_backend, error)
        raise SystemExit(2) from error
    shim = cuda_shim(args.cuda_shim, gpus.name)  # before connecting: `on` may refuse to start
    bus = await Bus.connect(config.nats_url, f"dilu-node-agent-{args.node_id}", tls=config.tls)
    nodes_kv = await bus.kv(subjects.NODES_BUCKET, types_pb2.Node, ttl_s=3600)
    profiles_kv = await bus.kv(subjects.PROFILES_BUCKET, profiler_pb2.Profile)
    advertise_host = advertised_host(config.host, args.advertise_host, nats_host(config.nats_url))
    worker_host = args.worker_host or config.host
    # Workers are announced as configured, else as the node is, else (listening on one
    # address of their own) at that address.
    worker_advertise_host = args.worker_advertise_host or args.advertise_host or advertised_host(
        worker_host, "", nats_host(config.nats_url))
    settings = AgentSettings(
        runtime_dir=Path(args.runtime_dir) / args.node_id,
        heartbeat_interval_s=args.heartbeat_interval_s,
        arbiter_period_s=args.arbiter_period_ms / 1000,
        telemetry_interval_s=args.telemetry_interval_s, qos_window_s=args.qos_window_s,
        drain_timeout_s=args.drain_timeout_s, cuda_shim=shim, bounds=args.bounds,
        worker_host=worker_host,
        worker_advertise_host=worker_advertise_host,
        worker_log_max_bytes=args.worker_log_max_bytes,
        worker_log_backups=args.worker_log_backups,
        worker_tls=args.worker_tls, agent_tls=config.tls, worker_ids=args.worker_ids,
        worker_python=args.worker_python)
    log.info("advertising %s for the agent and %s for its workers (listening on %s)",
             args.advertise_address or advertise_host, settings.worker_advertise_host,
             settings.worker_host)
    try:
        agent = NodeAgent(args.node_id, gpus, bus, nodes_kv, settings, profiles_kv,
                          on_qos=lambda report: collector.record_qos(report))
    except IsolationError as error:
        log.error("%s", error)
        raise SystemExit(2) from None
    collector = NodeAgentCollector(agent.status, agent.stats_readings)
    security, close_access = await server_security(config, bus)
    server = GrpcServer(config.host, config.port, security)
    server.add(node_agent_pb2_grpc.add_NodeAgentServiceServicer_to_server,
               NodeAgentServicer(agent), "dilu.v1.NodeAgentService")
    await start_or_exit(server)
    # Heartbeats announce the address, so the agent starts once the port is bound.
    agent.address = args.advertise_address or join_host_port(advertise_host, server.port)
    if server.peer_port:
        agent.peer_address = args.advertise_peer_address or join_host_port(advertise_host,
                                                                           server.peer_port)
    await agent.start()
    log.info("node %s up with %d %s GPUs (bounds per GPU: requests ≤ %g, limits ≤ %g)",
             args.node_id, len(gpus.devices()), gpus.name, args.bounds.max_requested,
             args.bounds.max_limited)
    metrics = metrics_server("node-agent", config.host, config.metrics_port, collector,
                             tls=config.tls)
    await serve_until_stopped(server, config.ready_file, config.grace_s, agent.close,
                              close_access, bus.close, metrics=metrics)


if __name__ == "__main__":
    main()

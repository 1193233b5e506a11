"""`python -m services.profiler`: the profiler service (the RPCs and the profiling runs)."""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import replace

from dilu.v1 import profiler_pb2, profiler_pb2_grpc

from services.common import subjects
from services.common.bus import Bus
from services.common.clock import SYSTEM_CLOCK
from services.common.config import (
    DEFAULT_PORTS,
    ServerConfig,
    server_config,
    service_parser,
    setup_service_logging,
)
from services.common.grpc_server import GrpcServer, serve_until_stopped
from services.common.lifetime import die_with_parent
from services.common.metrics import metrics_server
from services.common.security.serving import server_security
from services.common.tracing import setup_tracing
from services.profiler.live.protocol import DEFAULT_PROTOCOL
from services.profiler.metrics import ProfilingMetrics
from services.profiler.profiler import Profiler, ProfilerSettings
from services.profiler.search import DEFAULT_GRID, DEFAULT_TRAINING_SHARES, Grid
from services.profiler.service import ProfilerServicer
from services.profiler.store import ProfileStore


def main() -> None:
    parser = service_parser("profiler", "Dilu profiler: multi-factor profiling.")
    parser.add("--scheduler", default=f"127.0.0.1:{DEFAULT_PORTS['scheduler']}",
               help="the scheduler's address (hidden instances, load, nodes)")
    parser.add("--max-queued", default=16, type=int,
               help="profiles queued or running at most; more are RESOURCE_EXHAUSTED")
    parser.add("--shares", default=",".join(f"{s:g}" for s in DEFAULT_GRID.shares),
               help="the SM shares an inference profile may measure, increasing")
    parser.add("--batches", default=",".join(str(b) for b in DEFAULT_GRID.batches),
               help="the maximum batches an inference profile may measure, increasing")
    parser.add("--training-shares", default=",".join(f"{s:g}" for s in DEFAULT_TRAINING_SHARES),
               help="the shares a training profile bisects, increasing, ending at 1")
    parser.add("--trial-requests", default=DEFAULT_PROTOCOL.requests, type=int,
               help="counted requests per capacity trial")
    parser.add("--warmup-requests", default=DEFAULT_PROTOCOL.warmup_requests, type=int,
               help="requests before a trial counts")
    args = parser.parse_args()
    try:
        settings = settings_from(args)
    except ValueError as error:
        parser.error(str(error))
    config = server_config("profiler", args, parser)
    die_with_parent()
    setup_service_logging(config)
    setup_tracing("dilu-profiler")
    asyncio.run(run(config, args.scheduler, args.max_queued, settings))


def settings_from(args: argparse.Namespace) -> ProfilerSettings:
    """The profiler's grid and protocol from its flags (ValueError naming a bad one)."""
    if args.max_queued < 1:
        raise ValueError("--max-queued must be at least 1")
    try:
        shares = tuple(float(v) for v in args.shares.split(","))
        batches = tuple(int(v) for v in args.batches.split(","))
        training = tuple(float(v) for v in args.training_shares.split(","))
    except ValueError:
        raise ValueError("--shares, --batches and --training-shares are comma-separated "
                         "numbers") from None
    grid = Grid(shares, batches)  # ValueError when out of range or not increasing
    increasing = list(training) == sorted(set(training))
    if training[-1] != 1.0 or any(not 0 < s <= 1 for s in training) or not increasing:
        raise ValueError("--training-shares must increase within (0, 1] and end at 1")
    protocol = replace(DEFAULT_PROTOCOL, requests=args.trial_requests,
                       warmup_requests=args.warmup_requests)
    return ProfilerSettings(grid=grid, training_shares=training, protocol=protocol)


async def run(config: ServerConfig, scheduler_address: str, max_queued: int,
              settings: ProfilerSettings) -> None:
    bus = await Bus.connect(config.nats_url, "dilu-profiler", tls=config.tls)
    profiles = await bus.kv(subjects.PROFILES_BUCKET, profiler_pb2.Profile)
    store = ProfileStore(profiles, SYSTEM_CLOCK.time, max_open=max_queued)
    # Secure mode: `scheduler_address` is the scheduler's peer port, dialled with the
    # profiler's certificate, as are the agents' peer ports.
    profiler = Profiler(store, scheduler_address, ProfilingMetrics(), settings, tls=config.tls)
    # No rule of the profiler's waits for a function's namespace (`policy.py`): a
    # ProfileFunction's spec names its own, a GetProfile names a key no namespace owns.
    security, close_access = await server_security(config, bus)
    server = GrpcServer(config.host, config.port, security)
    server.add(profiler_pb2_grpc.add_ProfilerServiceServicer_to_server,
               ProfilerServicer(store, profiler.scheduler), "dilu.v1.ProfilerService")
    metrics = metrics_server("profiler", config.host, config.metrics_port, tls=config.tls)
    await profiler.start()
    await serve_until_stopped(server, config.ready_file, config.grace_s, profiler.close,
                              close_access, bus.close,
                              metrics=metrics)


if __name__ == "__main__":
    main()

"""`python -m services.profiler`: the profiler service (the RPCs and the profiling runs)."""

from __future__ import annotations

import asyncio

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
from services.common.tracing import setup_tracing
from services.profiler.metrics import ProfilingMetrics
from services.profiler.profiler import Profiler, ProfilerSettings
from services.profiler.service import ProfilerServicer
from services.profiler.store import ProfileStore


def main() -> None:
    parser = service_parser("profiler", "Dilu profiler: multi-factor profiling.")
    parser.add("--scheduler", default=f"127.0.0.1:{DEFAULT_PORTS['scheduler']}",
               help="the scheduler's address (hidden instances, load, nodes)")
    parser.add("--max-queued", default=16, type=int,
               help="profiles queued or running at most; more are RESOURCE_EXHAUSTED")
    args = parser.parse_args()
    if args.max_queued < 1:
        parser.error("--max-queued must be at least 1")
    config = server_config("profiler", args)
    die_with_parent()
    setup_service_logging(config)
    setup_tracing("dilu-profiler")
    asyncio.run(run(config, args.scheduler, args.max_queued))


async def run(config: ServerConfig, scheduler_address: str, max_queued: int) -> None:
    bus = await Bus.connect(config.nats_url, "dilu-profiler")
    profiles = await bus.kv(subjects.PROFILES_BUCKET, profiler_pb2.Profile)
    store = ProfileStore(profiles, SYSTEM_CLOCK.time, max_open=max_queued)
    profiler = Profiler(store, scheduler_address, ProfilingMetrics(), ProfilerSettings())
    server = GrpcServer(config.host, config.port)
    server.add(profiler_pb2_grpc.add_ProfilerServiceServicer_to_server,
               ProfilerServicer(store, profiler.scheduler), "dilu.v1.ProfilerService")
    metrics = metrics_server("profiler", config.host, config.metrics_port)
    await profiler.start()
    await serve_until_stopped(server, config.ready_file, config.grace_s, profiler.close, bus.close,
                              metrics=metrics)


if __name__ == "__main__":
    main()

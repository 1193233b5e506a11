"""`python -m services.profiler`: the profiler service."""

from __future__ import annotations

import asyncio

from dilu.v1 import profiler_pb2, profiler_pb2_grpc

from services.common import subjects
from services.common.bus import Bus
from services.common.config import ServerConfig, server_config, service_parser, setup_service_logging
from services.common.grpc_server import GrpcServer, serve_until_stopped
from services.common.lifetime import die_with_parent
from services.common.metrics import metrics_server
from services.common.tracing import setup_tracing
from services.profiler.metrics import ProfilingMetrics
from services.profiler.service import ProfilerServicer


def main() -> None:
    args = service_parser("profiler", "Dilu profiler: multi-factor profiling.").parse_args()
    config = server_config("profiler", args)
    die_with_parent()
    setup_service_logging(config)
    setup_tracing("dilu-profiler")
    asyncio.run(run(config))


async def run(config: ServerConfig) -> None:
    bus = await Bus.connect(config.nats_url, "dilu-profiler")
    profiles = await bus.kv(subjects.PROFILES_BUCKET, profiler_pb2.Profile)
    server = GrpcServer(config.host, config.port)
    server.add(profiler_pb2_grpc.add_ProfilerServiceServicer_to_server,
               ProfilerServicer(profiles, ProfilingMetrics()), "dilu.v1.ProfilerService")
    metrics = metrics_server("profiler", config.host, config.metrics_port)
    await serve_until_stopped(server, config.ready_file, config.grace_s, bus.close,
                              metrics=metrics)


if __name__ == "__main__":
    main()

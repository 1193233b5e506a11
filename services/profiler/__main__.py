"""`python -m services.profiler`: the profiler service."""

from __future__ import annotations

import asyncio

from dilu.v1 import profiler_pb2, profiler_pb2_grpc, types_pb2

from services.common import subjects
from services.common.bus import Bus
from services.common.config import ServerConfig, server_config, service_parser, setup_service_logging
from services.common.grpc_server import GrpcServer, serve_until_stopped
from services.common.lifetime import die_with_parent
from services.common.metrics import metrics_server
from services.common.security.serving import server_security
from services.common.tracing import setup_tracing
from services.profiler.metrics import ProfilingMetrics
from services.profiler.service import ProfilerServicer


def main() -> None:
    parser = service_parser("profiler", "Dilu profiler: multi-factor profiling.")
    config = server_config("profiler", parser.parse_args(), parser)
    die_with_parent()
    setup_service_logging(config)
    setup_tracing("dilu-profiler")
    asyncio.run(run(config))


async def run(config: ServerConfig) -> None:
    bus = await Bus.connect(config.nats_url, "dilu-profiler", tls=config.tls)
    profiles = await bus.kv(subjects.PROFILES_BUCKET, profiler_pb2.Profile)
    namespace_of = None
    if config.tls is not None:
        # A deployer may read the profiles of its own namespace's functions only.
        functions = await bus.kv(subjects.FUNCTIONS_BUCKET, types_pb2.Function)

        async def namespace_of(name: str) -> str | None:
            function = await functions.get(name)
            return function.spec.namespace if function is not None else None

    security, close_access = await server_security(config, bus, namespace_of=namespace_of)
    server = GrpcServer(config.host, config.port, security)
    server.add(profiler_pb2_grpc.add_ProfilerServiceServicer_to_server,
               ProfilerServicer(profiles, ProfilingMetrics()), "dilu.v1.ProfilerService")
    metrics = metrics_server("profiler", config.host, config.metrics_port, tls=config.tls)
    await serve_until_stopped(server, config.ready_file, config.grace_s, close_access, bus.close,
                              metrics=metrics)


if __name__ == "__main__":
    main()

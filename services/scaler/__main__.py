"""`python -m services.scaler`: the scaler service."""

from __future__ import annotations

import asyncio

from dilu.events.v1 import events_pb2
from dilu.v1 import scaler_pb2_grpc

from services.common import subjects
from services.common.bus import Bus
from services.common.clock import SYSTEM_CLOCK
from services.common.config import ServerConfig, server_config, service_parser, setup_service_logging
from services.common.grpc_server import GrpcServer, serve_until_stopped
from services.common.lifetime import die_with_parent
from services.common.metrics import metrics_server
from services.common.tracing import setup_tracing
from services.scaler.metrics import ReplayCursor, ScalingMetrics
from services.scaler.observer import QosObserver
from services.scaler.service import ScalerServicer


def main() -> None:
    args = service_parser("scaler", "Dilu scaler: adaptive 2D co-scaling.").parse_args()
    config = server_config("scaler", args)
    die_with_parent()
    setup_service_logging(config)
    setup_tracing("dilu-scaler")
    asyncio.run(run(config))


async def run(config: ServerConfig) -> None:
    bus = await Bus.connect(config.nats_url, "dilu-scaler")
    observer = QosObserver()
    scaling = ScalingMetrics()

    async def on_qos(_subject: str, report: events_pb2.QosReport) -> None:
        observer.on_qos(report, SYSTEM_CLOCK.time())
        scaling.record_qos(report)

    await bus.subscribe(subjects.QOS_ALL, events_pb2.QosReport, on_qos)
    await bus.ensure_stream(subjects.SCALING_STREAM, subjects.SCALING_EVENTS_ALL,
                            subjects.SCALING_STREAM_MAX_MSGS)
    history = ReplayCursor((await bus.js.stream_info(subjects.SCALING_STREAM)).state.messages)

    async def on_decision(_subject: str, decision: events_pb2.ScalingDecision) -> None:
        observer.on_decision(decision)
        scaling.record(decision, replayed=history.next_is_replayed())

    await bus.replay(subjects.SCALING_EVENTS_ALL, events_pb2.ScalingDecision, on_decision)
    server = GrpcServer(config.host, config.port)
    server.add(scaler_pb2_grpc.add_ScalerServiceServicer_to_server,
               ScalerServicer(observer), "dilu.v1.ScalerService")
    metrics = metrics_server("scaler", config.host, config.metrics_port)
    await serve_until_stopped(server, config.ready_file, config.grace_s, bus.close,
                              metrics=metrics)


if __name__ == "__main__":
    main()

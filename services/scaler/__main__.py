"""`python -m services.scaler`: the scaler service (observes QoS and scaling decisions; with
a scheduler to act through and mode `coscale`, runs the co-scaling policy: acting.py)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

from dilu.events.v1 import events_pb2
from dilu.v1 import scaler_pb2_grpc

from services.common import subjects
from services.common.bus import Bus
from services.common.channels import ChannelPool
from services.common.clock import SYSTEM_CLOCK
from services.common.config import ServerConfig, server_config, service_parser, setup_service_logging
from services.common.errors import Unavailable
from services.common.grpc_server import GrpcServer, serve_until_stopped
from services.common.lifetime import die_with_parent
from services.common.metrics import metrics_server
from services.common.security.serving import server_security
from services.common.tracing import setup_tracing
from services.scaler.acting import COSCALE, STATIC, ActingScaler
from services.scaler.lease import LeaseKeeper
from services.scaler.metrics import ReplayCursor, ScalingMetrics
from services.scaler.observer import QosObserver
from services.scaler.service import ScalerServicer

log = logging.getLogger(__name__)


def main() -> None:
    parser = service_parser("scaler", "Dilu scaler: adaptive 2D co-scaling.")
    parser.add("--scheduler", default="",
               help="the scheduler's gRPC address the scaler acts through (ScaleOut/ScaleIn, "
                    "and its records); in secure mode its peer (mutual-TLS) address; empty: "
                    "observe only")
    parser.add("--policy", default=COSCALE, help="coscale or static (SetPolicy changes it)")
    args = parser.parse_args()
    if args.policy not in (COSCALE, STATIC):
        parser.error(f"--policy must be {COSCALE} or {STATIC}, got {args.policy!r}")
    config = server_config("scaler", args, parser)
    die_with_parent()
    setup_service_logging(config)
    setup_tracing("dilu-scaler")
    asyncio.run(run(config, args.scheduler, args.policy))


async def run(config: ServerConfig, scheduler_address: str, mode: str) -> None:
    bus = await Bus.connect(config.nats_url, "dilu-scaler", tls=config.tls)
    observer = QosObserver()
    scaling = ScalingMetrics()
    # Secure mode: mutual TLS with the scaler's certificate to the scheduler's and the
    # agents' peer ports (--scheduler names the scheduler's peer address then).
    channels = ChannelPool(config.tls)
    scaler = ActingScaler(channels, scheduler_address, mode=mode, holder=False)

    async def on_qos(_subject: str, report: events_pb2.QosReport) -> None:
        now = SYSTEM_CLOCK.time()
        observer.on_qos(report, now)
        scaler.bus.on_qos(report, now)
        scaler.on_qos_trace(report.function)
        scaling.record_qos(report)

    async def on_telemetry(_subject: str, sample: events_pb2.GpuTelemetry) -> None:
        scaler.bus.on_telemetry(sample)

    await bus.subscribe(subjects.QOS_ALL, events_pb2.QosReport, on_qos)
    await bus.subscribe(subjects.TELEMETRY_ALL, events_pb2.GpuTelemetry, on_telemetry)
    await bus.ensure_stream(subjects.SCALING_STREAM, subjects.SCALING_EVENTS_ALL,
                            subjects.SCALING_STREAM_MAX_MSGS)
    history = ReplayCursor((await bus.js.stream_info(subjects.SCALING_STREAM)).state.messages)

    async def on_decision(_subject: str, decision: events_pb2.ScalingDecision) -> None:
        observer.on_decision(decision)
        scaling.record(decision, replayed=history.next_is_replayed())

    await bus.replay(subjects.SCALING_EVENTS_ALL, events_pb2.ScalingDecision, on_decision,
                     stream=subjects.SCALING_STREAM)
    security, close_access = await server_security(config, bus)
    lease = LeaseKeeper(bus, f"{socket.gethostname()}:{os.getpid()}", scaler.set_holder)
    tasks = [asyncio.create_task(lease.run(), name="scaler-lease"),
             asyncio.create_task(_decide_forever(scaler), name="scaler-decisions")]
    server = GrpcServer(config.host, config.port, security)
    server.add(scaler_pb2_grpc.add_ScalerServiceServicer_to_server,
               ScalerServicer(observer, scaler), "dilu.v1.ScalerService")
    metrics = metrics_server("scaler", config.host, config.metrics_port, tls=config.tls)

    async def stop_acting() -> None:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await lease.release()
        await channels.close()

    await serve_until_stopped(server, config.ready_file, config.grace_s, stop_acting, close_access,
                              bus.close, metrics=metrics)


async def _decide_forever(scaler: ActingScaler) -> None:
    """One decision per `interval_s` (read afresh each time: SetPolicy may change it); a
    decision that overruns its slot is followed by the next one interval after it ends."""
    loop = asyncio.get_running_loop()
    due = loop.time() + scaler.settings.interval_s
    while True:
        await asyncio.sleep(max(0.0, due - loop.time()))
        try:
            await scaler.tick()
        except Unavailable as error:
            log.warning("decision deferred: %s", error)
        except Exception:
            log.exception("decision failed")
        due = max(due + scaler.settings.interval_s, loop.time() + 0.05)


if __name__ == "__main__":
    main()

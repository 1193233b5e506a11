"""`python -m services.scheduler`: the scheduler service."""

from __future__ import annotations

import argparse
import asyncio
import logging

from dilu.v1 import profiler_pb2, scheduler_pb2_grpc, types_pb2

from services.common import subjects
from services.common.bounds import REQUESTS_ONLY
from services.common.bus import Bus
from services.common.config import ServerConfig, server_config, service_parser, setup_service_logging
from services.common.grpc_server import GrpcServer, bind_or_exit, serve_until_stopped
from services.common.lifetime import die_with_parent
from services.common.metrics import metrics_server
from services.common.security.serving import server_security
from services.common.tracing import setup_tracing
from services.scheduler.activator import HoldSettings
from services.scheduler.core import SchedulerSettings
from services.scheduler.metrics import SchedulerCollector
from services.scheduler.placement import (
    DEFAULT_POLICY,
    POLICIES,
    Placement,
    make_placement,
)
from services.scheduler.scheduler import Scheduler
from services.scheduler.service import SchedulerServicer
from services.scheduler.store import Store

log = logging.getLogger("services.scheduler")


def parse(argv: list[str] | None = None) -> tuple[ServerConfig, SchedulerSettings, Placement,
                                                  HoldSettings]:
    parser = service_parser("scheduler", "Dilu scheduler: deploys, places and routes.")
    parser.add("--placement", default=DEFAULT_POLICY,
               help=f"placement policy: {', '.join(POLICIES)} (all but the default are baselines)")
    # The placement bounds moved to the node agents, which admit against them and announce
    # them; the scheduler places within what each node announces. The old flags are
    # refused with a pointer (DILU_MAX_* in a shared env file configure the agents).
    parser.add_argument("--max-requested", "--max-limited", dest="moved_bound",
                        help=argparse.SUPPRESS)
    parser.add("--node-timeout-s", default=10.0, type=float,
               help="a node without a heartbeat for this long is lost")
    parser.add("--reconcile-interval-s", default=1.0, type=float, help="reconcile period")
    parser.add("--agent-grace-s", default=2.0, type=float,
               help="minimum age of a placement before agent heartbeats that omit it fail it")
    parser.add("--drain-timeout-s", default=10.0, type=float,
               help="time a stopping instance may take to finish its in-flight requests")
    parser.add("--backoff-initial-s", default=1.0, type=float,
               help="after a function's first failure its next start waits this long; "
                    "each further failure in a row doubles the wait")
    parser.add("--backoff-max-s", default=30.0, type=float,
               help="the longest wait between starts of a failing function (and the wait "
                    "of a degraded one)")
    parser.add("--hold-max-requests", default=100, type=int,
               help="Invoke requests held per function while it has no ready instance "
                    "(scale from zero); one more is RESOURCE_EXHAUSTED")
    parser.add("--hold-max-wait-s", default=30.0, type=float,
               help="how long a held request waits for an instance before UNAVAILABLE")
    args = parser.parse_args(argv)
    if args.hold_max_requests < 1 or args.hold_max_wait_s <= 0:
        parser.error("--hold-max-requests must be at least 1 and --hold-max-wait-s positive")
    if args.moved_bound is not None:
        parser.error("--max-requested and --max-limited are node agent settings now: each "
                     "agent admits against its own bounds and announces them, and the "
                     "scheduler places within what each node announces")
    try:
        # The policy's own rule only (e.g. infless-l's limits ≤ 1); the bounds of each
        # node are the rest, and the stricter holds.
        placement = make_placement(args.placement, REQUESTS_ONLY)
    except ValueError as e:
        parser.error(str(e))
    try:
        settings = SchedulerSettings(node_timeout_s=args.node_timeout_s,
                                     reconcile_interval_s=args.reconcile_interval_s,
                                     agent_grace_s=args.agent_grace_s,
                                     drain_timeout_s=args.drain_timeout_s,
                                     backoff_initial_s=args.backoff_initial_s,
                                     backoff_max_s=args.backoff_max_s)
    except ValueError as e:
        parser.error(str(e).replace("backoff_initial_s", "--backoff-initial-s")
                     .replace("backoff_max_s", "--backoff-max-s"))
    hold = HoldSettings(max_held=args.hold_max_requests, max_wait_s=args.hold_max_wait_s)
    return server_config("scheduler", args, parser), settings, placement, hold


def main() -> None:
    config, settings, placement, hold = parse()
    die_with_parent()
    setup_service_logging(config)
    setup_tracing("dilu-scheduler")
    log.info("placement policy %s (its own rule: %s; each node's bounds apply too)",
             placement.name, placement.bounds)
    asyncio.run(run(config, settings, placement, hold))


async def run(config: ServerConfig, settings: SchedulerSettings, placement: Placement,
              hold: HoldSettings | None = None) -> None:
    bus = await Bus.connect(config.nats_url, "dilu-scheduler", tls=config.tls)
    store = Store(await bus.kv(subjects.FUNCTIONS_BUCKET, types_pb2.Function),
                  await bus.kv(subjects.INSTANCES_BUCKET, types_pb2.Instance))
    # The TTL garbage-collects nodes gone for good; liveness itself is judged by node_timeout_s.
    nodes_kv = await bus.kv(subjects.NODES_BUCKET, types_pb2.Node, ttl_s=3600)
    # Created here too so decisions made before the scaler first starts are kept.
    await bus.ensure_stream(subjects.SCALING_STREAM, subjects.SCALING_EVENTS_ALL,
                            subjects.SCALING_STREAM_MAX_MSGS)
    # The profiler's bucket: Deploys left to their profile ask for it there.
    profiles_kv = await bus.kv(subjects.PROFILES_BUCKET, profiler_pb2.Profile)
    scheduler = Scheduler(bus, store, nodes_kv, placement, settings, hold=hold, tls=config.tls,
                          profiles_kv=profiles_kv)

    async def namespace_of(name: str) -> str | None:
        function = scheduler.core.state.functions.get(name)
        return function.spec.namespace if function is not None else None

    security, close_access = await server_security(config, bus, namespace_of=namespace_of)
    server = GrpcServer(config.host, config.port, security)
    server.add(scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server,
               SchedulerServicer(scheduler), "dilu.v1.SchedulerService")
    metrics = metrics_server("scheduler", config.host, config.metrics_port,
                             SchedulerCollector(scheduler.functions, scheduler.list_nodes),
                             tls=config.tls)
    # Own the port before acting on the cluster: a second scheduler started by mistake
    # exits here instead of placing instances beside the first.
    bind_or_exit(server)
    await scheduler.start()
    await serve_until_stopped(server, config.ready_file, config.grace_s,
                              scheduler.close, close_access, bus.close, metrics=metrics)


if __name__ == "__main__":
    main()

"""The `dilu` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
from dilu.v1 import (
    node_agent_pb2,
    node_agent_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
    types_pb2,
)
from google.protobuf import json_format

from services.cli.credentials import ClientCredentials
from services.cli.specs import SpecError, load_spec
from services.cli.tables import status_json, status_report
from services.common.attribution import CLI
from services.common.config import DEFAULT_METRICS_PORTS, DEFAULT_PEER_PORTS, DEFAULT_PORTS
from services.common.security.identity import node_agent_identity, service_identity
from services.common.tables import render
from services.perf import SIM_MODELS

DEFAULT_SCHEDULER = os.environ.get("DILU_SCHEDULER", f"127.0.0.1:{DEFAULT_PORTS['scheduler']}")
DEFAULT_PROFILER = os.environ.get("DILU_PROFILER", f"127.0.0.1:{DEFAULT_PORTS['profiler']}")
DEFAULT_STATE_DIR = Path(os.environ.get(
    "DILU_STATE_DIR", Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "dilu"))


class CredentialError(ValueError):
    """The credential flags do not make sense together, or a file cannot be read."""


def client_credentials(args: argparse.Namespace) -> ClientCredentials:
    """The credentials the flags (or DILU_CA, DILU_TOKEN, DILU_TOKEN_FILE, DILU_CERT,
    DILU_KEY) give: none is insecure mode."""
    token = args.token
    if not token and args.token_file:
        try:
            token = Path(args.token_file).read_text().strip()
        except OSError as error:
            raise CredentialError(f"cannot read --token-file {args.token_file}: "
                                  f"{error.strerror or error}") from None
    if bool(args.cert) != bool(args.key):
        raise CredentialError("--cert and --key go together")
    if (token or args.cert) and not args.ca:
        raise CredentialError("a token or a client certificate needs --ca (DILU_CA): the CA "
                              "the services' certificates chain to")
    return ClientCredentials(ca=Path(args.ca) if args.ca else None, token=token,
                             cert=Path(args.cert) if args.cert else None,
                             key=Path(args.key) if args.key else None)


def _scheduler(args: argparse.Namespace) -> scheduler_pb2_grpc.SchedulerServiceStub:
    channel = client_credentials(args).channel(args.scheduler, service_identity("scheduler"))
    return scheduler_pb2_grpc.SchedulerServiceStub(channel)


def _function_summary(function: object) -> str:
    f = function  # dilu.v1.Function
    rows = [(i.id, i.node or "-", i.message) for i in f.status.instances]  # type: ignore[attr-defined]
    return (f"{f.spec.name}: {f.status.ready_replicas}/{f.status.desired_replicas} ready\n"  # type: ignore[attr-defined]
            + render(("INSTANCE", "NODE", "STATUS"), rows))


def cmd_deploy(args: argparse.Namespace) -> int:
    spec = load_spec(Path(args.file))
    reply = _scheduler(args).Deploy(scheduler_pb2.DeployRequest(function=spec), timeout=30)
    print(f"deployed {_function_summary(reply.function)}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    stub = _scheduler(args)
    functions = stub.ListFunctions(scheduler_pb2.ListFunctionsRequest(), timeout=10).functions
    try:
        nodes = stub.ListNodes(scheduler_pb2.ListNodesRequest(), timeout=10).nodes
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.PERMISSION_DENIED:  # type: ignore[attr-defined]
            raise
        nodes = []  # deployers and invokers see their functions, not the cluster's nodes
    if args.json:
        print(status_json(functions))
    else:
        profiling = stub.ListProfiling(scheduler_pb2.ListProfilingRequest(), timeout=10).functions
        print(status_report(functions, nodes, profiling=profiling))
    return 0


def cmd_invoke(args: argparse.Namespace) -> int:
    if args.file:
        try:
            payload = Path(args.file).read_bytes()
        except OSError as error:
            print(f"error: cannot read the request body from {args.file}: "
                  f"{error.strerror or error}", file=sys.stderr)
            return 2
    else:
        payload = args.data.encode()
    reply = _scheduler(args).Invoke(scheduler_pb2.InvokeRequest(
        function=args.name, payload=payload, content_type=args.content_type), timeout=60)
    sys.stdout.write(reply.payload.decode(errors="replace") + "\n")
    print(f"(served by {reply.instance_id} in {reply.worker_latency_ms:.1f} ms)", file=sys.stderr)
    return 0


def _at_least_one(text: str) -> int:
    """A count of instances to add or remove: 0 would otherwise fall through to the other
    direction (and the API reads 0 as 1)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_scale(args: argparse.Namespace) -> int:
    stub = _scheduler(args)
    if args.out is not None:
        function = stub.ScaleOut(scheduler_pb2.ScaleOutRequest(
            function=args.name, count=args.out, reason="dilu scale", source=CLI),
            timeout=30).function
    else:
        function = stub.ScaleIn(scheduler_pb2.ScaleInRequest(
            function=args.name, count=args.into, reason="dilu scale", source=CLI),
            timeout=30).function
    print(_function_summary(function))
    return 0


def cmd_quota(args: argparse.Namespace) -> int:
    """A vertical change, as the scaler makes it: SetQuota on the instance's node agent,
    which admits it against its GPUs' bounds (the scheduler adopts what it applies)."""
    stub = _scheduler(args)
    functions = stub.ListFunctions(scheduler_pb2.ListFunctionsRequest(), timeout=10).functions
    instance = next((i for f in functions for i in f.status.instances if i.id == args.instance),
                    None)
    if instance is None or instance.state not in (types_pb2.INSTANCE_STATE_STARTING,
                                                  types_pb2.INSTANCE_STATE_READY):
        print(f"error: no running instance {args.instance!r}", file=sys.stderr)
        return 1
    nodes = stub.ListNodes(scheduler_pb2.ListNodesRequest(), timeout=10).nodes
    credentials = client_credentials(args)
    node = next(v.node for v in nodes if v.node.id == instance.node)
    # A client certificate is checked on the agent's peer port; a token on its public one.
    address = node.peer_address if credentials.has_certificate and node.peer_address else node.address
    now = instance.quota
    request = args.request if args.request is not None else now.sm_request
    limit = args.limit if args.limit is not None else max(now.sm_limit, request)
    wanted = types_pb2.Quota(sm_request=request, sm_limit=limit,
                             memory_limit_mib=args.memory_mib or now.memory_limit_mib)
    with credentials.channel(address, node_agent_identity(instance.node)) as channel:
        reply = node_agent_pb2_grpc.NodeAgentServiceStub(channel).SetQuota(
            node_agent_pb2.SetQuotaRequest(instance_id=instance.id, quota=wanted,
                                           reason=args.reason, source=CLI), timeout=10)
    quota = reply.quota
    print(f"{instance.id} on {instance.node}: request {quota.sm_request:g}, limit "
          f"{quota.sm_limit:g}, memory {quota.memory_limit_mib} MiB (effective share "
          f"{quota.effective_share:.2f})")
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    reply = _scheduler(args).DeleteFunction(
        scheduler_pb2.DeleteFunctionRequest(name=args.name), timeout=30)
    print(f"deleted {args.name} ({reply.stopped_instances} instances stopped)")
    return 0


def cmd_profile(args: argparse.Namespace) -> int:
    if args.offline:
        return _profile_offline(args)
    if args.file is None or args.model is not None or args.slo_ms is not None:
        print("error: give a spec FILE to profile live, or --model and --slo-ms with --offline "
              "to search the bundled A100 tables", file=sys.stderr)
        return 2
    from dilu.v1 import profiler_pb2, profiler_pb2_grpc

    from services.cli import profile as live

    spec = load_spec(Path(args.file))
    stub = profiler_pb2_grpc.ProfilerServiceStub(grpc.insecure_channel(args.profiler))
    result = live.follow(stub, spec, design_rate_rps=args.design_rate or 0.0,
                         gpu_model=args.gpu_model or "", refresh=args.refresh, say=live.stderr)
    if args.json:
        print(json_format.MessageToJson(result, preserving_proto_field_name=True))
    if result.state == profiler_pb2.PROFILE_STATE_FAILED:
        print(f"error: profiling {spec.name} failed: {result.message}", file=sys.stderr)
        return 1
    if not args.json:
        print(live.summary(result))
        print(live.curve_table(result))
    path = live.plot(result, Path(args.plot or f"{spec.name}-profile.png"))
    print(f"plot: {path}", file=sys.stderr)
    return 0


def _profile_offline(args: argparse.Namespace) -> int:
    if args.model is None or args.slo_ms is None or args.file is not None:
        print("error: --offline takes --model and --slo-ms (no spec file)", file=sys.stderr)
        return 2
    from services.common.errors import DiluError
    from services.profiler.offline import profile_offline

    try:
        profile = profile_offline(args.model, args.slo_ms)
    except DiluError as error:
        print(f"error: {error.code.name}: {error.message}", file=sys.stderr)
        return 2 if error.code == grpc.StatusCode.INVALID_ARGUMENT else 1
    if args.json:
        print(json.dumps(profile.to_json()))
        return 0
    rows = [(label, f"{c.share:.2f}", c.batch, f"{c.measurement.latency_s * 1e3:.1f}",
             f"{c.measurement.throughput_rps:.1f}", f"{c.efficiency:.1f}", c.measurement.memory_mib)
            for label, c in (("choice", profile.choice), ("exhaustive", profile.exhaustive))]
    print(f"{profile.model} at a latency SLO of {args.slo_ms:g} ms, on the bundled A100 table "
          "(raw measurements)")
    print(render(("", "SHARE", "BATCH", "LATENCY MS", "THROUGHPUT RPS", "TE RPS/GPU", "MEMORY MIB"), rows))
    print(f"probes: {profile.probes} of {profile.grid_points} points (the exhaustive sweep measures all)")
    return 0


def _stack_options(args: argparse.Namespace, state_dir: Path):  # type: ignore[no-untyped-def]
    from services.cli.up import StackOptions

    return StackOptions(state_dir=state_dir, nats_port=args.nats_port,
                        scheduler_port=args.scheduler_port, node_agent_port=args.node_agent_port,
                        profiler_port=args.profiler_port, scaler_port=args.scaler_port,
                        sim_gpus=args.sim_gpus,
                        metrics_ports={s: getattr(args, f"{s.replace('-', '_')}_metrics_port")
                                       for s in DEFAULT_METRICS_PORTS},
                        secure=args.secure,
                        peer_ports={s: getattr(args, f"{s.replace('-', '_')}_peer_port")
                                    for s in DEFAULT_PEER_PORTS})


def cmd_up(args: argparse.Namespace) -> int:
    from services.cli.up import run_up

    return run_up(_stack_options(args, Path(args.state_dir)))


def cmd_down(args: argparse.Namespace) -> int:
    from services.cli.up import run_down

    return run_down(Path(args.state_dir))


def cmd_demo(args: argparse.Namespace) -> int:
    import tempfile

    from services.cli.demo import run_demo

    with tempfile.TemporaryDirectory(prefix="dilu-demo-") as state_dir:
        return run_demo(_stack_options(args, Path(state_dir)), duration_s=args.seconds,
                        table_every_s=args.table_every)


def _stack_flags(parser: argparse.ArgumentParser, ports_default: Callable[[str], int]) -> None:
    parser.add_argument("--nats-port", type=int, default=ports_default("nats"))
    for service in DEFAULT_PORTS:
        parser.add_argument(f"--{service}-port", type=int, default=ports_default(service))
    for service in DEFAULT_METRICS_PORTS:
        # The fixed defaults with fixed gRPC ports; free ones (0) with free gRPC ports.
        parser.add_argument(f"--{service}-metrics-port", type=int,
                            default=DEFAULT_METRICS_PORTS[service] if ports_default(service) else 0,
                            help="its Prometheus /metrics port (0: a free one, -1: none)")
    for service in DEFAULT_PEER_PORTS:
        parser.add_argument(f"--{service}-peer-port", type=int,
                            default=DEFAULT_PEER_PORTS[service] if ports_default(service) else 0,
                            help="--secure: its mutual-TLS port (0: a free one)")
    parser.add_argument("--sim-gpus", type=int, default=2, help="simulated GPUs of the node agent")
    parser.add_argument("--secure", action="store_true",
                        help="TLS and authentication on every gRPC port, TLS and per-service "
                             "permissions on NATS, certificates and the operator token in "
                             "<state dir>/tls (made on first use)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dilu", description="Dilu: serverless DL functions "
                                     "on shared GPUs with introspective elasticity.")
    parser.add_argument("--scheduler", default=DEFAULT_SCHEDULER,
                        help="scheduler address (env DILU_SCHEDULER; default %(default)s); "
                             "its peer port when authenticating with --cert")
    secure = parser.add_argument_group(
        "secure mode", "a stack started with --secure answers only authenticated calls: give "
        "the CA and a bearer token (public ports) or a client certificate (peer ports)")
    secure.add_argument("--ca", default=os.environ.get("DILU_CA", ""),
                        help="CA certificate the services' certificates chain to (env DILU_CA)")
    secure.add_argument("--token", default=os.environ.get("DILU_TOKEN", ""),
                        help="bearer token (env DILU_TOKEN)")
    secure.add_argument("--token-file", default=os.environ.get("DILU_TOKEN_FILE", ""),
                        help="read the bearer token from this file (env DILU_TOKEN_FILE)")
    secure.add_argument("--cert", default=os.environ.get("DILU_CERT", ""),
                        help="client certificate (env DILU_CERT)")
    secure.add_argument("--key", default=os.environ.get("DILU_KEY", ""),
                        help="its private key (env DILU_KEY)")
    sub = parser.add_subparsers(dest="command", required=True)

    fixed_ports: Callable[[str], int] = lambda s: 4222 if s == "nats" else DEFAULT_PORTS[s]  # noqa: E731
    up = sub.add_parser("up", help="run the local stack until Ctrl-C")
    up.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR),
                    help="JetStream store, logs and stack file (env DILU_STATE_DIR)")
    _stack_flags(up, fixed_ports)
    up.set_defaults(run=cmd_up)

    down = sub.add_parser("down", help="stop the stack that `dilu up` started")
    down.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR))
    down.set_defaults(run=cmd_down)

    demo = sub.add_parser("demo", help="start a throw-away stack, run the demo, stop")
    _stack_flags(demo, lambda s: 0)
    demo.add_argument("--seconds", type=float, default=60.0,
                      help="how long to replay the (compressed) bursty trace")
    demo.add_argument("--table-every", type=float, default=5.0,
                      help="seconds between live tables")
    demo.set_defaults(run=cmd_demo)

    deploy = sub.add_parser("deploy", help="deploy a function from a YAML or JSON spec")
    deploy.add_argument("file")
    deploy.set_defaults(run=cmd_deploy)

    status = sub.add_parser("status", help="functions, instances, GPUs and shares")
    status.add_argument("--json", action="store_true", help="print the functions as JSON")
    status.set_defaults(run=cmd_status)

    invoke = sub.add_parser("invoke", help="send one request to a function")
    invoke.add_argument("name")
    invoke.add_argument("--data", default="{}", help="request body (default %(default)s)")
    invoke.add_argument("--file", help="read the request body from this file")
    invoke.add_argument("--content-type", default="application/json")
    invoke.set_defaults(run=cmd_invoke)

    scale = sub.add_parser("scale", help="add or remove instances")
    scale.add_argument("name")
    how = scale.add_mutually_exclusive_group(required=True)
    how.add_argument("--out", type=_at_least_one, help="instances to add (1 or more)")
    how.add_argument("--in", dest="into", type=_at_least_one, help="instances to remove (1 or more)")
    scale.set_defaults(run=cmd_scale)

    quota = sub.add_parser("quota", help="change a running instance's quota (SetQuota on its "
                           "node agent, which refuses what its GPUs have no room for)")
    quota.add_argument("instance")
    quota.add_argument("--request", type=float, help="guaranteed SM share, in (0, 1]")
    quota.add_argument("--limit", type=float,
                       help="SM share it may borrow up to (default: at least the request)")
    quota.add_argument("--memory-mib", type=int, help="GPU memory limit per GPU, MiB")
    quota.add_argument("--reason", default="dilu quota", help="kept in the scaling decision")
    quota.set_defaults(run=cmd_quota)

    delete = sub.add_parser("delete", help="stop a function's instances and forget it")
    delete.add_argument("name")
    delete.set_defaults(run=cmd_delete)

    profile = sub.add_parser(
        "profile", help="profile a function live (its SM request, limit, batch and memory), "
        "or search the bundled A100 tables offline",
        description="Live: `dilu profile FILE` profiles the spec on a hidden instance on a whole "
        "free GPU (the profiler's ProfileFunction; a run for the same key is joined), prints the "
        "measured curve with the choice marked and the sizing, and draws it (--plot). Offline: "
        "`dilu profile --model M --slo-ms X --offline` searches the bundled A100 measurements "
        "for the point of highest efficiency (throughput per share) that meets the SLO and "
        "prints the choice, the exhaustive optimum and the probes used. Shares are fractions "
        "of one GPU.")
    profile.add_argument("file", nargs="?", help="a function spec (YAML or JSON) to profile live")
    profile.add_argument("--profiler", default=DEFAULT_PROFILER,
                         help="profiler address (env DILU_PROFILER; default %(default)s)")
    profile.add_argument("--design-rate", type=float,
                         help="requests/s the request is sized for (default: 70 %% of the "
                              "capacity at the limit)")
    profile.add_argument("--gpu-model", help="GPU model to profile on (default: the most common)")
    profile.add_argument("--refresh", action="store_true", help="measure again even if stored")
    profile.add_argument("--plot", help="PNG of the curve (default: NAME-profile.png)")
    profile.add_argument("--model", help="--offline: one of " + ", ".join(SIM_MODELS))
    profile.add_argument("--slo-ms", type=float, help="--offline: latency SLO in milliseconds")
    profile.add_argument("--offline", action="store_true",
                         help="search the bundled A100 tables instead of measuring")
    profile.add_argument("--json", action="store_true", help='print JSON: live, the Profile; '
                         'offline, {"choice": {"share", "batch"}, "exhaustive": {"share", "batch"}, '
                         '"probes"}; shares are fractions of a GPU')
    profile.set_defaults(run=cmd_profile)

    from services.cli.access import add_access_commands

    add_access_commands(sub, DEFAULT_STATE_DIR)

    from services.simulator.__main__ import add_arguments as simulator_arguments
    from services.simulator.__main__ import run as cmd_simulate

    simulate = sub.add_parser("simulate", help="replay placement traces through every "
                              "placement policy on a simulated cluster; `simulate serve "
                              "SCENARIO` replays a serving scenario under each system")
    simulator_arguments(simulate)
    simulate.set_defaults(run=cmd_simulate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except (SpecError, CredentialError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        print(f"error: {code.name}: {error.details()}", file=sys.stderr)  # type: ignore[attr-defined]
        return 1


if __name__ == "__main__":
    raise SystemExit(main())

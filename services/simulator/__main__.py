"""`python -m services.simulator` (also `dilu simulate`): replay placement traces through
the scheduler's policies on a simulated cluster and compare them; `... serve SCENARIO`
replays a serving scenario under each system (`services/simulator/serving`)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from services.scheduler.placement import (
    DEFAULT_POLICY,
    POLICIES,
    PlacementBounds,
    WorkloadKind,
    make_placement,
)
from services.simulator.bound import unsplit_peak_bound
from services.simulator.replay import ClusterSpec, Result, replay
from services.simulator.report import plot_active_gpus, table
from services.simulator.serving import cli as serving_cli
from services.simulator.synthetic import generate
from services.simulator.trace import GIB, Event, TraceError, bundled_trace, load_trace


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--trace", default="3200",
                        help="a bundled trace by instance count (100, 200, 400, 800, 1600, 3200) "
                             "or a path to a trace file (default %(default)s)")
    source.add_argument("--synthetic", type=int, metavar="INSTANCES",
                        help="generate a trace of this many instances instead")
    parser.add_argument("--seed", type=int, default=0, help="seed of --synthetic")
    parser.add_argument("--policies", default="all",
                        help=f"comma-separated, or all: {', '.join(POLICIES)}")
    parser.add_argument("--llm-shards", type=int, default=2,
                        help="stages an LLM inference instance may be split into; 1 keeps "
                             "every model whole (default %(default)s)")
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--gpus-per-node", type=int, default=4)
    parser.add_argument("--gpu-memory-gib", type=int, default=40)
    parser.add_argument("--max-limited", type=float, default=1.5,
                        help="bound on SM limits per GPU of the policies that over-subscribe "
                             "(the simulated nodes bound requests only, so each policy keeps "
                             "its own published rule)")
    parser.add_argument("--fgd-every", type=int, default=10,
                        help="measure the FGD-style fragmentation every this many events")
    parser.add_argument("--plot", type=Path, help="write a PNG of active GPUs over time here")
    modes = parser.add_subparsers(dest="mode", metavar="{serve}")
    serve = modes.add_parser("serve", help="replay a serving scenario (YAML) under each system: "
                             "SLO attainment, GPU-seconds, training throughput, scaling actions")
    serving_cli.add_arguments(serve)


def load_events(args: argparse.Namespace) -> tuple[str, list[Event]]:
    if args.synthetic is not None:
        if args.synthetic < 1:
            raise ValueError("--synthetic must be at least 1")
        events = generate(args.synthetic, args.seed)
        events = [replace(e, shape=replace(e.shape, max_shards=args.llm_shards))
                  if e.shape.kind is WorkloadKind.LLM_INFERENCE else e for e in events]
        return f"synthetic-{args.synthetic} (seed {args.seed})", events
    path = bundled_trace(int(args.trace)) if args.trace.isdigit() else Path(args.trace)
    return path.stem, load_trace(path, llm_shards=args.llm_shards)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "mode", None) == "serve":
        return serving_cli.run(args)
    try:
        for flag in ("llm_shards", "nodes", "gpus_per_node", "gpu_memory_gib", "fgd_every"):
            if getattr(args, flag) < 1:
                raise ValueError(f"--{flag.replace('_', '-')} must be at least 1")
        names = list(POLICIES) if args.policies == "all" else args.policies.split(",")
        bounds = PlacementBounds(max_limited=args.max_limited)
        policies = [make_placement(name.strip(), bounds) for name in names]
        title, events = load_events(args)
    except (ValueError, FileNotFoundError, TraceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    cluster = ClusterSpec(args.nodes, args.gpus_per_node, args.gpu_memory_gib * GIB)
    print(f"{title}: {sum(e.start for e in events)} instances, {len(events)} events on "
          f"{cluster.nodes} nodes × {cluster.gpus_per_node} GPUs × {args.gpu_memory_gib} GiB; "
          f"LLM inference may split into {args.llm_shards} stage(s)")
    results: list[Result] = []
    began = time.perf_counter()
    for policy in policies:
        results.append(replay(events, policy, cluster, fgd_every=args.fgd_every, fgd_bounds=bounds))
    elapsed = time.perf_counter() - began
    print(table(results))
    unplaced = max(r.unplaced for r in results)
    if unplaced:  # the bound counts every instance; it says nothing about a full cluster
        print(f"bound not shown: up to {unplaced} instances found no room")
    else:
        print(f"bound: no placement that keeps every instance whole can peak below "
              f"{unsplit_peak_bound(events, cluster)} GPUs")
    default = next((r for r in results if r.policy == DEFAULT_POLICY), None)
    if default is not None:
        for other in results:
            if other is not default and other.peak_active_gpus:
                print(f"peak GPUs {DEFAULT_POLICY} / {other.policy}: "
                      f"{default.peak_active_gpus / other.peak_active_gpus:.3f}")
    print(f"replayed {len(policies)} policies in {elapsed:.1f} s")
    if args.plot:
        print(f"plot: {plot_active_gpus([(title, results)], args.plot)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.simulator", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

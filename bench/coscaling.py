"""Co-scaling: every system on the three pinned serving scenarios (demo, paper-testbed,
cluster-50), side by side in one run, through the serving simulator.

Prints one report per scenario: per system SLO attainment (overall, and the lowest
function's beside the mean of the functions'), GPU-seconds, reserved share-seconds, GPU
utilisation, training throughput as a fraction of saturated, cold starts, vertical and
horizontal actions and replay time; the oracle's attainment and the lower bound on
GPU-seconds; then attainment and p99 per function (cluster-50: the 12 worst). Then the
targets: the whole run under 10 minutes, and no system below the GPU-seconds bound;
then `coscale`'s targets (issue 13, `services/simulator/serving/targets.py`), each met or
MISSED with its figures. The exit status is 1 when any target is missed. Systems run in
parallel processes; the stand-in profiles are cached (`$DILU_CACHE_DIR`, default
~/.cache/dilu), so only a first run (or one after the gate, batcher or tables changed)
measures them.

With `--sizing profiler` the functions a scenario does not pin start at the profiler's
sizing (its live protocol and rules, run against the simulator's single-instance model:
`services/simulator/serving/profiled.py`) instead of each system's own rule on the stand-in
profile (`--sizing standin`, the default).

    .venv/bin/python bench/coscaling.py [--scenarios demo,paper-testbed,cluster-50]
        [--systems all] [--sizing standin|profiler] [--json FILE] [--plot DIR] [--workers N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]),
                str(Path(__file__).resolve().parents[1] / "gen" / "python")]

from services.simulator.serving.cli import print_report, scenario_path  # noqa: E402
from services.simulator.serving.engine import PROXY_OVERHEAD_MS  # noqa: E402
from services.simulator.serving.report import plot_scenario  # noqa: E402
from services.simulator.serving.run import SIZINGS, names, run_all  # noqa: E402
from services.simulator.serving.scenario import load_scenario  # noqa: E402
from services.simulator.serving.systems import SYSTEMS  # noqa: E402
from services.simulator.serving.targets import coscale_targets  # noqa: E402

SCENARIOS = ("demo", "paper-testbed", "cluster-50")
BUDGET_S = 600.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--systems", default="all", help=f"comma-separated: {', '.join(SYSTEMS)}")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path, help="a directory for one PNG per scenario")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--overhead-ms", type=float, default=PROXY_OVERHEAD_MS)
    parser.add_argument("--sizing", choices=SIZINGS, default="standin",
                        help="initial sizing of unpinned functions: each system's rule on the "
                             "stand-in profile, or the profiler's")
    args = parser.parse_args()
    began = time.perf_counter()
    scenarios = [load_scenario(scenario_path(name)) for name in names(args.scenarios, SCENARIOS)]
    systems = names(args.systems, SYSTEMS)
    print(f"sizing: {args.sizing}")
    reports = run_all(scenarios, systems, overhead_ms=args.overhead_ms,
                      workers=args.workers or None, log=print, sizing=args.sizing)
    for report in reports:
        print_report(report, function_rows=12 if len(report.scenario.functions) > 12 else None)
        if args.plot:
            path = plot_scenario(report.scenario.name, report.results,
                                 {f.name: f.slo_ms for f in report.scenario.functions},
                                 args.plot / f"{report.scenario.name}.png")
            print(f"plot: {path}")
    elapsed = time.perf_counter() - began
    below = [(r.scenario.name, s.system, s.gpu_seconds) for r in reports for s in r.results
             if s.gpu_seconds < r.gpu_seconds_bound - 1e-6]
    print(f"\n{len(systems)} system(s) on {len(scenarios)} scenario(s) in {elapsed:.0f} s "
          f"(replays {sum(r.replay_s for r in reports):.0f} s of CPU)")
    targets = [(f"whole run under {BUDGET_S:.0f} s", elapsed < BUDGET_S, f"{elapsed:.0f} s"),
               ("no system below the GPU-seconds bound", not below, str(below or "none"))]
    for label, met, figure in targets:
        print(f"  {'met   ' if met else 'MISSED'} {label}: {figure}")
    policy_targets = coscale_targets(reports)
    if policy_targets:
        print(f"\ncoscale's targets (issue 13): {sum(t.met for t in policy_targets)} of "
              f"{len(policy_targets)} met")
        for target in policy_targets:
            print(target.line())
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "elapsed_s": elapsed, "systems": systems, "sizing": args.sizing,
            "targets": [{"target": label, "met": met, "figure": figure}
                        for label, met, figure in targets],
            "coscale_targets": [t.to_json() for t in policy_targets],
            "scenarios": {r.scenario.name: r.to_json() for r in reports}}, indent=2))
        print(f"json: {args.json}")
    return 0 if all(met for _, met, _ in targets) and all(t.met for t in policy_targets) else 1


if __name__ == "__main__":
    raise SystemExit(main())

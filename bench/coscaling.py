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
profile (`--sizing standin`, the default). `--sizing both` runs every asked system under
each sizing in one run (stand-in first), prints both reports, each labelled, then `coscale`
side by side per scenario; its JSON keeps the stand-in run's keys at the top, as a
stand-in run writes them (with "sizing": "both"), and adds "by_sizing": {"standin": …,
"profiler": …}, each with that run's "targets", "coscale_targets" and "scenarios". The
exit status is 1 when any target of either run is missed; the whole-run budget covers both.

    .venv/bin/python bench/coscaling.py [--scenarios demo,paper-testbed,cluster-50]
        [--systems all] [--sizing standin|profiler|both] [--json FILE] [--plot DIR]
        [--workers N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]),
                str(Path(__file__).resolve().parents[1] / "gen" / "python")]

from services.simulator.serving.cli import print_report, scenario_path  # noqa: E402
from services.simulator.serving.engine import PROXY_OVERHEAD_MS  # noqa: E402
from services.simulator.serving.report import plot_scenario  # noqa: E402
from services.simulator.serving.run import SIZINGS, ScenarioReport, names, run_all  # noqa: E402
from services.simulator.serving.scenario import Scenario, load_scenario  # noqa: E402
from services.simulator.serving.systems import SYSTEMS  # noqa: E402
from services.simulator.serving.targets import Target, coscale_targets  # noqa: E402

SCENARIOS = ("demo", "paper-testbed", "cluster-50")
COSCALE = "coscale"
BUDGET_S = 600.0


def _run(scenarios: list[Scenario], systems: list[str], sizing: str,
         args: argparse.Namespace) -> tuple[list[ScenarioReport], list[Target]]:
    """One sizing's reports, printed, and coscale's targets on them."""
    print(f"\n======== sizing: {sizing} ========")
    reports = run_all(scenarios, systems, overhead_ms=args.overhead_ms,
                      workers=args.workers or None, log=print, sizing=sizing)
    for report in reports:
        print_report(report, function_rows=12 if len(report.scenario.functions) > 12 else None)
        if args.plot:
            suffix = "" if args.sizing != "both" else f"-{sizing}"
            path = plot_scenario(report.scenario.name, report.results,
                                 {f.name: f.slo_ms for f in report.scenario.functions},
                                 args.plot / f"{report.scenario.name}{suffix}.png")
            print(f"plot: {path}")
    policy_targets = coscale_targets(reports)
    if policy_targets:
        print(f"\ncoscale's targets (issue 13), sizing {sizing}: "
              f"{sum(t.met for t in policy_targets)} of {len(policy_targets)} met")
        for target in policy_targets:
            print(target.line())
    return reports, policy_targets


def _side_by_side(runs: dict[str, list[ScenarioReport]]) -> None:
    """`coscale` under each sizing, one line per (scenario, sizing)."""
    print(f"\n{COSCALE} both ways (attainment overall / lowest function; GPU-seconds; cold "
          "starts; vertical / horizontal actions)")
    for k, scenario in enumerate(runs["standin"]):
        for sizing, reports in runs.items():
            result = next((r for r in reports[k].results if r.system == COSCALE), None)
            if result is None:
                continue
            print(f"  {scenario.scenario.name:<14} {sizing:<9} {result.attainment:7.2%} / "
                  f"{result.min_function_attainment:7.2%}  {result.gpu_seconds:9.0f} GPU-s  "
                  f"{result.cold_starts:4d} cold  {result.vertical_actions:5d} / "
                  f"{result.horizontal_actions:4d}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--systems", default="all", help=f"comma-separated: {', '.join(SYSTEMS)}")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path, help="a directory for one PNG per scenario")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--overhead-ms", type=float, default=PROXY_OVERHEAD_MS)
    parser.add_argument("--sizing", choices=(*SIZINGS, "both"), default="standin",
                        help="initial sizing of unpinned functions: each system's rule on the "
                             "stand-in profile, the profiler's, or both in one run")
    args = parser.parse_args()
    began = time.perf_counter()
    scenarios = [load_scenario(scenario_path(name)) for name in names(args.scenarios, SCENARIOS)]
    systems = names(args.systems, SYSTEMS)
    print(f"sizing: {args.sizing}")
    sizings = SIZINGS if args.sizing == "both" else (args.sizing,)
    runs: dict[str, list[ScenarioReport]] = {}
    policy: dict[str, list[Target]] = {}
    for sizing in sizings:
        runs[sizing], policy[sizing] = _run(scenarios, systems, sizing, args)
    if len(runs) > 1 and COSCALE in systems:
        _side_by_side(runs)
    elapsed = time.perf_counter() - began
    every = [r for reports in runs.values() for r in reports]
    below = [(r.scenario.name, s.system, s.gpu_seconds) for r in every for s in r.results
             if s.gpu_seconds < r.gpu_seconds_bound - 1e-6]
    print(f"\n{len(systems)} system(s) on {len(scenarios)} scenario(s), sizing {args.sizing}, "
          f"in {elapsed:.0f} s (replays {sum(r.replay_s for r in every):.0f} s of CPU)")
    targets = [(f"whole run under {BUDGET_S:.0f} s", elapsed < BUDGET_S, f"{elapsed:.0f} s"),
               ("no system below the GPU-seconds bound", not below, str(below or "none"))]
    for label, met, figure in targets:
        print(f"  {'met   ' if met else 'MISSED'} {label}: {figure}")
    for sizing, policy_targets in policy.items():
        if policy_targets:
            print(f"  coscale's targets, sizing {sizing}: {sum(t.met for t in policy_targets)} "
                  f"of {len(policy_targets)} met")
    if args.json:
        def block(sizing: str) -> dict[str, Any]:
            return {"coscale_targets": [t.to_json() for t in policy[sizing]],
                    "scenarios": {r.scenario.name: r.to_json() for r in runs[sizing]}}

        first = sizings[0]
        document: dict[str, Any] = {
            "elapsed_s": elapsed, "systems": systems, "sizing": args.sizing,
            "targets": [{"target": label, "met": met, "figure": figure}
                        for label, met, figure in targets],
            **block(first)}
        if len(sizings) > 1:
            document["by_sizing"] = {sizing: block(sizing) for sizing in sizings}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(document, indent=2))
        print(f"json: {args.json}")
    return 0 if all(met for _, met, _ in targets) and all(
        t.met for ts in policy.values() for t in ts) else 1


if __name__ == "__main__":
    raise SystemExit(main())

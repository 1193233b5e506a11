"""`dilu simulate serve SCENARIO.yaml [--systems …] [--json FILE] [--plot FILE]`: replay a
serving scenario under each system and print the report (see `report.py`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from services.simulator.serving.engine import PROXY_OVERHEAD_MS
from services.simulator.serving.report import function_table, plot_scenario, summary_table
from services.simulator.serving.run import ScenarioReport, names, run_all
from services.simulator.serving.scenario import ScenarioError, load_scenario
from services.simulator.serving.systems import SYSTEMS, make_system

SCENARIOS = Path(__file__).resolve().parents[1] / "scenarios"


def scenario_path(name: str) -> Path:
    """A path, or the name of a bundled scenario (demo, paper-testbed, cluster-50)."""
    path = Path(name)
    if path.exists() or path.suffix in (".yaml", ".yml"):
        return path
    return SCENARIOS / f"{name}.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scenario", help="a scenario YAML file, or a bundled one: "
                        + ", ".join(sorted(p.stem for p in SCENARIOS.glob("*.yaml"))))
    parser.add_argument("--systems", default="all",
                        help=f"comma-separated, or all: {', '.join(SYSTEMS)}")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--plot", type=Path, help="write a PNG of the replay here")
    parser.add_argument("--workers", type=int, default=0,
                        help="processes (default: the CPUs this process may use)")
    parser.add_argument("--overhead-ms", type=float, default=PROXY_OVERHEAD_MS,
                        help="proxy overhead added to every latency (default %(default)s, "
                             "measured on the live stack)")


def print_report(report: ScenarioReport, function_rows: int | None = None) -> None:
    scenario = report.scenario
    print(f"\n{scenario.name}: {len(scenario.functions)} functions, {len(scenario.training)} "
          f"training jobs, {scenario.cluster.nodes} nodes × {scenario.cluster.gpus_per_node} GPUs, "
          f"{scenario.duration_s:g} s (proxy overhead {report.overhead_ms:g} ms)")
    print(summary_table(report.results, report.oracle_attainment, report.gpu_seconds_bound))
    print()
    print(function_table(report.results, report.feasible,
                         {f.name: f.slo_ms for f in scenario.functions}, limit=function_rows))
    for result in report.results:
        print(f"  {result.system}: " + ", ".join(f"{k}={v}" for k, v in result.parameters.items()))
        if result.unplaced:
            print(f"    found no room at the start: {', '.join(result.unplaced)}")


def run(args: argparse.Namespace) -> int:
    try:
        scenario = load_scenario(scenario_path(args.scenario))
        systems = names(args.systems, SYSTEMS)
        for system in systems:
            make_system(system)
    except (ScenarioError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    reports = run_all([scenario], systems, overhead_ms=args.overhead_ms,
                      workers=args.workers or None)
    print_report(reports[0])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"scenarios": {scenario.name: reports[0].to_json()}},
                                        indent=2))
        print(f"json: {args.json}")
    if args.plot:
        path = plot_scenario(scenario.name, reports[0].results,
                             {f.name: f.slo_ms for f in scenario.functions}, args.plot)
        print(f"plot: {path}")
    return 0

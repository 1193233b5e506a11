"""Co-scaling on the live stack: the `demo` scenario with co-scaling off and on, beside the
serving simulator's runs of the same scenario, in one run.

Live: `--runs` (3) runs of `make run`'s demo (`services.cli.demo.replay_demo`: a throw-away
stack, two simulated A100s, the frozen `demo` scenario's exact request times) with the
scaler in mode `static`, then as many with `coscale`; the median of each figure and its
spread (min..max) are printed. Simulated: one run of the scenario under the simulator's
`static` and `coscale` systems (the same code, the same request times). Every figure is
printed side by side and written with `--json FILE` as

    {"static": RUN, "coscale": RUN, "simulated_static": RUN, "simulated_coscale": RUN,
     "vertical_reaction_ms": {"p50": …, "p99": …}}
    RUN = {"functions": {NAME: {"slo_attainment", "p99_ms"}}, "slo_attainment",
           "gpu_utilization", "training_throughput", "gpu_seconds", "reserved_share_seconds",
           "vertical_actions", "horizontal_actions"}

(live RUNs are the medians; the single runs are under "live_runs"). Definitions, live:
attainment at the client through the scheduler's Invoke; GPU utilisation the mean of the
agents' telemetry samples over both GPUs; training throughput the mean iterations per
second over the job's saturated rate (the simulator's `saturated_steps_per_s`);
GPU-seconds and reserved share-seconds integrated from the scheduler's node records
(`UsageMeter`); actions are the scaler's own decisions (source `scaler`).

Vertical reaction: a thread reads every instance's control page every 2 ms during the
coscale runs; for each vertical action of the scaler, the time from its decision (the
scaler's clock when `decide` ran, which its log records beside the quota) until the page
first carries the decided request and limit — the RPC to the agent and the agent's
admission included. (`ScalingDecision.at` is stamped by the agent once the page is
written, so measuring from it would leave the RPC out.)

Targets (issue 16): live coscale ≥ 99 % overall and ≥ 97 % per function, training ≥ 90 %
of static's; simulated vs live within 3 points per function (attainment and GPU
utilisation); reaction p50 ≤ 50 ms, p99 ≤ 200 ms. Run under the CPU lock:

    flock /tmp/dilu-cpu.lock .venv/bin/python bench/coscaling_live.py [--runs 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]),
                str(Path(__file__).resolve().parents[1] / "gen" / "python")]

from dilu.events.v1 import events_pb2  # noqa: E402

from services.simulator.serving.cli import scenario_path  # noqa: E402
from services.simulator.serving.engine import PROXY_OVERHEAD_MS, Simulation  # noqa: E402
from services.simulator.serving.profile import function_profiles  # noqa: E402
from services.simulator.serving.report import summarize  # noqa: E402
from services.simulator.serving.scenario import load_scenario  # noqa: E402
from services.simulator.serving.systems import make_system  # noqa: E402

VERTICAL = (events_pb2.SCALING_KIND_VERTICAL_UP, events_pb2.SCALING_KIND_VERTICAL_DOWN)


class PageWatch:
    """Every change of (request, limit) on any control page under `root`, timestamped."""

    def __init__(self, root: Path, every_s: float = 0.002) -> None:
        self._root, self._every_s = root, every_s
        self.changes: dict[str, list[tuple[float, float, float]]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PageWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        from services.node_agent.pages import ControlPageReader, PageError

        readers: dict[Path, ControlPageReader] = {}
        last_scan = 0.0
        while not self._stop.is_set():
            now = time.time()
            if now - last_scan > 0.5:
                last_scan = now
                for path in self._root.glob("*/*.ctl"):
                    if path not in readers:
                        try:
                            readers[path] = ControlPageReader(path)
                        except (OSError, PageError, ValueError):
                            continue
            for path, reader in list(readers.items()):
                try:
                    control = reader.read()
                except (PageError, ValueError):
                    continue
                seen = self.changes.setdefault(path.stem, [])
                if not seen or (seen[-1][1], seen[-1][2]) != (control.request, control.limit):
                    seen.append((now, control.request, control.limit))
            time.sleep(self._every_s)

    def reactions_from_log(self, log_text: str) -> list[float]:
        """From the scaler's own decision time (its log: `vertical ID R/L decided_at=T`)
        until the page carries that request and limit: the RPC to the agent included."""
        result = []
        for match in re.finditer(r"vertical (\S+) ([\d.]+)/([\d.]+) decided_at=([\d.]+)", log_text):
            iid, request, limit, at = (match.group(1), float(match.group(2)),
                                       float(match.group(3)), float(match.group(4)))
            for seen_at, seen_request, seen_limit in self.changes.get(iid, []):
                if (seen_at >= at - 0.05 and abs(seen_request - request) < 1e-3
                        and abs(seen_limit - limit) < 1e-3):
                    result.append(max(0.0, seen_at - at) * 1000)
                    break
        return result

    def reactions_ms(self, decisions: list[events_pb2.ScalingDecision]) -> list[float]:
        result = []
        for d in decisions:
            if d.source != "scaler" or d.kind not in VERTICAL:
                continue
            at = d.at.seconds + d.at.nanos / 1e9
            want = (d.quota_after.sm_request, d.quota_after.sm_limit)
            for seen_at, request, limit in self.changes.get(d.instance_id, []):
                if seen_at >= at - 0.05 and abs(request - want[0]) < 1e-4 and abs(limit - want[1]) < 1e-4:
                    result.append(max(0.0, seen_at - at) * 1000)
                    break
        return result


def live_run(mode: str, seconds: float) -> tuple[dict[str, Any], list[float]]:
    from services.cli.demo import replay_demo
    from services.cli.up import StackOptions

    scenario = load_scenario(scenario_path("demo"))
    saturated = statistics.fmean(t.saturated_steps_per_s for t in scenario.training)
    with tempfile.TemporaryDirectory(prefix=f"dilu-coscaling-{mode}-") as state:
        options = StackOptions(state_dir=Path(state), nats_port=0, scheduler_port=0,
                               node_agent_port=0, profiler_port=0, scaler_port=0, sim_gpus=2,
                               scaler_policy=mode)
        with PageWatch(Path(state) / "run") as pages:
            result = replay_demo(options, duration_s=seconds, table_every_s=15.0)
        log_path = Path(state) / "logs" / "scaler.log"
        scaler_log = log_path.read_text(errors="replace") if log_path.exists() else ""
    if result.code != 0:
        raise SystemExit(f"the live demo ({mode}) failed")
    functions = {}
    for name, outcome in result.outcomes.items():
        latencies = sorted(outcome.latencies_ms)
        functions[name] = {
            "slo_attainment": outcome.within_slo() / outcome.sent if outcome.sent else 1.0,
            "p99_ms": latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]}
    within = sum(o.within_slo() for o in result.outcomes.values())
    sent = sum(o.sent for o in result.outcomes.values())
    samples = [u for s in result.watch.utilization.values() for u in s]
    vertical, horizontal = result.watch.actions()
    run = {"functions": functions, "slo_attainment": within / sent,
           "gpu_utilization": statistics.fmean(samples),
           "training_throughput": (statistics.fmean(result.watch.iterations) / saturated
                                   if result.watch.iterations else 0.0),
           "gpu_seconds": result.meter.gpu_s,
           "reserved_share_seconds": result.meter.reserved_share_s,
           "vertical_actions": vertical, "horizontal_actions": horizontal}
    # From the scaler's decision time where its log has it, else from the recorded
    # decision's timestamp (the agent's, taken once the page is written: a lower bound).
    return run, (pages.reactions_from_log(scaler_log) or pages.reactions_ms(result.watch.decisions))


def simulated_run(system: str) -> dict[str, Any]:
    scenario = load_scenario(scenario_path("demo"))
    profiles = function_profiles(scenario.functions, PROXY_OVERHEAD_MS)
    result = summarize(Simulation(scenario, make_system(system), profiles,
                                  overhead_ms=PROXY_OVERHEAD_MS).run())
    return {"functions": {n: {"slo_attainment": f.attainment, "p99_ms": f.p99_ms}
                          for n, f in result.functions.items()},
            "slo_attainment": result.attainment, "gpu_utilization": result.gpu_utilization,
            "training_throughput": result.training_throughput,
            "gpu_seconds": result.gpu_seconds,
            "reserved_share_seconds": result.reserved_share_seconds,
            "vertical_actions": result.vertical_actions,
            "horizontal_actions": result.horizontal_actions}


_FIGURES = ("slo_attainment", "gpu_utilization", "training_throughput", "gpu_seconds",
            "reserved_share_seconds", "vertical_actions", "horizontal_actions")


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    names = runs[0]["functions"]
    return {"functions": {n: {k: statistics.median(r["functions"][n][k] for r in runs)
                              for k in ("slo_attainment", "p99_ms")} for n in names},
            **{k: statistics.median(r[k] for r in runs) for k in _FIGURES}}


def spread(runs: list[dict[str, Any]], pick: Any) -> str:
    values = [pick(r) for r in runs]
    return f"{min(values):.3g}..{max(values):.3g}"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="live runs per mode")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of each live run")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()

    simulated = {"static": simulated_run("static"), "coscale": simulated_run("coscale")}
    live: dict[str, list[dict[str, Any]]] = {"static": [], "coscale": []}
    reactions: list[float] = []
    for mode in ("static", "coscale"):
        for k in range(args.runs):
            print(f"--- live {mode} run {k + 1}/{args.runs}", flush=True)
            run, reacted = live_run(mode, args.seconds)
            live[mode].append(run)
            if mode == "coscale":
                reactions += reacted
    medians = {mode: median_run(runs) for mode, runs in live.items()}
    reaction = {"p50": percentile(reactions, 50), "p99": percentile(reactions, 99),
                "count": len(reactions)}
    print_table(medians, simulated, live, reaction)
    if args.json:
        args.json.write_text(json.dumps({
            "static": medians["static"], "coscale": medians["coscale"],
            "simulated_static": simulated["static"], "simulated_coscale": simulated["coscale"],
            "vertical_reaction_ms": reaction, "live_runs": live}, indent=2))
    return 0


def print_table(medians: dict[str, Any], simulated: dict[str, Any],
                live: dict[str, list[dict[str, Any]]], reaction: dict[str, float]) -> None:
    print("\n=== co-scaling, live (median of runs, spread) vs simulated ===")
    header = f"  {'FIGURE':<34}{'STATIC':>10}{'SPREAD':>16}{'SIM':>9}{'COSCALE':>10}{'SPREAD':>16}{'SIM':>9}"
    print(header)
    names = list(medians["static"]["functions"])
    rows: list[tuple[str, Any]] = [(f"{n} attainment", lambda r, n=n: r["functions"][n]["slo_attainment"])
                                   for n in names]
    rows += [(f"{n} p99 ms", lambda r, n=n: r["functions"][n]["p99_ms"]) for n in names]
    rows += [(k.replace("_", " "), lambda r, k=k: r[k]) for k in _FIGURES]
    for label, pick in rows:
        print(f"  {label:<34}{pick(medians['static']):>10.3f}{spread(live['static'], pick):>16}"
              f"{pick(simulated['static']):>9.3f}{pick(medians['coscale']):>10.3f}"
              f"{spread(live['coscale'], pick):>16}{pick(simulated['coscale']):>9.3f}")
    c, s = medians["coscale"], medians["static"]
    worst = min(f["slo_attainment"] for f in c["functions"].values())
    training = c["training_throughput"] / s["training_throughput"] if s["training_throughput"] else 0.0
    print(f"\n  coscale overall {c['slo_attainment']:.1%} (target ≥ 99 %), worst function "
          f"{worst:.1%} (≥ 97 %), training {training:.0%} of static's (≥ 90 %)")
    for mode in ("static", "coscale"):
        gaps = [abs(medians[mode]["functions"][n]["slo_attainment"]
                    - simulated[mode]["functions"][n]["slo_attainment"]) * 100 for n in names]
        util = abs(medians[mode]["gpu_utilization"] - simulated[mode]["gpu_utilization"]) * 100
        print(f"  {mode}: simulated vs live attainment gap per function "
              f"{', '.join(f'{g:.1f}' for g in gaps)} points (≤ 3); GPU utilisation gap "
              f"{util:.1f} points (≤ 3)")
    print(f"  vertical reaction, decision → control page: p50 {reaction['p50']:.1f} ms (≤ 50), "
          f"p99 {reaction['p99']:.1f} ms (≤ 200), over {reaction['count']:.0f} changes")


if __name__ == "__main__":
    sys.exit(main())

"""Profiling search, offline: our pruning search and HGSS (the paper's reference rules)
replayed side by side on the five bundled A100 tables as measured (raw, noisy).

For each model, 20 SLOs log-spaced from 1.02 × the fastest latency in its table to the
latency of batch 32 at 100 %. Each SLO is searched by both, each through its own
`CountingMeasurer` (the bench's count of `measure()` calls, not the search's own word),
and compared with the exhaustive sweep of all 60 points under the same tie rule. A case
*matches* when the choice's TE (throughput / share, on the raw table) is within 2 % of
the best TE of any point that meets the SLO. Per model it prints the match rate, the
worst TE loss, median and maximum probes and the choices that violate their SLO on the
raw table, ours and HGSS's side by side; then checks that an SLO faster than anything in
the table is refused with `InfeasibleSlo` naming the fastest latency measured; then the
targets (match >= 95 % and never below HGSS, median probes <= 10, no violation), with
exit status 1 when one is missed.

With `--live` it also profiles one inference and one training function on a live stack of
its own, with a sim runtime slowdown the tables do not know, beside the exhaustive live
sweep of the same grid under the same tie rule, and verifies the sizing with an open-loop
run at the chosen request and the design rate (`live_profiling.py`; about 15 minutes: run
it under the CPU lock). Targets: the same choice, each profile at most 25 % of its sweep's
wall time and under 2 minutes, >= 99 % of the verification's requests within the SLO.

    .venv/bin/python bench/profiler.py [--models resnet152,bert-base] [--json FILE]
    flock /tmp/dilu-cpu.lock .venv/bin/python bench/profiler.py --live [--live-only] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]),
                str(Path(__file__).resolve().parents[1] / "gen" / "python"),
                str(Path(__file__).resolve().parent)]

from live_profiling import LiveCase, live_targets, run_live  # noqa: E402

from services.common.tables import render  # noqa: E402
from services.perf import SIM_MODELS  # noqa: E402
from services.profiler.search import (  # noqa: E402
    Choice,
    Grid,
    InfeasibleSlo,
    Measurement,
    Measurer,
    TableMeasurer,
    hgss_inference,
    search_inference,
    sweep_inference,
)

CASES_PER_MODEL = 20
FASTEST_MARGIN = 1.02
MATCH = 0.98            # within 2 % of the best TE
TARGET_MATCH = 0.95
TARGET_MEDIAN_PROBES = 10

Search = Callable[[Measurer, float], Choice]


class CountingMeasurer:
    """Counts every `measure()` call on its way to the table."""

    def __init__(self, inner: Measurer) -> None:
        self.inner = inner
        self.calls = 0

    def measure(self, batch: int, share: float) -> Measurement:
        self.calls += 1
        return self.inner.measure(batch, share)


@dataclass
class Figures:
    """One searcher's results on one model."""

    matches: int = 0
    violations: int = 0
    worst_loss: float = 0.0
    probes: list[int] = field(default_factory=list)

    def add(self, choice: Choice, calls: int, table: TableMeasurer, slo_s: float, best_te: float) -> None:
        # Judge the choice on the raw table, not on what the search reports about it.
        raw = table.measure(choice.batch, choice.share)
        te = raw.throughput_rps / choice.share
        self.matches += te >= MATCH * best_te
        self.violations += raw.latency_s > slo_s
        self.worst_loss = max(self.worst_loss, 1.0 - te / best_te)
        self.probes.append(calls)

    def json(self, prefix: str = "") -> dict[str, object]:
        cases = len(self.probes)
        return {f"{prefix}match_rate": self.matches / cases,
                f"{prefix}median_probes": statistics.median(self.probes),
                f"{prefix}max_probes": max(self.probes),
                f"{prefix}violations": self.violations,
                f"{prefix}worst_te_loss": round(self.worst_loss, 4)}


def slos(table: TableMeasurer) -> list[float]:
    low = FASTEST_MARGIN * table.fastest_latency_s()
    high = table.measure(32, 1.0).latency_s
    return [low * (high / low) ** (i / (CASES_PER_MODEL - 1)) for i in range(CASES_PER_MODEL)]


def run(search: Search, table: TableMeasurer, slo_s: float) -> tuple[Choice, int]:
    counter = CountingMeasurer(table)
    choice = search(counter, slo_s)
    if counter.calls != len(choice.probes):
        raise AssertionError(f"{table.name}: the search reports {len(choice.probes)} probes, "
                             f"the bench counted {counter.calls}")
    return choice, counter.calls


def bench_model(model: str) -> tuple[Figures, Figures]:
    table = TableMeasurer.a100(model)
    grid = table.grid
    ours, hgss = Figures(), Figures()
    for slo_s in slos(table):
        sweep = sweep_inference(table, slo_s, grid)
        best_te = max(p.efficiency for p in sweep.probes if p.meets(slo_s))
        for figures, search in ((ours, search_inference), (hgss, hgss_inference)):
            choice, calls = run(lambda m, s, search=search: search(m, s, grid), table, slo_s)
            figures.add(choice, calls, table, slo_s, best_te)
    return ours, hgss


def infeasible_check(model: str) -> dict[str, object]:
    """An SLO 10 % below the fastest latency in the table must be refused, naming it."""
    table = TableMeasurer.a100(model)
    slo_s = 0.9 * table.fastest_latency_s()
    try:
        choice = search_inference(table, slo_s, table.grid)
    except InfeasibleSlo as error:
        return {"slo_ms": round(slo_s * 1e3, 3), "raised": True,
                "fastest_ms": round(error.fastest_latency_s * 1e3, 3), "message": error.message}
    return {"slo_ms": round(slo_s * 1e3, 3), "raised": False,
            "message": f"chose share {choice.share}, batch {choice.batch}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(SIM_MODELS),
                        help="comma-separated models (default: all five)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--live", action="store_true", help="also the live part (minutes)")
    parser.add_argument("--live-only", action="store_true", help="the live part alone")
    parser.add_argument("--live-model", default="llama2-7b")
    parser.add_argument("--live-slo-ms", type=float, default=135.0)
    parser.add_argument("--training-model", default="bert-base")
    parser.add_argument("--training-batch", type=int, default=4)
    parser.add_argument("--host-ms", type=float, default=200.0)
    parser.add_argument("--slowdown", type=float, default=1.3)
    parser.add_argument("--live-shares", default="0.2,0.4,0.6,0.8,1",
                        help="the live grid's shares (its batches are 1 ... 32): five, so that "
                             "the exhaustive live sweep fits in about 8 minutes")
    parser.add_argument("--live-batches", default="1,2,4,8,16,32")
    args = parser.parse_args()
    output: dict[str, object] = {}
    missed: list[str] = []
    if not args.live_only:
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        output["models"], missed = offline(models)
    if args.live or args.live_only:
        case = LiveCase(args.live_model, args.live_slo_ms, args.training_model, args.training_batch,
                        args.host_ms, args.slowdown,
                        Grid(tuple(float(v) for v in args.live_shares.split(",")),
                             tuple(int(v) for v in args.live_batches.split(","))))
        live = run_live(case)
        output["live"] = live
        print_live(live)
        live_missed = live_targets(live)
        print("\nLive targets: same choice as the sweep, each profile <= 25 % of its sweep's wall "
              "time and under 2 minutes, >= 99 % within the SLO at the request and design rate:",
              "all met" if not live_missed else "MISSED")
        for line in live_missed:
            print(f"  missed: {line}")
        missed += live_missed
    if args.json:
        args.json.write_text(json.dumps(output, indent=2) + "\n")
    return 1 if missed else 0


def print_live(live: dict) -> None:  # type: ignore[type-arg]
    inference, training = live["inference"], live["training"]
    print(f"\nLive, on the sim runtime with slowdown {inference['slowdown']:g} (shares "
          f"{', '.join(f'{s:g}' for s in inference['grid']['shares'])} x batches "
          f"{', '.join(str(b) for b in inference['grid']['batches'])}):\n")
    rows = [
        (f"{inference['model']} @ {inference['slo_ms']:g} ms", inference["probes"],
         f"{inference['wall_s']:.0f}", f"{inference['sweep_wall_s']:.0f}",
         f"{inference['wall_s'] / inference['sweep_wall_s']:.0%}",
         f"{inference['choice']['share']:g}/{inference['choice']['batch']}",
         f"{inference['sweep_choice']['share']:g}/{inference['sweep_choice']['batch']}"),
        (f"{training['model']} training, batch {training['batch']}, host {training['host_ms']:g} ms",
         training["probes"], f"{training['wall_s']:.0f}", f"{training['sweep_wall_s']:.0f}",
         f"{training['wall_s'] / training['sweep_wall_s']:.0%}", f"{training['share']:g}",
         f"{training['sweep_share']:g}"),
    ]
    print(render(("FUNCTION", "PROBES", "PROFILE S", "SWEEP S", "RATIO", "CHOICE", "SWEEP CHOICE"), rows))
    verified = inference["verification"]
    print(f"\nSizing: request {inference['sm_request']:g}, limit {inference['sm_limit']:g}, batch "
          f"{inference['choice']['batch']}, {inference['memory_mib']} MiB, design rate "
          f"{inference['design_rate_rps']:.1f}/s ({inference['capacity_at_limit_rps']:.1f}/s at the limit)")
    for note in inference["notes"]:
        print(f"  note: {note}")
    print(f"Verification: {verified['requests']} Poisson requests at {verified['rate_rps']:g}/s on "
          f"share {verified['share']:g} (request = limit): {verified['attainment']:.2%} within the "
          f"SLO, p99 {verified['p99_ms']:g} ms")


def offline(models: list[str]) -> tuple[dict[str, object], list[str]]:
    """The offline part: figures per model and the targets missed."""
    rows, figures, missed = [], {}, []
    for model in models:
        ours, hgss = bench_model(model)
        infeasible = infeasible_check(model)
        figures[model] = {"cases": len(ours.probes), **ours.json(), **hgss.json("hgss_"),
                          "infeasible_slo": infeasible}
        for name, f in (("ours", ours), ("hgss", hgss)):
            rows.append((model if name == "ours" else "", name, len(f.probes),
                         f"{f.matches / len(f.probes):.0%}", f"{f.worst_loss:.1%}",
                         f"{statistics.median(f.probes):g}/{max(f.probes)}", f.violations))
        if ours.matches / len(ours.probes) < TARGET_MATCH:
            missed.append(f"{model}: match {ours.matches}/{len(ours.probes)} below {TARGET_MATCH:.0%}")
        if ours.matches < hgss.matches:
            missed.append(f"{model}: match {ours.matches} below HGSS's {hgss.matches}")
        if statistics.median(ours.probes) > TARGET_MEDIAN_PROBES:
            missed.append(f"{model}: median probes {statistics.median(ours.probes):g} above "
                          f"{TARGET_MEDIAN_PROBES}")
        if ours.violations:
            missed.append(f"{model}: {ours.violations} choices violate their SLO")
        if not infeasible["raised"]:
            missed.append(f"{model}: an infeasible SLO was not refused ({infeasible['message']})")

    print(f"Offline profiling search on the raw A100 tables: {CASES_PER_MODEL} SLOs per model, "
          f"log-spaced from {FASTEST_MARGIN} x the fastest latency to batch 32 at 100 %; a case "
          f"matches when its TE is within {1 - MATCH:.0%} of the exhaustive best.\n")
    print(render(("MODEL", "SEARCH", "CASES", "MATCH", "WORST TE LOSS", "PROBES MED/MAX", "SLO VIOLATIONS"),
                 rows))
    print("\nInfeasible SLO (0.9 x the fastest latency in the table):")
    for model in models:
        check = figures[model]["infeasible_slo"]
        assert isinstance(check, dict)
        print(f"  {model}: {'refused' if check['raised'] else 'NOT refused'}: {check['message']}")
    print("\nTargets: match >= 95 % and never below HGSS, median probes <= 10 of 60, no SLO violation, "
          "infeasible SLOs refused:", "all met" if not missed else "MISSED")
    for line in missed:
        print(f"  missed: {line}")
    return figures, missed


if __name__ == "__main__":
    raise SystemExit(main())

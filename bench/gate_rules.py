"""What the gate decision moved: the `demo` scenario in the serving simulator (static, the
same requests) under the gate's rules before this decision and under the ones it chose,
both on the time-slicing execution model.

- **before**: launches of one period (10 ms of GPU time); while a launch waits, the bucket
  may fill up to the launch's cost, so after any idle gap a whole 10 ms launch runs at full
  speed at any share (the rule of `token_bucket.py` before, re-implemented here step by
  step as a reference; not used anywhere else);
- **now**: launches of one burst (`share × 10 ms`), credit never above the burst
  (`services/node_agent/token_bucket.py`, the shim's algorithm).

    .venv/bin/python bench/gate_rules.py [--overhead-ms 4.0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parents[1]),
                str(Path(__file__).resolve().parents[1] / "gen" / "python")]

from services.common.tables import render  # noqa: E402
from services.node_agent.token_bucket import PPM, BucketParams  # noqa: E402
from services.simulator.serving import instances  # noqa: E402
from services.simulator.serving.cli import scenario_path  # noqa: E402
from services.simulator.serving.engine import Simulation  # noqa: E402
from services.simulator.serving.pacing import Launch  # noqa: E402
from services.simulator.serving.report import summarize  # noqa: E402
from services.simulator.serving.scenario import load_scenario  # noqa: E402
from services.simulator.serving.systems import Static  # noqa: E402


class RunBefore:
    """A run paced by the rule before: the interface of `PacedRun`, computed step by step.
    The bucket state it carries in `tat_ns` is (credit ns, last refill ns); 0 is a full
    bucket."""

    def __init__(self, state: Any, start_ns: int, work_ns: int, params: BucketParams,
                 first_launch_ns: int = 0, wait_end_at_start: bool = False,
                 change: tuple[int, BucketParams] | None = None) -> None:
        self.start_ns, self.work_ns, self.params, self._state = start_ns, work_ns, params, state
        self.wait_end_at_start = False
        credit, last = (float(params.burst_ns), start_ns) if state == 0 else state
        now, remaining = start_ns, work_ns
        self._launches: list[Launch] = []
        self._ends: list[int] = []
        while remaining > 0:
            page = change[1] if change is not None and now >= change[0] else params
            size = min(remaining, page.period_ns)
            asked = now
            while True:
                page = change[1] if change is not None and now >= change[0] else params
                share = page.share_ppm / PPM
                credit = min(max(page.burst_ns, size), credit + share * max(0, now - last))
                last = now
                if credit >= size:
                    break
                now += min(int((size - credit) / share) + 1, page.period_ns)
                self._ends.append(now)
            credit -= size
            self._launches.append(Launch(asked, now, size))
            now += size
            remaining -= size
        self.end_ns = now
        self.tat_ns: Any = (credit, last)
        self.throttled_ns = sum(one.admitted_ns - one.asked_ns for one in self._launches)

    @property
    def launches(self) -> int:
        return len(self._launches)

    def launch(self, k: int) -> Launch:
        return self._launches[k]

    def wait_ends(self) -> list[int]:
        return list(self._ends)

    def last_wait_end(self, t_ns: int) -> int | None:
        before = [e for e in self._ends if e <= t_ns]
        return before[-1] if before else None

    def next_wait_end(self, t_ns: int) -> int | None:
        return next((e for e in self._ends if e > t_ns), None)

    def resume(self, t_ns: int, params: BucketParams) -> RunBefore | None:
        if t_ns >= self.end_ns:
            return None
        return RunBefore(self._state, self.start_ns, self.work_ns, self.params,
                         change=(t_ns, params))


def replay(overhead_ms: float, before: bool) -> dict[str, float]:
    original = instances.PacedRun
    if before:
        instances.PacedRun = RunBefore  # type: ignore[misc, assignment]
    try:
        sim = Simulation(load_scenario(scenario_path("demo")), Static(), {},
                         overhead_ms=overhead_ms).run()
    finally:
        instances.PacedRun = original  # type: ignore[misc]
    result = summarize(sim)
    use = result.gpu_use()
    return {**{f"{n} %": 100 * f.attainment for n, f in result.functions.items()},
            **{f"{n} p99 ms": f.p99_ms for n, f in result.functions.items()},
            "overall %": 100 * result.attainment,
            **{f"GPU {i} use %": 100 * use[u] for i, u in enumerate(sorted(use))},
            "training it/s": sum(t.iterations for t in sim.training.values()) / 60}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--overhead-ms", type=float, default=4.0)
    args = parser.parse_args()
    old, new = replay(args.overhead_ms, before=True), replay(args.overhead_ms, before=False)
    print(render(("FIGURE (demo, static, same requests)", "RULE BEFORE", "THIS RULE"),
                 [(k, f"{old[k]:.1f}", f"{new[k]:.1f}") for k in new]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The CUDA shim on the fake driver (no GPU needed): launch overhead, achieved shares and
the reaction to a share change, measured side by side in one run.

    python bench/shim_fake.py [--launches 500000] [--repeats 5]

Builds the shim, the fake libcuda.so.1 (tests/shim/fake_cuda.c: a simulated GPU whose
kernels last as long as their handle says) and the driver program
tests/shim/drivers/shim_driver.c, then runs the driver with and without the shim preloaded.
Overhead runs alternate between the two so that machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from services.node_agent.pages import ControlPageWriter, control_for, create_stats_page
from services.node_agent.shim import build_shim, preload_env
from tests.shim import cbuild


class Bench:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.fake = cbuild.build_fake_cuda(workdir / "fake")
        self.driver = cbuild.build_driver("shim_driver", workdir, link_fake=True,
                                          fake_dir=self.fake)
        self.shim = build_shim(out_dir=workdir / "shim")

    def run(self, *args: object, share: float | None,
            inflight_cap_ms: float | None = None) -> dict[str, float]:
        env = {**os.environ, "LD_LIBRARY_PATH": str(self.fake), "DILU_SHIM_QUIET": "1"}
        if share is not None:
            control, stats = self.workdir / "bench.ctl", self.workdir / "bench.stats"
            page = control_for(share, share, 1.0, 0)
            if inflight_cap_ms is not None:
                page = dataclasses.replace(page, inflight_cap_ns=round(inflight_cap_ms * 1e6))
            ControlPageWriter(control, page)
            create_stats_page(stats)
            env.update(preload_env(self.shim), DILU_CONTROL=str(control), DILU_STATS=str(stats))
        done = subprocess.run([str(self.driver), *map(str, args)], env=env, capture_output=True,
                              text=True, timeout=120, check=True)
        line = [x for x in done.stdout.splitlines() if x.startswith("{")][-1]
        result: dict[str, float] = json.loads(line)
        return result


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--launches", type=int, default=500_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if cbuild.find_compiler() is None:
        print("shim_fake: needs a C compiler")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(Path(tmp))
        bare, full, half = [], [], []
        for _ in range(args.repeats):
            bare.append(bench.run("overhead", args.launches, share=None)["ns_per_launch"])
            full.append(bench.run("overhead", args.launches, share=1.0)["ns_per_launch"])
            half.append(bench.run("overhead", args.launches // 10, share=0.5)["ns_per_launch"])
        b, f, h = (statistics.median(x) for x in (bare, full, half))
        print(f"launch of a 1 ns kernel, median of {args.repeats} alternating runs:")
        print(f"  no shim            {b:7.1f} ns")
        print(f"  shim, share 1.0    {f:7.1f} ns   (+{f - b:.1f} ns: the fast path; "
              f"target < 100)")
        print(f"  shim, share 0.5    {h:7.1f} ns   (+{h - b:.1f} ns: every launch timed "
              f"with two events)")
        # A 20 ms queue: with the default 5 ms a host stall on a busy machine idles the
        # simulated GPU, which measures the machine rather than the shim.
        print("achieved GPU-busy fraction (200 us kernels, 1.5 s at each share, 20 ms "
              "in-flight cap):")
        for share in (0.25, 0.5, 0.75, 1.0):
            busy = bench.run("share", 1.5, 200, "kernel", share=share,
                             inflight_cap_ms=20)["busy_fraction"]
            print(f"  share {share:.2f} -> {busy:.4f}   (ratio {busy / share:.3f})")
        reactions = [bench.run("step", 200, 1.0, 0.25, share=1.0) for _ in range(3)]
        first_idle = sorted(r["reaction_ms"] for r in reactions)
        holds = sorted(r["holds_ms"] for r in reactions)
        print("share 1.0 -> 0.25 mid-run, 3 runs (target <= 10 ms):")
        print(f"  work queued at the old share drained, GPU first idle after "
              f"{statistics.median(first_idle):.2f} ms ({', '.join(f'{t:.2f}' for t in first_idle)})")
        print(f"  every 20 ms window holds 0.25 +- 0.05 from "
              f"{statistics.median(holds):.2f} ms ({', '.join(f'{t:.2f}' for t in holds)}); "
              f"settled at {statistics.median(r['busy_after'] for r in reactions):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

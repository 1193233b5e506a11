"""Run systems on scenarios: profiles first (cached, in parallel), then one replay per
(scenario, system), in parallel processes; results gathered per scenario."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from services.simulator.serving.engine import PROXY_OVERHEAD_MS, Simulation, Sizing
from services.simulator.serving.profile import StandInProfile, function_profiles
from services.simulator.serving.profiled import profiler_sizings
from services.simulator.serving.report import (
    SystemResult,
    gpu_seconds_bound,
    oracle,
    oracle_attainment,
    summarize,
)
from services.simulator.serving.scenario import Scenario
from services.simulator.serving.systems import make_system


@dataclass(slots=True)
class ScenarioReport:
    scenario: Scenario
    results: list[SystemResult]
    profiles: dict[str, StandInProfile]
    overhead_ms: float
    gpu_seconds_bound: float = 0.0
    oracle_attainment: float = 1.0
    feasible: dict[str, bool] = field(default_factory=dict)

    @property
    def replay_s(self) -> float:
        return sum(r.replay_s for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {"replay_s": self.replay_s, "gpu_seconds_bound": self.gpu_seconds_bound,
                "oracle_attainment": self.oracle_attainment,
                "proxy_overhead_ms": self.overhead_ms,
                "infeasible_functions": sorted(n for n, ok in self.feasible.items() if not ok),
                "systems": {r.system: r.to_json() for r in self.results}}


SIZINGS = ("standin", "profiler")
"""Where functions the scenario does not pin get their initial quota and batch: each
system's own rule on the stand-in profile, or the profiler's rules measured on the same
single-instance model (`profiled.profiler_sizings`)."""


def _replay(job: tuple[Scenario, str, dict[str, StandInProfile], float,
                       dict[str, Sizing] | None]) -> SystemResult:
    scenario, system, profiles, overhead_ms, sizings = job
    return summarize(Simulation(scenario, make_system(system), profiles,
                                overhead_ms=overhead_ms, sizings=sizings).run())


def workers_default() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), 8))


def run_all(scenarios: Sequence[Scenario], systems: Sequence[str], *,
            overhead_ms: float = PROXY_OVERHEAD_MS, workers: int | None = None,
            log: Any = None, sizing: str = "standin") -> list[ScenarioReport]:
    """Every system on every scenario; `workers` processes (default: the CPUs we may use).
    `sizing`: one of `SIZINGS`."""
    if sizing not in SIZINGS:
        raise ValueError(f"unknown sizing {sizing!r}; known: {', '.join(SIZINGS)}")
    workers = workers or workers_default()
    for system in systems:
        make_system(system)  # unknown names fail before any work
    began = time.perf_counter()
    profiles = {s.name: function_profiles(s.functions, overhead_ms, workers) for s in scenarios}
    if log is not None:
        log(f"stand-in profiles ready in {time.perf_counter() - began:.1f} s")
    sizings: dict[str, dict[str, Sizing] | None] = {s.name: None for s in scenarios}
    if sizing == "profiler":
        began = time.perf_counter()
        sizings = {s.name: profiler_sizings(s.functions, overhead_ms, workers) for s in scenarios}
        if log is not None:
            log(f"profiler sizings ready in {time.perf_counter() - began:.1f} s")
    jobs = [(s, system, profiles[s.name], overhead_ms, sizings[s.name])
            for s in scenarios for system in systems]
    # The longest replays first, so the pool ends together.
    order = sorted(range(len(jobs)), key=lambda i: -_cost(jobs[i][0]))
    results: dict[int, SystemResult] = {}
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(workers, len(jobs))) as pool:
            for i, result in zip(order, pool.map(_replay, [jobs[i] for i in order]), strict=True):
                results[i] = result
    else:
        for i in order:
            results[i] = _replay(jobs[i])
    reports = []
    for k, scenario in enumerate(scenarios):
        mine = [results[k * len(systems) + j] for j in range(len(systems))]
        requests = {name: f.requests for name, f in mine[0].functions.items()} if mine else {}
        reports.append(ScenarioReport(
            scenario, mine, profiles[scenario.name], overhead_ms,
            gpu_seconds_bound(scenario, profiles[scenario.name], overhead_ms),
            oracle_attainment(scenario, overhead_ms, requests), oracle(scenario, overhead_ms)))
    return reports


def _cost(scenario: Scenario) -> float:
    """A rough replay cost: requests offered."""
    return sum(sum(f.rate_at(t) for t in range(0, int(scenario.duration_s), 10)) * 10
               for f in scenario.functions)


def names(value: str, known: Iterable[str]) -> list[str]:
    known = list(known)
    return known if value == "all" else [v.strip() for v in value.split(",") if v.strip()]

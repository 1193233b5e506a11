"""What a serving replay reports, per system and scenario, and the two yardsticks beside it.

- **Attainment**: requests answered within their SLO over requests offered (refused and
  unanswered ones count as violations), overall and per function (the lowest printed
  beside the mean of the functions'); p99 latency per function.
- **GPU-seconds**: GPUs holding any instance or training, integrated over the scenario;
  **reserved share-seconds**: Σ SM requests (× GPUs of a gang) over time; **GPU
  utilisation**: GPU time used over GPU-seconds.
- **Training throughput**: steps done over the steps a job would do at its saturated rate
  (at its limit, or its host part), averaged over jobs.
- Cold starts, vertical and horizontal actions (and refused ones), replay time.

The **oracle** is every function on dedicated whole GPUs with unlimited replicas and no
cold start: each request then runs alone at once on a whole GPU, so it meets its SLO exactly
when the model's batch-1 whole-GPU latency plus the proxy overhead does; an oracle below
100 % marks an SLO no system can meet. The **lower bound on GPU-seconds** integrates, per
second, the largest of: the biggest training gang (its GPUs are held), ⌈Σ training requests
at the lowest a policy may cut them to (1 % of the request, the RCKM floor) + Σ inference
fluid demand (offered rate × whole-GPU time per request at b*, `StandInProfile.efficient_batch`)⌉,
and ⌈Σ memory (training, and every function's minimum replicas at the model's batch-1
memory) / GPU memory⌉. No system can hold fewer GPUs and serve the load within its SLOs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from services.common.tables import render
from services.perf import load_model
from services.perf.traces import load_trace
from services.simulator.serving.engine import NS, Simulation
from services.simulator.serving.profile import StandInProfile
from services.simulator.serving.scenario import Scenario

TRAINING_FLOOR = 0.01  # of a request: the lowest any system cuts training to (RCKM)


@dataclass(frozen=True, slots=True)
class FunctionResult:
    requests: int
    within_slo: int
    refused: int
    p99_ms: float

    @property
    def attainment(self) -> float:
        return self.within_slo / self.requests if self.requests else 1.0


@dataclass(slots=True)
class SystemResult:
    system: str
    parameters: Mapping[str, object]
    functions: dict[str, FunctionResult]
    gpu_seconds: float
    reserved_share_seconds: float
    gpu_busy_s: dict[str, float]
    training: dict[str, float]         # job -> fraction of its saturated throughput
    cold_starts: int
    vertical_actions: int
    horizontal_actions: int
    refused_actions: int
    unplaced: list[str]
    replay_s: float
    duration_s: float
    series: dict[str, Any] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return sum(f.requests for f in self.functions.values())

    @property
    def within_slo(self) -> int:
        return sum(f.within_slo for f in self.functions.values())

    @property
    def attainment(self) -> float:
        return self.within_slo / self.requests if self.requests else 1.0

    @property
    def violations(self) -> int:
        return self.requests - self.within_slo

    @property
    def min_function_attainment(self) -> float:
        return min((f.attainment for f in self.functions.values()), default=1.0)

    @property
    def mean_function_attainment(self) -> float:
        values = [f.attainment for f in self.functions.values()]
        return float(np.mean(values)) if values else 1.0

    @property
    def gpu_utilization(self) -> float:
        return sum(self.gpu_busy_s.values()) / self.gpu_seconds if self.gpu_seconds else 0.0

    @property
    def training_throughput(self) -> float:
        return float(np.mean(list(self.training.values()))) if self.training else 1.0

    def gpu_use(self) -> dict[str, float]:
        """Each GPU's busy fraction over the scenario."""
        return {uuid: busy / self.duration_s for uuid, busy in self.gpu_busy_s.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "slo_attainment": self.attainment,
            "min_function_attainment": self.min_function_attainment,
            "mean_function_attainment": self.mean_function_attainment,
            "functions": {name: {"slo_attainment": f.attainment, "p99_ms": f.p99_ms,
                                 "requests": f.requests, "refused": f.refused}
                          for name, f in self.functions.items()},
            "gpu_utilization": self.gpu_utilization,
            "gpu_seconds": self.gpu_seconds,
            "reserved_share_seconds": self.reserved_share_seconds,
            "violations": self.violations,
            "requests": self.requests,
            "training_throughput": self.training_throughput,
            "training": self.training,
            "cold_starts": self.cold_starts,
            "vertical_actions": self.vertical_actions,
            "horizontal_actions": self.horizontal_actions,
            "refused_actions": self.refused_actions,
            "unplaced": self.unplaced,
            "replay_s": self.replay_s,
            "parameters": {k: str(v) for k, v in self.parameters.items()},
        }


def summarize(sim: Simulation) -> SystemResult:
    functions = {}
    for name, function in sim.functions.items():
        p99 = float(np.percentile(function.latencies_ms, 99)) if function.latencies_ms else math.nan
        functions[name] = FunctionResult(function.requests, function.within_slo, function.refused,
                                         p99)
    duration = sim.scenario.duration_s
    training = {job: steps / (duration * saturated)
                for job, (steps, saturated) in sim.training_progress().items()}
    series = {"gpus": list(sim.series["gpus"]), "attainment": list(sim.series["attainment"]),
              "offered_rps": list(sim.series["offered_rps"]),
              "functions": {n: {k: list(v) for k, v in f.series.items()}
                            for n, f in sim.functions.items()}}
    return SystemResult(
        system=sim.system.name, parameters=sim.system.parameters(), functions=functions,
        gpu_seconds=sim.gpu_ns / NS, reserved_share_seconds=sim.reserved_ns / NS,
        gpu_busy_s={u: ns / NS for u, ns in sim.gpu_busy_ns.items()}, training=training,
        cold_starts=sim.counters.cold_starts, vertical_actions=sim.counters.vertical_actions,
        horizontal_actions=sim.counters.horizontal_actions,
        refused_actions=sim.counters.refused_actions, unplaced=list(sim.counters.unplaced),
        replay_s=sim.replay_s, duration_s=duration, series=series)


# ---- yardsticks ------------------------------------------------------------------------


def oracle(scenario: Scenario, overhead_ms: float) -> dict[str, bool]:
    """Per function: whether a lone request on a dedicated whole GPU meets its SLO."""
    return {f.name: load_model(f.model).full_gpu_cost_s(1) * f.slowdown * 1000 + overhead_ms
            <= f.slo_ms for f in scenario.functions}


def oracle_attainment(scenario: Scenario, overhead_ms: float, requests: Mapping[str, int]) -> float:
    """The oracle's attainment over the requests a replay offered."""
    feasible = oracle(scenario, overhead_ms)
    total = sum(requests.values())
    return sum(n for name, n in requests.items() if feasible[name]) / total if total else 1.0


def expected_rates(scenario: Scenario, steps_per_s: int = 50) -> np.ndarray:
    """Offered requests per second of each function in each second: [function][second]."""
    seconds = math.ceil(scenario.duration_s)
    times = (np.arange(seconds * steps_per_s) + 0.5) / steps_per_s
    rows = []
    for function in scenario.functions:
        trace = np.asarray(load_trace(function.trace))
        span = function.trace_span_s or len(trace)
        # `ServedFunction.rate_at`, on every step at once.
        position = np.floor((times * len(trace) / span + function.shift_s) % len(trace))
        rates = trace[position.astype(np.int64)] * function.scale
        rows.append(rates.reshape(seconds, steps_per_s).mean(axis=1))
    return np.array(rows) if rows else np.zeros((0, seconds))


def gpu_seconds_bound(scenario: Scenario, profiles: Mapping[str, StandInProfile],
                      overhead_ms: float) -> float:
    memory_total = scenario.cluster.gpu_memory_mib
    gang = max((t.gpus for t in scenario.training), default=0)
    training_compute = sum(TRAINING_FLOOR * t.quota.request * t.gpus for t in scenario.training)
    memory = sum(t.quota.memory_mib * t.gpus for t in scenario.training)
    per_request = []
    for function in scenario.functions:
        perf = load_model(function.model)
        memory += function.replicas_min * perf.memory_mib(1)
        profile = profiles.get(function.name)
        batch = profile.efficient_batch() if profile is not None else 1
        per_request.append(perf.full_gpu_cost_s(batch) * function.slowdown / batch)
    memory_gpus = math.ceil(round(memory / memory_total, 9))
    rates = expected_rates(scenario)
    demand = (np.asarray(per_request)[:, None] * rates).sum(axis=0) if len(per_request) else (
        np.zeros(rates.shape[1]))
    compute = np.ceil(np.round(training_compute + demand, 9))
    per_second = np.maximum(np.maximum(compute, gang), memory_gpus)
    # The last second may be partial.
    weights = np.minimum(1.0, scenario.duration_s - np.arange(len(per_second)))
    return float((per_second * weights).sum())


# ---- printing --------------------------------------------------------------------------

SUMMARY_HEADERS = ("SYSTEM", "SLO %", "MIN FN % (MEAN)", "GPU-S", "RESERVED SHARE-S", "GPU UTIL",
                   "TRAIN %", "COLD", "VERT", "HORIZ", "REFUSED", "REPLAY S")


def summary_table(results: Sequence[SystemResult], oracle_value: float, bound: float) -> str:
    rows: list[tuple[object, ...]] = [(r.system, f"{100 * r.attainment:.1f}",
             f"{100 * r.min_function_attainment:.1f} ({100 * r.mean_function_attainment:.1f})",
             f"{r.gpu_seconds:.0f}", f"{r.reserved_share_seconds:.0f}",
             f"{100 * r.gpu_utilization:.1f}%", f"{100 * r.training_throughput:.1f}",
             r.cold_starts, r.vertical_actions, r.horizontal_actions, r.refused_actions,
             f"{r.replay_s:.1f}") for r in results]
    rows.append(("oracle", f"{100 * oracle_value:.1f}", "", "", "", "", "", "", "", "", "", ""))
    rows.append(("bound", "", "", f"{bound:.0f}", "", "", "", "", "", "", "", ""))
    return render(SUMMARY_HEADERS, rows)


def function_table(results: Sequence[SystemResult], feasible: Mapping[str, bool],
                   slo_ms: Mapping[str, float], limit: int | None = None) -> str:
    """Per function: attainment and p99 under each system (the worst first when limited)."""
    names = list(slo_ms)
    if limit is not None and len(names) > limit:
        names = sorted(names, key=lambda n: min(r.functions[n].attainment for r in results))[:limit]
    headers = ("FUNCTION", "SLO MS", "ORACLE", *(f"{r.system} % / p99" for r in results))
    rows = [(name, f"{slo_ms[name]:g}", "ok" if feasible[name] else "infeasible",
             *(f"{100 * r.functions[name].attainment:.1f} / {r.functions[name].p99_ms:.0f}"
               for r in results)) for name in names]
    return render(headers, rows)


def plot_scenario(title: str, results: Sequence[SystemResult], slo_ms: Mapping[str, float],
                  path: Path) -> Path:
    """The aggregate (GPUs held, offered load, attainment per second) and the five busiest
    functions (offered rps, instances, total share, p99 against the SLO), one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = results[0].series["functions"]
    busiest = sorted(first, key=lambda n: -sum(first[n]["offered_rps"]))[:5]
    fig, axes = plt.subplots(1 + len(busiest), 4, figsize=(17, 2.6 * (1 + len(busiest))),
                             squeeze=False)
    aggregate = (("gpus", "GPUs held"), ("offered_rps", "offered req/s"),
                 ("attainment", "answered within SLO, per second"))
    for ax, (key, label) in zip(axes[0], aggregate, strict=False):
        for r in results:
            ax.plot(r.series[key], linewidth=1, label=r.system)
        ax.set_title(f"{title}: {label}", fontsize=9)
    axes[0][3].axis("off")
    metrics = (("offered_rps", "offered req/s"), ("instances", "instances"),
               ("share", "total effective share (mean)"), ("p99_ms", "p99 ms (dashed: SLO)"))
    for row, name in zip(axes[1:], busiest, strict=True):
        for ax, (key, label) in zip(row, metrics, strict=True):
            for r in results:
                ax.plot(r.series["functions"][name][key], linewidth=1, label=r.system)
            if key == "p99_ms":
                ax.axhline(slo_ms[name], color="black", linestyle="--", linewidth=0.8)
            ax.set_title(f"{name}: {label}", fontsize=9)
    axes[0][0].legend(fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("seconds")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path

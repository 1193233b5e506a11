"""Request arrivals: Poisson within each trace sample at the trace's rate.

A function's trace gives a rate per trace second; a scenario may squeeze the whole trace
into fewer seconds (`trace_span_s`) and shift it circularly (`shift_s`); it wraps around
when the scenario runs longer. Within each sample's interval the arrivals are a Poisson
process at that rate (a Poisson count, placed uniformly). Every function draws from its
own stream of the scenario's seed, so every system sees the same requests.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from services.perf.traces import load_trace
from services.simulator.serving.scenario import Scenario, ServedFunction

NS = 1_000_000_000


def function_arrivals(function: ServedFunction, duration_s: float,
                      rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Sorted arrival times (ns) of one function over `[0, duration_s)`."""
    trace = np.asarray(load_trace(function.trace), dtype=np.float64)
    length = len(trace)
    seconds_per_sample = (function.trace_span_s or length) / length
    first = int(np.floor(function.shift_s))
    last_position = function.shift_s + duration_s / seconds_per_sample
    samples = np.arange(first, int(np.ceil(last_position)))
    begin = (np.maximum(samples, function.shift_s) - function.shift_s) * seconds_per_sample
    end = (np.minimum(samples + 1, last_position) - function.shift_s) * seconds_per_sample
    rates = trace[samples % length] * function.scale
    counts = rng.poisson(rates * (end - begin))
    starts = np.repeat(begin, counts)
    spans = np.repeat(end - begin, counts)
    times = np.sort(starts + rng.random(int(counts.sum())) * spans)
    return np.minimum(np.round(times * NS), duration_s * NS - 1).astype(np.int64)


def arrivals_by_function(scenario: Scenario) -> dict[str, npt.NDArray[np.int64]]:
    """Each function's arrival times (ns), drawn from its own stream of the seed (the live
    demo replays exactly these)."""
    streams = np.random.SeedSequence(scenario.seed).spawn(max(1, len(scenario.functions)))
    return {f.name: function_arrivals(f, scenario.duration_s, np.random.default_rng(s))
            for f, s in zip(scenario.functions, streams, strict=False)}


def scenario_arrivals(scenario: Scenario) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    """Every function's arrivals merged in time order: (times ns, function index)."""
    times = list(arrivals_by_function(scenario).values())
    if not times:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32)
    which = np.concatenate([np.full(len(t), i, dtype=np.int32) for i, t in enumerate(times)])
    merged = np.concatenate(times)
    order = np.argsort(merged, kind="stable")
    return merged[order], which[order]

"""Request-rate traces from the reference data, resampled for shorter replays."""

from __future__ import annotations

from functools import cache
from importlib import resources

TRACES = ("bursty", "periodic", "sporadic")


@cache
def load_trace(name: str) -> tuple[float, ...]:
    """Requests per second, one value per second of the original trace."""
    if name not in TRACES:
        raise ValueError(f"unknown trace {name!r}; known: {', '.join(TRACES)}")
    text = resources.files("services.perf").joinpath(f"data/workloads/{name}.txt").read_text()
    return tuple(float(line) for line in text.split())


def compressed_rate(trace: tuple[float, ...], elapsed_s: float, duration_s: float) -> float:
    """The trace's rate at `elapsed_s` of a replay squeezed into `duration_s`: each replay
    second covers len(trace)/duration_s trace seconds, so bursts keep their shape."""
    if not trace or duration_s <= 0:
        return 0.0
    index = int(elapsed_s / duration_s * len(trace))
    return trace[min(max(index, 0), len(trace) - 1)]

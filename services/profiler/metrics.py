"""The profiler's Prometheus figures: profiling runs, by outcome, and how long they take.

Both are exported from the start, at zero until a profile runs. The profiler
(`profiler.Profiler`) wraps each run in `ProfilingMetrics.run()`:

    with metrics.run():
        profile = await self._measure(record, name)

which counts the run as `ok`, or `failed` when it raises (an infeasible SLO, a function
that crashed or hung), and observes its duration. A run interrupted by the platform (the
scheduler unreachable) is counted failed too, and queued again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

OUTCOMES = ("ok", "failed")
# A profiling search tries several (request, limit, batch) points: seconds to minutes.
DURATION_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class ProfilingMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.runs = Counter("dilu_profiling_runs", "Profiling runs finished, by outcome",
                            ["outcome"], registry=registry)
        for outcome in OUTCOMES:  # present at zero before the first run
            self.runs.labels(outcome)
        self.duration = Histogram("dilu_profiling_duration_seconds",
                                  "Wall time of a profiling run", buckets=DURATION_BUCKETS,
                                  registry=registry)

    def record(self, seconds: float, ok: bool) -> None:
        self.runs.labels("ok" if ok else "failed").inc()
        self.duration.observe(seconds)

    @contextmanager
    def run(self) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        except BaseException:
            self.record(time.perf_counter() - started, ok=False)
            raise
        self.record(time.perf_counter() - started, ok=True)

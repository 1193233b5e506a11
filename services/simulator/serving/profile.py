"""The stand-in profile every system sizes from until the profiler lands.

For one function (model, SLO) it is measured with the simulator's own single-instance
model — the same `InferenceInstance` (the worker's batching decisions, the gate's pacing)
alone at a fixed share (request = limit), with the proxy overhead in every latency — never
from the tables' columns below 100 %. For each share × maximum batch on a grid it holds the
highest Poisson rate one instance sustains with ≥ 99 % of requests within the SLO:
`capacity(share, max_batch)`. The helpers derive what systems' published rules need. A
function whose batches run slower than the tables say (the sim runtime option `slowdown`)
is measured at that slowdown, as its sim worker runs it.

Profiles are deterministic (fixed seed, fixed request count), so they are cached on disk
(`$DILU_CACHE_DIR`, default `~/.cache/dilu`), keyed by the function's parameters and a
fingerprint of every source file the model depends on: a changed gate or batcher
invalidates them by itself.
"""

from __future__ import annotations

import bisect
import hashlib
import heapq
import itertools
import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from services.perf import load_model
from services.simulator.serving.instances import InferenceInstance, page_params
from services.simulator.serving.pacing import PacedRun

NS = 1_000_000_000
MS = 1_000_000
SHARES: tuple[float, ...] = tuple(round(0.1 * k, 2) for k in range(1, 11))
BATCHES: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
TARGET = 0.99            # the part of requests that must meet the SLO
REQUESTS = 1500          # Poisson arrivals per probe
SEED = 20261206
PRECISION = 0.04         # relative width at which the rate search stops
VERSION = 1


@dataclass(frozen=True, slots=True)
class StandInProfile:
    model: str
    slo_ms: float
    overhead_ms: float
    shares: tuple[float, ...]
    batches: tuple[int, ...]
    capacity_rps: tuple[tuple[float, ...], ...]  # [share][batch]
    slowdown: float = 1.0

    # ---- the curve ---------------------------------------------------------------------

    def capacity(self, share: float, max_batch: int) -> float:
        """Requests per second one instance at `share` with `max_batch` sustains (linear
        between grid shares, 0 at share 0; the largest grid batch ≤ `max_batch`)."""
        column = max(0, bisect.bisect_right(self.batches, max_batch) - 1)
        values = [0.0] + [row[column] for row in self.capacity_rps]
        return float(np.interp(min(share, self.shares[-1]), (0.0, *self.shares), values))

    def best_batch(self, share: float) -> int:
        """The maximum batch with the highest capacity at `share` (the smaller on ties)."""
        return max(self.batches, key=lambda b: (round(self.capacity(share, b), 6), -b))

    def best_capacity(self, share: float) -> float:
        return self.capacity(share, self.best_batch(share))

    def share_for(self, rate_rps: float, max_batch: int | None = None) -> float | None:
        """The smallest share (to 0.01) at which one instance carries `rate_rps`; None if
        even a whole GPU does not."""
        for hundredths in range(1, 101):
            share = hundredths / 100
            batch = max_batch if max_batch is not None else self.best_batch(share)
            if self.capacity(share, batch) >= rate_rps:
                return share
        return None

    # ---- from the execution model ------------------------------------------------------

    def lone_batch_share(self, batch: int = 1) -> float | None:
        """The smallest share (to 0.01) at which a lone batch, arriving at an idle
        instance, meets the SLO (time-slicing: a tight SLO needs a high share while it runs)."""
        return lone_batch_share(self.model, self.slo_ms, self.overhead_ms, batch, self.slowdown)

    def gpu_s_per_request(self, batch: int) -> float:
        """Whole-GPU seconds one request costs in a batch of `batch`."""
        return load_model(self.model).full_gpu_cost_s(batch) * self.slowdown / batch

    def efficient_batch(self) -> int:
        """b*: the batch with the least GPU time per request among those a whole GPU runs
        within the SLO (1 when none does)."""
        perf = load_model(self.model)
        feasible = [b for b in self.batches
                    if perf.full_gpu_cost_s(b) * self.slowdown * 1000 + self.overhead_ms <= self.slo_ms]
        return min(feasible or [1], key=self.gpu_s_per_request)


def lone_batch_share(model: str, slo_ms: float, overhead_ms: float, batch: int = 1,
                     slowdown: float = 1.0) -> float | None:
    work = max(1, round(load_model(model).full_gpu_cost_s(batch) * slowdown * NS))
    for hundredths in range(1, 101):
        share = hundredths / 100
        run = PacedRun(0, NS, work, page_params(share, share, share, 0))
        if (run.end_ns - NS) / MS + overhead_ms <= slo_ms:
            return share
    return None


# ---- measuring ------------------------------------------------------------------------


class _Solo:
    """One instance with nothing around it: its events, and the requests it answered."""

    def __init__(self, slo_ms: float, overhead_ms: float, allowed_misses: int) -> None:
        self._heap: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self.slo_s = slo_ms / 1000
        self._slo_ns = round(slo_ms * MS)
        self._overhead_ns = round(overhead_ms * MS)
        self.misses = 0
        self._allowed = allowed_misses

    def schedule(self, at_ns: int, action: Callable[..., None], *args: Any, first: bool = False) -> None:
        heapq.heappush(self._heap, (at_ns, next(self._seq), action, args))

    def add_busy(self, gpus: tuple[str, ...], work_ns: int) -> None:
        pass

    def answered(self, instance: Any, now_ns: int, batch: list[int]) -> None:
        limit = self._slo_ns - self._overhead_ns
        self.misses += sum(1 for client in batch if now_ns - client > limit)

    def replay(self, instance: InferenceInstance, arrivals: Iterable[int]) -> bool:
        """Whether at most the allowed misses happened (stops early once they did not)."""
        heap, pop = self._heap, heapq.heappop
        for at in arrivals:
            while heap and heap[0][0] <= at:
                when, _, action, args = pop(heap)
                action(when, *args)
            if self.misses > self._allowed:
                return False
            instance.arrive(at, at)
        while heap:
            when, _, action, args = pop(heap)
            action(when, *args)
        return self.misses <= self._allowed


def meets_slo(model: str, slo_ms: float, overhead_ms: float, share: float, max_batch: int,
              rate_rps: float, unit_arrivals: np.ndarray, slowdown: float = 1.0) -> bool:
    """Whether one instance at `share` keeps ≥ 99 % of a Poisson stream at `rate_rps`
    within the SLO. `unit_arrivals` is a rate-1 stream (seconds), scaled to the rate."""
    allowed = int((1 - TARGET) * len(unit_arrivals))
    solo = _Solo(slo_ms, overhead_ms, allowed)
    instance = InferenceInstance(solo, solo, "solo", "node", ("gpu",), share, share, 0, max_batch,  # type: ignore[arg-type]
                                 load_model(model), 0, slowdown=slowdown)
    instance.state = "ready"
    times = np.round(unit_arrivals / rate_rps * NS).astype(np.int64).tolist()
    return solo.replay(instance, times)


def measure_profile(model: str, slo_ms: float, overhead_ms: float,
                    slowdown: float = 1.0) -> StandInProfile:
    """The capacity grid: at every grid point the rate is searched from its neighbours'
    (the same share's smaller batch, else the smaller share's) and narrowed by bisection."""
    perf = load_model(model)
    unit = np.cumsum(np.random.default_rng(SEED).exponential(1.0, REQUESTS))
    rows: list[tuple[float, ...]] = []
    for i, share in enumerate(SHARES):
        row: list[float] = []
        for j, batch in enumerate(BATCHES):
            # No instance beats full batches back to back at its share.
            bound = batch / (perf.full_gpu_cost_s(batch) * slowdown / share)
            # A neighbour is a close guess; without one, search in coarse steps.
            guess, step = bound / 4, 2.0
            if j and row[j - 1] > 0:
                guess, step = row[j - 1], 1.15
            elif i and rows[i - 1][j] > 0:
                guess, step = rows[i - 1][j] * share / SHARES[i - 1], 1.3

            def meets(rate: float, share: float = share, batch: int = batch) -> bool:
                return meets_slo(model, slo_ms, overhead_ms, share, batch, rate, unit, slowdown)

            row.append(round(_highest(meets, min(guess, bound), bound, step), 3))
        rows.append(tuple(row))
    return StandInProfile(model, slo_ms, overhead_ms, SHARES, BATCHES, tuple(rows), slowdown)


def _highest(meets: Callable[[float], bool], guess: float, bound: float, step: float) -> float:
    """The highest rate in (0, bound) that `meets`, to `PRECISION`, searching out from
    `guess` in steps of `step` (down: at least halving) and then by bisection (0 when even
    a trickle misses)."""
    floor = bound * 0.002
    if meets(guess):
        low, high = guess, guess * step
        while high < bound and meets(high):
            low, high = high, high * step
        high = min(high, bound)
    else:
        down = max(step, 2.0)
        high, low = guess, guess / down
        while low > floor and not meets(low):
            high, low = low, low / down
        if low <= floor:
            return 0.0
    while high - low > PRECISION * high:
        middle = (low + high) / 2
        if meets(middle):
            low = middle
        else:
            high = middle
    return low


# ---- the cache -------------------------------------------------------------------------

_SOURCES = (
    "services/node_agent/token_bucket.py", "services/node_agent/pages.py",
    "services/node_agent/worker/batching.py", "services/node_agent/worker/engines.py",
    "services/node_agent/worker/gate.py", "services/perf/model.py",
    "services/simulator/serving/pacing.py", "services/simulator/serving/instances.py",
    "services/simulator/serving/profile.py", "services/simulator/serving/windows.py",
)


def fingerprint() -> str:
    """A hash of every source the single-instance model depends on, and the tables."""
    root = Path(__file__).resolve().parents[3]
    digest = hashlib.sha256()
    paths = [root / s for s in _SOURCES] + sorted((root / "services/perf/data/a100").glob("*.csv"))
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("DILU_CACHE_DIR", Path.home() / ".cache" / "dilu")) / "standin"


def _key(model: str, slo_ms: float, overhead_ms: float, slowdown: float) -> str:
    raw = json.dumps([VERSION, model, slo_ms, overhead_ms, slowdown, SHARES, BATCHES, REQUESTS,
                      SEED, PRECISION, fingerprint()])
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def _measure_and_store(args: tuple[str, float, float, float]) -> StandInProfile:
    model, slo_ms, overhead_ms, slowdown = args
    profile = measure_profile(model, slo_ms, overhead_ms, slowdown)
    path = cache_dir() / f"{_key(model, slo_ms, overhead_ms, slowdown)}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(f".{os.getpid()}.tmp")
    temporary.write_text(json.dumps(asdict(profile)))
    temporary.replace(path)
    return profile


def _cached(model: str, slo_ms: float, overhead_ms: float,
            slowdown: float) -> StandInProfile | None:
    path = cache_dir() / f"{_key(model, slo_ms, overhead_ms, slowdown)}.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return StandInProfile(raw["model"], raw["slo_ms"], raw["overhead_ms"], tuple(raw["shares"]),
                          tuple(raw["batches"]), tuple(tuple(r) for r in raw["capacity_rps"]),
                          raw.get("slowdown", 1.0))


def profiles_for(wanted: Iterable[tuple[str, float, float]], overhead_ms: float,
                 workers: int = 1) -> dict[tuple[str, float, float], StandInProfile]:
    """Profiles for (model, SLO ms, slowdown) triples: from the cache, the rest measured
    (in up to `workers` processes) and stored."""
    result: dict[tuple[str, float, float], StandInProfile] = {}
    missing = []
    for model, slo_ms, slowdown in dict.fromkeys(wanted):
        cached = _cached(model, slo_ms, overhead_ms, slowdown)
        if cached is None:
            missing.append((model, slo_ms, overhead_ms, slowdown))
        else:
            result[model, slo_ms, slowdown] = cached
    if missing and workers > 1:
        with ProcessPoolExecutor(min(workers, len(missing))) as pool:
            measured = list(pool.map(_measure_and_store, missing))
    else:
        measured = [_measure_and_store(m) for m in missing]
    for (model, slo_ms, _, slowdown), profile in zip(missing, measured, strict=True):
        result[model, slo_ms, slowdown] = profile
    return result


def function_profiles(functions: Iterable[Any], overhead_ms: float,
                      workers: int = 1) -> dict[str, StandInProfile]:
    """The stand-in profile of every function (objects with `name`, `model`, `slo_ms` and
    optionally `slowdown`)."""
    functions = list(functions)
    keys = {f.name: (f.model, f.slo_ms, getattr(f, "slowdown", 1.0)) for f in functions}
    by_key = profiles_for(keys.values(), overhead_ms, workers)
    return {name: by_key[key] for name, key in keys.items()}

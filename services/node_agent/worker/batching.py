"""Adaptive batching policy of inference workers (pure).

A worker waits for more requests only while waiting cannot cost the oldest request its
SLO: the batch must start early enough that a full batch, run at the current share,
still finishes inside the SLO with a safety margin. It also stops waiting when, at the
observed arrival rate, the batch would not fill anyway.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")

# Part of the SLO a request may spend queued plus running; the rest absorbs estimate
# errors and the trip through the scheduler.
SLO_BUDGET = 0.8
# Never wait longer than this part of the SLO for a batch to fill.
MAX_WAIT_OF_SLO = 0.25


@dataclass(frozen=True, slots=True)
class BatchState:
    queued: int
    oldest_age_s: float
    max_batch: int
    slo_s: float
    # Estimated wall time of a full batch at the current share.
    full_batch_s: float
    # Recent arrivals per second (0 when unknown).
    arrival_rps: float


def batch_wait_s(state: BatchState) -> float:
    """How long to keep collecting before running what is queued (0 = run now)."""
    if state.queued <= 0 or state.queued >= state.max_batch or state.slo_s <= 0:
        return 0.0
    if state.arrival_rps <= 0:
        return 0.0
    until_full = (state.max_batch - state.queued) / state.arrival_rps
    latest_start = state.slo_s * SLO_BUDGET - state.full_batch_s - state.oldest_age_s
    wait = min(until_full, latest_start, state.slo_s * MAX_WAIT_OF_SLO)
    return max(0.0, wait)


def batch_size(queued: int, max_batch: int, slo_s: float, oldest_age_s: float,
               estimate_s: Callable[[int], float]) -> int:
    """How many queued requests to run now: the largest batch that still lets the oldest
    request finish inside the SLO budget. When even a batch of one cannot save it, the
    oldest is late anyway and a full batch drains the queue fastest."""
    size = max(1, min(queued, max_batch))
    if slo_s <= 0:
        return size
    budget = slo_s * SLO_BUDGET - oldest_age_s
    if estimate_s(1) > budget:
        return size
    while size > 1 and estimate_s(size) > budget:
        size -= 1
    return size


class ArrivalRate:
    """Exponentially weighted arrivals per second, with an injected clock."""

    def __init__(self, now_s: float, halflife_s: float = 1.0) -> None:
        self._halflife_s = halflife_s
        self._last_s = now_s
        self._rate = 0.0

    def record(self, now_s: float, count: int = 1) -> None:
        elapsed = max(now_s - self._last_s, 1e-6)
        decay = 0.5 ** (elapsed / self._halflife_s)
        # The instantaneous rate count/elapsed blends in with weight (1 - decay).
        self._rate = decay * self._rate + (1 - decay) * count / elapsed
        self._last_s = now_s

    def rate(self, now_s: float) -> float:
        elapsed = max(now_s - self._last_s, 0.0)
        return self._rate * 0.5 ** (elapsed / self._halflife_s)


class BatchQueue(Generic[T]):
    """A worker's queue and every batching decision over it, with an injected clock: the
    decision logic that the worker's batching loop (`serving.py`) and the serving simulator
    both run, so a batch forms at the same moment with the same size in both.

    The loop around it: while the queue is empty, wait for an arrival. Then ask `wait_s`:
    0 means run now (`take`); otherwise keep collecting for that long, and ask again when a
    request arrives meanwhile; when the wait runs out without one, run (`take`) without
    asking again. `estimate_s(batch, share)` is the engine's wall-time estimate of a batch.
    """

    def __init__(self, slo_s: float, max_batch: int, estimate_s: Callable[[int, float], float],
                 now_s: float) -> None:
        self.slo_s = slo_s
        self.max_batch = max_batch
        self._estimate_s = estimate_s
        self._queue: deque[tuple[float, T]] = deque()
        self._arrivals = ArrivalRate(now_s)

    def __len__(self) -> int:
        return len(self._queue)

    def push(self, item: T, now_s: float) -> None:
        self._queue.append((now_s, item))
        self._arrivals.record(now_s)

    def wait_s(self, now_s: float, share: float) -> float:
        """How long to keep collecting before running what is queued (0: run now)."""
        if not self._queue:
            return 0.0
        return batch_wait_s(BatchState(
            queued=len(self._queue), oldest_age_s=now_s - self._queue[0][0],
            max_batch=self.max_batch, slo_s=self.slo_s,
            full_batch_s=self._estimate_s(self.max_batch, share),
            arrival_rps=self._arrivals.rate(now_s)))

    def take(self, now_s: float, share: float) -> list[tuple[float, T]]:
        """The batch to run now, oldest first, as (arrival time, item); at least one when
        anything is queued."""
        if not self._queue:
            return []
        size = batch_size(len(self._queue), self.max_batch, self.slo_s,
                          now_s - self._queue[0][0], lambda b: self._estimate_s(b, share))
        return [self._queue.popleft() for _ in range(size)]

    def clear(self) -> list[tuple[float, T]]:
        """Everything queued, removed (a failing or stopping worker fails them)."""
        items = list(self._queue)
        self._queue.clear()
        return items

"""Sizing one instance from its function's profile, in one step (no fixed increments).

Under time slicing a batch at effective share s takes about L(b, 100 %)/s, so a tight SLO
needs a high share *while a batch runs*, whatever the long-run load. Two numbers follow:

- the **limit** is the busy share: the smallest share (to 0.01) at which one instance
  carries its predicted rate × (1 + headroom) within the SLO, from the profile's capacity
  curve (`Curve.share_for`); the node agent's arbiter lends up to it whenever the instance
  waits for credit, and it costs nothing while the instance idles;
- the **request** is the guarantee: at least the share at which a lone request arriving at
  an idle instance meets its SLO before the arbiter has lent anything (the arbiter lends
  only once it has seen the gate wait, a period or two later), and at least the long-run
  GPU time of the predicted rate at the instance's batch.

Worked numbers (bert-base, SLO 50 ms, the stand-in profile, proxy 4 ms): capacity 17.6
req/s at share 0.8, 25.9 at 0.9, 34.5 at 1.0 (best batch 4, 8, 8). At a predicted 16 req/s
and headroom 0.25 an instance must carry 20 req/s: limit 0.83, batch 4. The lone-batch
share is 0.28; 20 req/s × 32.7 ms / 4 = 0.16 of a GPU of long-run time: request 0.28.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from services.scaler.coscale.context import Profile
from services.scaler.coscale.settings import MIN_SHARE

GRID = tuple(k / 100 for k in range(1, 101))


@dataclass(frozen=True, slots=True)
class Curve:
    """A profile on a 0.01 grid: capacity made monotone in the share (a higher share never
    carries less: an instance at share s may always behave as at any lower one), the
    best batch at each share, and the lone-batch share."""

    capacity_rps: tuple[float, ...]   # [k]: at share GRID[k]
    batch: tuple[int, ...]
    lone_share: float                 # 1.0 when not even a whole GPU meets the SLO alone
    gpu_s_per_request: tuple[float, ...]  # [k]: at batch[k]
    lone_gpu_s: float                 # whole-GPU time of a batch of one

    def capacity(self, share: float) -> float:
        k = math.floor(round(share * 100, 6)) - 1
        return self.capacity_rps[k] if k >= 0 else 0.0

    def batch_at(self, share: float) -> int:
        k = max(0, math.floor(round(share * 100, 6)) - 1)
        return self.batch[min(k, len(self.batch) - 1)]

    def share_for(self, rate_rps: float) -> float | None:
        """The smallest share (≥ the lone-batch share) carrying `rate_rps`; None if even a
        whole GPU does not."""
        k = bisect.bisect_left(self.capacity_rps, rate_rps - 1e-9)
        if k >= len(GRID):
            return None
        return max(GRID[k], self.lone_share)

    # ---- several instances behind the least-outstanding router ----------------------------

    def pool_capacity(self, shares: Sequence[float], miss: float) -> float:
        """The highest rate `len(shares)` instances at these busy shares carry with at most
        `miss` of requests late: each carries its own capacity, or, pooled, a request that
        finds every instance busy waits for the first to free up (M/M/n): it is late when
        it waits longer than the slack a lone batch leaves (the lone-batch share's
        latency minus the pool's service time)."""
        alone = sum(self.capacity(s) for s in shares)
        usable = [s for s in shares if s >= self.lone_share - 1e-9]
        if not usable:
            return alone
        service_s = self.lone_gpu_s / (sum(usable) / len(usable))
        slack_s = max(0.0, self.lone_gpu_s / self.lone_share - service_s)
        return max(alone, erlang_capacity(len(usable), round(service_s, 5), round(slack_s, 5),
                                          miss))

    def pool_share_for(self, rate_rps: float, count: int, miss: float) -> float | None:
        """The smallest share (≥ the lone-batch share) at which `count` instances carry
        `rate_rps` together; None if even whole GPUs do not."""
        low, high = 0, len(GRID) - 1
        if self.pool_capacity([GRID[high]] * count, miss) < rate_rps - 1e-9:
            return None
        while low < high:
            middle = (low + high) // 2
            if self.pool_capacity([GRID[middle]] * count, miss) >= rate_rps - 1e-9:
                high = middle
            else:
                low = middle + 1
        return max(GRID[low], self.lone_share)

    def long_run_share(self, rate_rps: float, share: float) -> float:
        """Whole-GPU time per second `rate_rps` costs at the batch used at `share`."""
        k = max(0, math.floor(round(share * 100, 6)) - 1)
        return rate_rps * self.gpu_s_per_request[k]


def curve(profile: Profile) -> Curve:
    """The profile's curve (cached for hashable profiles, such as the frozen stand-in)."""
    if isinstance(profile, Hashable):
        try:
            return _curve_cached(profile)
        except TypeError:  # hashable type, unhashable contents
            pass
    return _curve(profile)


@lru_cache(maxsize=1024)
def _curve_cached(profile: Hashable) -> Curve:
    return _curve(profile)  # type: ignore[arg-type]  # only profiles are passed


def _curve(profile: Profile) -> Curve:
    capacity: list[float] = []
    batches: list[int] = []
    best = 0.0
    for share in GRID:
        batch = profile.best_batch(share)
        best = max(best, profile.capacity(share, batch))
        capacity.append(best)
        batches.append(batch)
    lone = profile.lone_batch_share(1)
    lone = 1.0 if lone is None else max(MIN_SHARE, min(1.0, lone))
    cost = tuple(profile.gpu_s_per_request(b) for b in batches)
    return Curve(tuple(capacity), tuple(batches), lone, cost, profile.gpu_s_per_request(1))


def wait_tail(servers: int, rate_rps: float, service_s: float, slack_s: float) -> float:
    """M/M/n: the part of requests that wait longer than `slack_s` (Erlang C, then the
    exponential tail of the wait)."""
    load = rate_rps * service_s
    if load >= servers:
        return 1.0
    blocked = 1.0  # Erlang B by its recurrence, then Erlang C from it
    for k in range(1, servers + 1):
        blocked = load * blocked / (k + load * blocked)
    waiting = servers * blocked / (servers - load * (1 - blocked))
    return waiting * math.exp(-(servers / service_s - rate_rps) * slack_s)


@lru_cache(maxsize=65536)
def erlang_capacity(servers: int, service_s: float, slack_s: float, miss: float) -> float:
    """The highest rate at which `wait_tail` stays within `miss` (to 0.5 %)."""
    low, high = 0.0, servers / service_s
    while high - low > 0.005 * high:
        middle = (low + high) / 2
        if wait_tail(servers, middle, service_s, slack_s) <= miss:
            low = middle
        else:
            high = middle
    return low


def start_quota(profile: Profile, rate_rps: float, capacity_headroom: float, miss: float,
                at_most: float = 0.5) -> tuple[float, float, int]:
    """The quota a function is deployed with (and `ScaleOut` places): the busy share at
    which one instance carries `rate_rps` (its expected rate, e.g. the mean of its trace)
    × (1 + headroom), at least the lone-batch share and at most `at_most` — half a GPU
    fits beside any training job that requests at most the other half, so a new instance
    can go where a GPU is held anyway, and the policy grows it there by squeezing the
    training. Request = limit = that share (a guarantee placement packs against);
    maximum batch: the best there. Returns (request, limit, max batch)."""
    c = curve(profile)
    share = c.pool_share_for(rate_rps * (1 + capacity_headroom), 1, miss) or 1.0
    share = min(max(share, c.lone_share), max(at_most, c.lone_share))
    return share, share, c.batch_at(share)

"""Knative's pod autoscaler (KPA), as `knative/serving` decides (`pkg/autoscaler/scaling/
autoscaler.go` and the metric collector's window averages), with its defaults.

Every second the collector records the revision's observed concurrency (the requests in
flight in its pods, averaged over the second, summed over pods); every tick (2 s) the
decider averages it over the stable window (60 s) and the panic window (10 % of it, 6 s)
— a plain average over the buckets recorded so far, so a young revision averages what it
has — and wants

    stable = ceil(stable average / target),  panic = ceil(panic average / target)

each kept within [floor(ready / max scale-down rate), ceil(max scale-up rate × ready)]
(ready counted as at least 1). It panics when panic / ready ≥ the panic threshold (200 %),
and a revision created with more than one ready pod starts panicking; while over the
threshold the panic is extended; it ends once the threshold is no longer crossed and the
last crossing is more than a stable window ago. While panicking it takes the larger of
the two counts and never scales down below the most it wanted during the panic;
otherwise it takes the stable count. The reconciler then keeps it within the revision's
minimum and maximum scale (here the scenario's replica bounds; no scale to zero).

Here the target is `target_utilization` (70 %) of the concurrency one instance carries at
its stand-in capacity, by Little's law: the capacity times the mean time a request spends
in the instance at that rate (`concurrency_at_capacity`, measured with the simulator's own
single-instance model at the same arrivals the profile was measured with). The proxy
overhead is left out because the observed concurrency, as a queue-proxy counts it, is the
requests routed to an instance and not yet answered. Requests waiting for a ready instance
(held by the activator in Knative) count as well.

Not modelled: scale to zero, activation scale and the scale-down delay (both 0 by default),
the target burst capacity (it only decides whether the activator stays in the path).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from services.perf import load_model
from services.simulator.serving import policy as hooks
from services.simulator.serving.instances import READY, InferenceInstance
from services.simulator.serving.profile import REQUESTS, SEED, StandInProfile

NS = 1_000_000_000
TARGET_MIN = 0.01  # Knative's smallest target


@dataclass(frozen=True, slots=True)
class KpaSettings:
    """Knative's defaults (`config-autoscaler`)."""

    stable_window_s: float = 60.0
    panic_window_percentage: float = 10.0
    panic_threshold: float = 2.0          # 200 %
    tick_s: float = 2.0
    target_utilization: float = 0.7       # container-concurrency-target-percentage
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0

    @property
    def panic_window_s(self) -> float:
        return self.stable_window_s * self.panic_window_percentage / 100

    def published(self) -> dict[str, object]:
        return {"kpa_stable_window_s": self.stable_window_s,
                "kpa_panic_window_s": self.panic_window_s,
                "kpa_panic_threshold": f"{100 * self.panic_threshold:.0f}%",
                "kpa_tick_s": self.tick_s,
                "kpa_target": f"{100 * self.target_utilization:.0f}% of the concurrency at "
                              "stand-in capacity (Little's law)",
                "kpa_max_scale_up_rate": self.max_scale_up_rate,
                "kpa_max_scale_down_rate": self.max_scale_down_rate}


class KpaDecider:
    """One revision's decider: `record` a one-second concurrency sample, `decide` every
    tick. Pure: time comes from the caller."""

    def __init__(self, target: float, settings: KpaSettings, ready: int, now_s: float) -> None:
        self.target = max(target, TARGET_MIN)
        self.settings = settings
        self._stable: deque[float] = deque(maxlen=max(1, math.ceil(settings.stable_window_s)))
        self._panic: deque[float] = deque(maxlen=max(1, math.ceil(settings.panic_window_s)))
        # A decider created over more than one ready pod starts in panic mode.
        self.panic_since: float | None = now_s if ready > 1 else None
        self.max_panic_pods = ready

    def record(self, concurrency: float) -> None:
        self._stable.append(concurrency)
        self._panic.append(concurrency)

    @property
    def panicking(self) -> bool:
        return self.panic_since is not None

    def decide(self, ready: int, now_s: float) -> int:
        """The pod count the revision should have (before its min/max scale)."""
        if not self._stable:
            return max(ready, 0)  # no data yet: Knative makes no decision
        s = self.settings
        pods = max(1.0, float(ready))
        stable = sum(self._stable) / len(self._stable)
        panic = sum(self._panic) / len(self._panic)
        most = math.ceil(s.max_scale_up_rate * pods)
        least = math.floor(pods / s.max_scale_down_rate)
        want_stable = math.ceil(round(stable / self.target, 9))
        want_panic = math.ceil(round(panic / self.target, 9))
        desired_stable = int(min(max(want_stable, least), most))
        desired_panic = int(min(max(want_panic, least), most))
        over = want_panic / pods >= s.panic_threshold
        if over:
            self.panic_since = now_s  # begin, or extend, the panic
        elif self.panic_since is not None and self.panic_since + s.stable_window_s < now_s:
            self.panic_since = None
            self.max_panic_pods = 0
        if self.panic_since is None:
            return desired_stable
        desired = max(desired_stable, desired_panic)
        self.max_panic_pods = max(self.max_panic_pods, desired)  # never down while panicking
        return self.max_panic_pods


# ---- the target: concurrency at capacity, by Little's law -----------------------------


class _Recorder:
    """One instance alone, recording how long each request stays in it."""

    def __init__(self, slo_ms: float) -> None:
        self._heap: list[tuple[int, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = itertools.count()
        self.slo_s = slo_ms / 1000
        self.inside_ns = 0
        self.answered_count = 0

    def schedule(self, at_ns: int, action: Callable[..., None], *args: Any, first: bool = False) -> None:
        heapq.heappush(self._heap, (at_ns, next(self._seq), action, args))

    def add_busy(self, gpus: tuple[str, ...], work_ns: int) -> None:
        pass

    def answered(self, instance: Any, now_ns: int, batch: list[int]) -> None:
        self.inside_ns += sum(now_ns - arrived for arrived in batch)
        self.answered_count += len(batch)

    def run(self, instance: InferenceInstance, arrivals: list[int]) -> None:
        heap, pop = self._heap, heapq.heappop
        for at in arrivals:
            while heap and heap[0][0] <= at:
                when, _, action, args = pop(heap)
                action(when, *args)
            instance.arrive(at, at)
        while heap:
            when, _, action, args = pop(heap)
            action(when, *args)


def concurrency_at_capacity(profile: StandInProfile, share: float, max_batch: int) -> tuple[float, float]:
    """(capacity in req/s, requests in flight at that rate): the instance at `share` with
    `max_batch`, alone, fed the profile's Poisson arrivals at its stand-in capacity; the
    concurrency is the capacity times the mean time a request spent in it."""
    rate = profile.capacity(share, max_batch)
    if rate <= 0:
        return 0.0, 0.0
    recorder = _Recorder(profile.slo_ms)
    instance = InferenceInstance(recorder, recorder, "alone", "node", ("gpu",), share, share,  # type: ignore[arg-type]
                                 0, max_batch, load_model(profile.model), 0)
    instance.state = READY
    unit = np.cumsum(np.random.default_rng(SEED).exponential(1.0, REQUESTS))
    recorder.run(instance, np.round(unit / rate * NS).astype(np.int64).tolist())
    mean_s = recorder.inside_ns / max(1, recorder.answered_count) / NS
    return rate, rate * mean_s


# ---- the policy -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KpaTarget:
    """What the KPA of one function is configured with."""

    share: float
    max_batch: int
    capacity_rps: float
    concurrency: float   # in flight at capacity
    target: float        # target_utilization × concurrency


def kpa_target(profile: StandInProfile | None, share: float, max_batch: int,
               settings: KpaSettings) -> KpaTarget:
    if profile is None:
        return KpaTarget(share, max_batch, 0.0, 0.0, TARGET_MIN)
    capacity, concurrency = concurrency_at_capacity(profile, share, max_batch)
    return KpaTarget(share, max_batch, capacity, concurrency,
                     max(TARGET_MIN, settings.target_utilization * concurrency))


class KpaPolicy:
    """Knative's KPA for every function of a scenario: samples each second, decides every
    tick, scales to the decided count within the replica bounds."""

    interval_s = 1.0  # the collector's scrape; the decider runs every `settings.tick_s`

    def __init__(self, targets: Mapping[str, KpaTarget], initial: Mapping[str, int],
                 settings: KpaSettings = KpaSettings()) -> None:
        self.targets = dict(targets)
        self.settings = settings
        self.desired = dict(initial)   # the replica count last asked for (Knative's want)
        self._deciders: dict[str, KpaDecider] = {}

    def decide(self, view: hooks.ClusterView) -> Sequence[hooks.Action]:
        now = view.now_s
        tick = _on_multiple(now, self.settings.tick_s)
        actions: list[hooks.Action] = []
        for name, function in view.functions.items():
            ready = sum(1 for i in function.instances if i.state == READY)
            decider = self._deciders.get(name)
            if decider is None:  # created with the revision, at the deployment (t = 0)
                decider = self._deciders[name] = KpaDecider(
                    self.targets[name].target, self.settings, ready, 0.0)
            decider.record(observed_concurrency(function))
            if not tick:
                continue
            want = decider.decide(ready, now)
            want = min(max(want, function.replicas_min), function.replicas_max)
            actions += scale_to(name, self.desired[name], want, "kpa")
            self.desired[name] = want
        return actions


def observed_concurrency(function: hooks.FunctionView) -> float:
    """The revision's concurrency over the last second: requests in flight in its
    instances (time-averaged), plus those waiting for a ready instance."""
    return sum(i.window.concurrency for i in function.instances if i.window is not None) + (
        function.queued)


def scale_to(name: str, current: int, want: int, reason: str) -> list[hooks.Action]:
    if want > current:
        return [hooks.ScaleOut(name, want - current, reason=reason)]
    return [hooks.ScaleIn(name, reason=reason) for _ in range(current - want)]


def _on_multiple(now_s: float, period_s: float) -> bool:
    ratio = now_s / period_s
    return abs(ratio - round(ratio)) < 1e-6

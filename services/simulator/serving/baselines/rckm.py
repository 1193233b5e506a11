"""The Dilu paper's node arbitration: the RCKM rule of the reference code
(`sigserverless/Dilu`, `adaptive_2D_scaling/vertical_scaling/server/RCKM.c`).

Every 5 ms tick each inference instance reports whether it launched work in the tick.
Inference is never throttled: it may take whatever the GPU has. Training is cut to a budget
that follows inference's busy periods (a *burst*: consecutive ticks with work):

- when a burst of an instance ends, it is compared with the shortest burst of more than 6
  ticks that instance has had (the burst itself included): at a ratio ≥ 1.6 (and < 4.0)
  training's budget is divided by the ratio, to at least 1 % of its request; at a ratio
  < 1.2, on every 5th burst of the instance, it is multiplied by 1.3, to at most its request;
- while any inference instance on the GPU had work in the last 0.5 s (100 ticks) each
  training job runs at budget × its request; once every one has been idle for longer,
  training gets its limit back and the budget is reset to the whole request;
- the budget starts at 10 % of the request (the reference's initial conservative limit);
  when an inference instance leaves, it becomes 1 − Σ the requests of the inference
  instances that stay (as the reference resets it), within [1 %, 100 %].

As shares (the simulator's execution model needs the GPU's time to add up): training gets
its budget, or its limit when inference is idle (several training jobs on a GPU together at
most the whole GPU); the inference instances share what the budgeted training leaves,
1 − Σ budget × request, equally among those busy in the tick (an idle one holds the part it
would get if it started now, so a starting batch runs at once; the cut takes effect at the
next tick, as the reference's within 5 ms). A gang runs at its most constrained GPU.

Where this follows the issue rather than the reference: the budget is per GPU (the
reference keeps one conservative limit for all GPUs of a node) and its floor is 1 % of the
request (the reference's floor, 1 % × Σ requests of the GPU's low-priority tasks in units
of the limit, is the same for one job); "idle" is every inference instance idle for more
than 100 ticks (the reference's check has a quirk for instances idle for at most 10 ticks);
LLM inference (the reference's 1.3 threshold and the history minimum) is not modelled.

`RckmGpu` is the rule as a pure object, ticked every 5 ms; `RckmDriver` drives it for one
node on events — only the ticks where some instance starts or stops having work, or
where "idle for 0.5 s" begins — and catches up the skipped ticks exactly (`RckmGpu.skip`);
with `ticked=True` it evaluates every tick, and a test checks that both give the same
shares at the same moments.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from services.simulator.serving.arbitration import ceil_tick

TICK_NS = 5_000_000
EMERGENCY_RATIO = 1.6     # OVERFLOW_RATE_D
CEILING_RATIO = 4.0       # OVERFLOW_RATE_U
RECOVERY_RATIO = 1.2      # OVERFLOW_RATE_A
RECOVERY_EVERY = 5        # bursts
INCREASE = 1.3            # INCREASE_FACTOR
FLOOR = 0.01              # CONTROL_FACTOR, of the request
IDLE_TICKS = 100          # WINDOW_SIZE: 0.5 s
MIN_BURST_TICKS = 6       # only bursts longer than this set the shortest
INITIAL_BUDGET = 0.1      # CONSERVATIVE_LIMIT / UPPER_LIMIT at start


@dataclass(slots=True)
class Track:
    """One inference instance as the RCKM follows it."""

    burst: int = 0          # consecutive ticks with work, so far
    idle: int = 0           # consecutive ticks without
    shortest: int = 0       # the shortest burst of more than 6 ticks (0: none yet)
    bursts: int = 0         # bursts ended


@dataclass(frozen=True, slots=True)
class Claim:
    instance_id: str
    inference: bool
    request: float
    limit: float


class RckmGpu:
    """The rule for one GPU. `tick(present, busy)` is one 5 ms period ending now, with the
    inference instances present and those that had work in it; `skip(n)` is n more ticks
    in which nobody starts or stops having work."""

    def __init__(self, initial_budget: float = INITIAL_BUDGET) -> None:
        self.budget = initial_budget     # of each training job's request
        self.tracks: dict[str, Track] = {}
        self.busy: frozenset[str] = frozenset()
        self.idle = False                # every inference instance idle for > 0.5 s

    def tick(self, present: Iterable[str], busy: Iterable[str]) -> None:
        busy = frozenset(busy)
        for instance_id in sorted(present):
            track = self.tracks.setdefault(instance_id, Track())
            if instance_id in busy:
                if track.burst == 0:
                    track.idle = 0
                track.burst += 1
            else:
                if track.burst > 0:
                    self._burst_ended(track)
                    track.burst = 0
                track.idle += 1
        self.busy = busy
        self._check_idle()

    def skip(self, ticks: int) -> None:
        if ticks <= 0:
            return
        for instance_id, track in self.tracks.items():
            if instance_id in self.busy:
                track.burst += ticks
            else:
                track.idle += ticks
        self._check_idle()

    def leave(self, instance_id: str, requests_staying: float) -> None:
        """An inference instance left; `requests_staying`: Σ requests of those that stay."""
        self.tracks.pop(instance_id, None)
        self.busy = self.busy - {instance_id}
        self.budget = _clamp(1.0 - requests_staying)

    def _burst_ended(self, track: Track) -> None:
        length = track.burst
        if length > MIN_BURST_TICKS and (track.shortest == 0 or length < track.shortest):
            track.shortest = length
        track.bursts += 1
        ratio = length / track.shortest if track.shortest else 0.0
        if EMERGENCY_RATIO <= ratio < CEILING_RATIO:
            self.budget = max(FLOOR, self.budget / ratio)
        elif ratio < RECOVERY_RATIO and track.bursts % RECOVERY_EVERY == 0:
            self.budget = min(1.0, self.budget * INCREASE)

    def _check_idle(self) -> None:
        self.idle = bool(self.tracks) and all(t.idle > IDLE_TICKS for t in self.tracks.values())
        if self.idle:
            self.budget = 1.0

    def idle_from(self) -> int | None:
        """In how many more ticks (with nobody starting work) the GPU counts as idle; None
        when someone is busy or it is idle already."""
        if self.busy or self.idle or not self.tracks:
            return None
        return IDLE_TICKS + 1 - min(t.idle for t in self.tracks.values())

    def shares(self, claims: Iterable[Claim]) -> dict[str, float]:
        claims = list(claims)
        training = [c for c in claims if not c.inference]
        inference = [c for c in claims if c.inference]
        budgeted = {c.instance_id: self.budget * c.request for c in training}
        # Training runs at its limit while inference is idle, else at its budget.
        limits = {c.instance_id: c.limit for c in training}
        running = limits if not inference or self.idle else dict(budgeted)
        total = sum(running.values())
        if total > 1.0:
            running = {i: s / total for i, s in running.items()}
        shares = dict(running)
        left = max(0.0, 1.0 - sum(budgeted.values()))
        busy = sum(1 for c in inference if c.instance_id in self.busy)
        for c in inference:
            shares[c.instance_id] = left / (busy if c.instance_id in self.busy else busy + 1)
        return shares


def _clamp(budget: float) -> float:
    return min(1.0, max(FLOOR, budget))


# ---- the driver -------------------------------------------------------------------------


@dataclass(slots=True)
class _Work:
    """An inference instance's current (or last) batch and the one before, [start, end)."""

    start: int = -1
    end: int = -1
    previous_start: int = -1
    previous_end: int = -1

    def busy_in(self, tick: int, period: int) -> bool:
        """Whether a batch was in progress at some moment of [tick - period, tick)."""
        low = tick - period
        return ((0 <= self.start < tick and self.end > low)
                or (0 <= self.previous_start < tick and self.previous_end > low))


class RckmDriver:
    """One per node: the RCKM rule on each of its GPUs, setting every member's share.

    A GPU is evaluated at the ticks where its input may change — a member joins, leaves or
    changes quota; an inference member's first tick with a new batch and first tick after
    its batch (both known when the batch starts or is re-paced: `poke`); the tick its
    inference has been idle for 0.5 s — and its skipped ticks are caught up first
    (`RckmGpu.skip`). With `ticked=True` every GPU is evaluated every tick."""

    def __init__(self, schedule: Callable[..., None], node: str, gpus: list[str], *,
                 ticked: bool = False, period_ns: int = TICK_NS,
                 on_shares: Callable[[int, dict[str, float]], None] | None = None,
                 initial_budget: float = INITIAL_BUDGET) -> None:
        self._schedule = schedule
        self.node = node
        self.ticked = ticked
        self.period_ns = period_ns
        self.rules = {uuid: RckmGpu(initial_budget) for uuid in gpus}
        self.on_gpu: dict[str, dict[str, Any]] = {uuid: {} for uuid in gpus}
        self.instances: dict[str, Any] = {}
        self.work: dict[str, _Work] = {}
        self.claims: dict[str, Claim] = {}
        self.shares: dict[str, float] = {}
        self._gpu_shares: dict[str, dict[str, float]] = {uuid: {} for uuid in gpus}
        self._left: list[tuple[str, tuple[str, ...]]] = []
        self._last: dict[str, int] = {}              # GPU -> its last evaluated tick
        # tick -> GPUs to look at then: those whose busy flags may change, and (`_must`)
        # those whose members, quotas or idleness change.
        self._marked: dict[int, set[str]] = {}
        self._must: dict[int, set[str]] = {}
        self._on_shares = on_shares
        self.evaluations = 0

    # ---- membership and work ---------------------------------------------------------

    def attach(self, instance: Any, now_ns: int) -> None:
        self.instances[instance.id] = instance
        instance.arbitration = self
        for uuid in instance.gpus:
            self.on_gpu[uuid][instance.id] = instance
        if not instance.training:
            self.work[instance.id] = _Work()
        self.update(instance, now_ns)

    def update(self, instance: Any, now_ns: int, draining: bool = False) -> None:
        """A quota change (or a drain, which changes nothing here): seen at the next tick."""
        self.claims[instance.id] = Claim(instance.id, not instance.training, instance.request,
                                         instance.limit)
        self._mark(self._after(now_ns), instance.gpus, must=True)

    def detach(self, instance: Any, now_ns: int) -> None:
        self.instances.pop(instance.id, None)
        self.shares.pop(instance.id, None)
        self.claims.pop(instance.id, None)
        for uuid in instance.gpus:
            self.on_gpu[uuid].pop(instance.id, None)
            self._gpu_shares[uuid].pop(instance.id, None)
        if self.work.pop(instance.id, None) is not None:
            self._left.append((instance.id, instance.gpus))
        instance.arbitration = None
        self._mark(self._after(now_ns), instance.gpus, must=True)

    def poke(self, instance: Any, now_ns: int) -> None:
        """A new batch started, or the one running was re-paced: note when it ends."""
        work = self.work.get(instance.id)
        if work is None or instance.run is None:
            return
        if work.start < 0 or now_ns >= work.end:   # a new batch (the last one has ended)
            work.previous_start, work.previous_end = work.start, work.end
            work.start = now_ns
        work.end = instance.run.end_ns
        if not self.ticked:
            self._mark(self._after(now_ns), instance.gpus)
            # The first tick whose period holds none of the batch.
            self._mark(ceil_tick(work.end, self.period_ns) + self.period_ns, instance.gpus)

    def start(self, now_ns: int) -> None:
        self._mark(self._after(now_ns), tuple(self.rules), must=True)

    # ---- evaluation ------------------------------------------------------------------

    def _after(self, now_ns: int) -> int:
        return ceil_tick(now_ns + 1, self.period_ns)

    def _mark(self, tick: int, gpus: Iterable[str], must: bool = False) -> None:
        marked = self._marked.get(tick)
        if marked is None:
            marked = self._marked[tick] = set()
            self._schedule(tick, self._evaluate, first=True)
        marked.update(gpus)
        if must:
            self._must.setdefault(tick, set()).update(gpus)

    def _evaluate(self, tick: int) -> None:
        gpus = self._marked.pop(tick)
        must = self._must.pop(tick, set())
        if self.ticked:
            gpus = must = set(self.rules)
        period = self.period_ns
        for instance_id, left_gpus in self._left:
            for uuid in left_gpus:
                self._catch_up(uuid, tick)
                staying = sum(i.request for i in self.on_gpu[uuid].values() if not i.training)
                self.rules[uuid].leave(instance_id, staying)
                must.add(uuid)
        self._left.clear()
        touched: set[str] = set()
        for uuid in sorted(gpus | must):
            members = self.on_gpu[uuid]
            rule = self.rules[uuid]
            present = [i for i, m in members.items() if not m.training]
            busy = frozenset(i for i in present if self.work[i].busy_in(tick, period))
            if uuid not in must and busy == rule.busy:
                continue  # no flag changed: the skipped ticks are caught up later, exactly
            self.evaluations += 1
            self._catch_up(uuid, tick)
            rule.tick(present, busy)
            self._gpu_shares[uuid] = rule.shares([self.claims[i] for i in members])
            touched.update(members)
            idle_in = rule.idle_from()
            if idle_in is not None and not self.ticked:
                self._mark(tick + idle_in * period, (uuid,), must=True)
        changed: dict[str, float] = {}
        for instance_id in sorted(touched):
            instance = self.instances[instance_id]
            share = min(self._gpu_shares[u].get(instance_id, instance.request) for u in instance.gpus)
            if self.shares.get(instance_id) != share:
                self.shares[instance_id] = changed[instance_id] = share
        if changed and self._on_shares is not None:
            self._on_shares(tick, changed)
        for instance_id, share in changed.items():
            self.instances[instance_id].set_share(tick, share)
        if self.ticked:
            self._mark(tick + period, ())

    def _catch_up(self, uuid: str, tick: int) -> None:
        """Run the GPU's rule over the ticks since it was last evaluated, in which nothing
        changed (else it would have been evaluated then)."""
        last = self._last.get(uuid)
        if last is not None and last < tick:
            self.rules[uuid].skip((tick - last) // self.period_ns - 1)
        self._last[uuid] = tick

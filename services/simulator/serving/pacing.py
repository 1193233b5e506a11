"""A batch's (or a training step's GPU part's) pacing through the gate, in closed form.

A sim worker runs `work` ns of whole-GPU time as launches of one burst
(`token_bucket.launch_ns`), each admitted by the `TokenBucket` and then run at full speed;
a refused launch sleeps `retry_ns` and asks again (`worker/gate.py`). With the control page
unchanged that sequence is arithmetic: after the first launch, full launches are admitted
exactly `burst / share` apart. `PacedRun` computes it in O(1) — when the run ends, the
bucket after it, every launch and every end of a wait — instead of one event per launch.
`resume` continues a run under a new share from the first gate step at or after the
change, as the worker does: the sleep or launch in progress finishes as it began.

Exactness: the arithmetic is the bucket's own (integer ns, shares in ppm), and
`tests/unit/test_serving_pacing.py` checks every figure against a step-by-step run of
the real `TokenBucket`.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.node_agent.token_bucket import BucketParams, TokenBucket, wall_ns


@dataclass(frozen=True, slots=True)
class Launch:
    asked_ns: int
    admitted_ns: int
    size_ns: int

    @property
    def waited(self) -> bool:
        return self.admitted_ns > self.asked_ns

    @property
    def end_ns(self) -> int:
        return self.admitted_ns + self.size_ns


class PacedRun:
    """`work_ns` of GPU time asked for at `start_ns` by a bucket whose theoretical arrival
    time is `tat_ns`, with `params` constant. `first_launch_ns` is a launch already cut
    (under an earlier burst) and waiting; `wait_end_at_start` says that `start_ns` is the
    end of a sleep (a resumed wait), which the arbiter sees as waiting."""

    __slots__ = ("_a1", "_a2", "_after_middle", "_ar", "_ask_r", "_burst", "_middle", "_period",
                 "_preformed", "_remainder", "_step", "_x1", "end_ns", "params", "start_ns", "tat0_ns",
                 "tat_ns", "throttled_ns", "wait_end_at_start", "work_ns")

    def __init__(self, tat_ns: int, start_ns: int, work_ns: int, params: BucketParams,
                 first_launch_ns: int = 0, wait_end_at_start: bool = False) -> None:
        if params.paused or params.share_ppm <= 0:
            raise ValueError("a paused gate admits nothing: no run can be paced")
        if work_ns < 1 or first_launch_ns > work_ns:
            raise ValueError(f"bad run: work {work_ns} ns, first launch {first_launch_ns} ns")
        self.params = params
        self.start_ns = start_ns
        self.work_ns = work_ns
        self.tat0_ns = tat_ns
        self.wait_end_at_start = wait_end_at_start
        self._preformed = first_launch_ns
        self._period = params.period_ns
        burst = self._burst = max(1, params.burst_ns)
        x1 = self._x1 = first_launch_ns or min(work_ns, burst)
        limited = not params.unlimited
        ppm = params.share_ppm
        tol = wall_ns(burst, ppm) if limited else 0
        if limited:
            inc1 = wall_ns(x1, ppm)
            a1 = max(start_ns, tat_ns + inc1 - max(tol, inc1))
            tat = max(tat_ns, a1) + inc1
        else:
            a1, tat = start_ns, tat_ns
        self._a1 = a1
        middle, remainder = divmod(work_ns - x1, burst)
        self._middle, self._remainder = middle, remainder
        # Full launches after the first: admitted `step` apart once the first is in.
        self._step = tol if limited else burst
        ask2 = a1 + x1
        self._a2 = max(ask2, tat) if limited else ask2
        if middle:
            last = self._a2 + (middle - 1) * self._step
            tat = last + tol if limited else tat
            self._after_middle = last + burst
        else:
            self._after_middle = ask2
        self._ask_r = self._after_middle
        if remainder:
            if limited:
                inc_r = wall_ns(remainder, ppm)
                self._ar = max(self._ask_r, tat + inc_r - tol)
                tat = max(tat, self._ar) + inc_r
            else:
                self._ar = self._ask_r
            self.end_ns = self._ar + remainder
        else:
            self._ar = self._ask_r
            self.end_ns = self._after_middle
        self.tat_ns = tat
        throttled = (a1 - start_ns) + (self._ar - self._ask_r)
        if middle:
            throttled += (self._a2 - ask2) + (middle - 1) * (self._step - burst)
        self.throttled_ns = throttled

    # ---- launches ------------------------------------------------------------------

    @property
    def launches(self) -> int:
        return 1 + self._middle + (1 if self._remainder else 0)

    def launch(self, k: int) -> Launch:
        if k == 0:
            return Launch(self.start_ns, self._a1, self._x1)
        if k <= self._middle:
            admitted = self._a2 + (k - 1) * self._step
            asked = self._a1 + self._x1 if k == 1 else admitted - self._step + self._burst
            return Launch(asked, admitted, self._burst)
        if k == self._middle + 1 and self._remainder:
            return Launch(self._ask_r, self._ar, self._remainder)
        raise IndexError(k)

    def _index_at(self, t_ns: int) -> int:
        """The launch whose wait or run covers `t_ns` (start ≤ t < end)."""
        if t_ns < self._a1 + self._x1:
            return 0
        if self._middle and t_ns < self._after_middle:
            if t_ns < self._a2 + self._burst:
                return 1
            return (t_ns - self._burst - self._a2) // self._step + 2
        return self._middle + 1

    def _waiting_before(self, k: int) -> int | None:
        """The latest launch before `k` that waited for credit."""
        j = k - 1
        while j >= 0:
            if 2 <= j <= self._middle:
                if self._step > self._burst:
                    return j  # every full launch after the first waits
                j = 1
                continue
            if self.launch(j).waited:
                return j
            j -= 1
        return None

    def _waiting_after(self, k: int) -> int | None:
        """The earliest launch after `k` that waits for credit."""
        j = k + 1
        last = self.launches - 1
        while j <= last:
            if 2 <= j <= self._middle:
                if self._step > self._burst:
                    return j
                j = self._middle + 1
                continue
            if self.launch(j).waited:
                return j
            j += 1
        return None

    # ---- ends of waits (what the arbiter sees as hunger) ------------------------------

    def last_wait_end(self, t_ns: int) -> int | None:
        """The latest moment ≤ `t_ns` at which a sleep of the gate ended."""
        if t_ns < self.start_ns:
            return None
        k = self._index_at(min(t_ns, self.end_ns - 1))
        one = self.launch(k)
        if one.waited:
            if t_ns >= one.admitted_ns:
                return one.admitted_ns
            chunks = (t_ns - one.asked_ns) // self._period
            if chunks >= 1:
                return one.asked_ns + chunks * self._period
        j = self._waiting_before(k)
        if j is not None:
            return self.launch(j).admitted_ns
        return self.start_ns if self.wait_end_at_start else None

    def next_wait_end(self, t_ns: int) -> int | None:
        """The earliest moment > `t_ns` at which a sleep of the gate ends."""
        if t_ns >= self.end_ns:
            return None
        if t_ns < self.start_ns:
            if self.wait_end_at_start:
                return self.start_ns
            k = -1
        else:
            k = self._index_at(t_ns)
            one = self.launch(k)
            if one.waited and t_ns < one.admitted_ns:
                chunk = one.asked_ns + ((t_ns - one.asked_ns) // self._period + 1) * self._period
                return min(chunk, one.admitted_ns)
        j = self._waiting_after(k)
        if j is None:
            return None
        one = self.launch(j)
        return min(one.asked_ns + self._period, one.admitted_ns)

    def wait_ends(self) -> list[int]:
        """Every moment a sleep of the gate ends during the run (what the gate adds to its
        throttled counter at)."""
        ends = [self.start_ns] if self.wait_end_at_start else []
        for k in range(self.launches):
            one = self.launch(k)
            if one.waited:
                ends.extend(range(one.asked_ns + self._period, one.admitted_ns, self._period))
                ends.append(one.admitted_ns)
        return ends

    def final_wait_end(self) -> int | None:
        return self.last_wait_end(self.end_ns)

    # ---- a new share ---------------------------------------------------------------

    def resume(self, t_ns: int, params: BucketParams) -> PacedRun | None:
        """The rest of this run when the control page changes at `t_ns`: every gate step at
        or after `t_ns` reads the new page. None when the run has ended by then; the run
        itself when only its last launch, already running, is left."""
        if t_ns <= self.start_ns:
            return PacedRun(self.tat0_ns, self.start_ns, self.work_ns, params, self._preformed,
                            self.wait_end_at_start)
        if t_ns >= self.end_ns:
            return None
        k = self._index_at(t_ns)
        one = self.launch(k)
        done_before = self._work_before(k)
        if t_ns <= one.admitted_ns:
            # Waiting: the sleep in progress ends, then the launch asks under the new page.
            step = one.asked_ns + -(-(t_ns - one.asked_ns) // self._period) * self._period
            step = min(step, one.admitted_ns)
            # A launch is cut when it first asks: one asking exactly now is cut anew.
            slept = step > one.asked_ns
            return PacedRun(self._tat_before(k), step, self.work_ns - done_before, params,
                            one.size_ns if slept or (k == 0 and self._preformed) else 0,
                            wait_end_at_start=slept or (k == 0 and self.wait_end_at_start))
        # Running: the launch finishes, then the next one is cut under the new page.
        rest = self.work_ns - done_before - one.size_ns
        if rest <= 0:
            return self
        return PacedRun(self._tat_before(k + 1), one.end_ns, rest, params)

    def _work_before(self, k: int) -> int:
        if k == 0:
            return 0
        return self._x1 + min(k - 1, self._middle) * self._burst

    def _tat_before(self, k: int) -> int:
        """The bucket's theoretical arrival time when launch `k` asks."""
        if k == 0 or self.params.unlimited:
            return self.tat0_ns
        tol = self._step
        if k == 1:
            inc1 = wall_ns(self._x1, self.params.share_ppm)
            return max(self.tat0_ns, self._a1) + inc1
        j = min(k - 1, self._middle)
        return self._a2 + (j - 1) * self._step + tol


def step_through(bucket: TokenBucket, start_ns: int, work_ns: int, params: BucketParams,
                 change: tuple[int, BucketParams] | None = None) -> tuple[list[Launch], list[int]]:
    """The reference: the same run as `SimDevice` + `QuotaGate` do it, one gate step at a
    time on a virtual clock, the page changing to `change[1]` at `change[0]` (steps at or
    after it read the new page). Returns the launches and the ends of every sleep. Tests
    compare `PacedRun` with it."""
    from services.node_agent.token_bucket import launch_ns, retry_ns

    def page(now: int) -> BucketParams:
        return change[1] if change is not None and now >= change[0] else params

    now, remaining, launches, wait_ends = start_ns, work_ns, [], []
    while remaining > 0:
        size = launch_ns(remaining, page(now).burst_ns)
        asked = now
        while (wait := bucket.admit(now, size, page(now))) != 0:
            now += retry_ns(wait, page(now).period_ns)
            wait_ends.append(now)
        launches.append(Launch(asked, now, size))
        now += size
        bucket.complete(size, size, page(now))
        remaining -= size
    return launches, wait_ends

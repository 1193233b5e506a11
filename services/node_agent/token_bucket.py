"""The GPU-time token bucket: the rules of the quota gate, as one pure piece of code.

The same algorithm, line for line, is the CUDA shim's `limiter.c` (a test runs both on the
same random sequences and compares every answer). The Python gate of sim and CPU workers
(`worker/gate.py`), the serving simulator and the stand-in profile all use this module.

## The bucket (refill)

Kept as a *theoretical arrival time* `tat` (wall ns), in integers: admitting a launch of
`c` ns of GPU time at share `s` moves `tat` to `max(tat, now) + c / s`, so a caller that
launches back to back gets exactly `s` of the GPU's time. The credit at `now` is
`burst - s × (tat - now)`, never more than the burst: idle time refills the bucket at
`s × elapsed` up to the burst and no further. A launch is admitted when the credit covers
it; a launch bigger than the burst (an indivisible kernel or torch batch) is admitted when
the bucket is full and goes alone, leaving a debt that the next launches wait out. The
credit is never raised to a waiting launch's cost (the rule before this one did, so a
10 ms launch at any share ran at full speed after every idle gap).

## The three rules and why

- **Burst = one period at the share** (`default_burst_ns`: `s × 10 ms` of GPU time). It
  bounds what an instance can run at full speed after an idle gap to what its share earns
  in one arbiter period, so two neighbours bursting at once overrun the GPU by at most one
  period, and a quota cut holds within one period.
- **Refill to the burst only.** Idle time is worth at most one burst, whatever the launch
  that comes next.
- **Launch size = the burst** for divisible work (`launch_ns`: the sim runtime cuts a
  batch's GPU time into launches of `s × 10 ms`). A launch never exceeds the credit one
  period earns, so a saturated instance runs one launch per period: full speed for
  `s × 10 ms`, idle for `(1 - s) × 10 ms` — time slicing at the arbiter's period.

Worked numbers (bert-base, batch 1: 14.98 ms of whole-GPU time):

| share | back to back (L/s) | after an idle gap, this rule | after a gap, the old rule |
|---|---|---|---|
| 0.5 | 29.96 ms | 24.94 ms (5 ms launches at 0, 10, 19.96 ms) | 14.98 ms |
| 0.2 | 74.90 ms | 65.88 ms (2 ms launches, one per 10 ms) | 29.88 ms |

so a lone batch now gains at most about one period's idle part, `(1 - s) × 10 ms`, over
its time-sliced cost, where the old rule (10 ms launches, credit refilled up to the next
launch) let its first 10 ms run at full speed at any share: 40 % of the cost at 0.2.
In the demo (`bench/gate_rules.py`, the simulator on the same requests) it moves
bert-base (SLO 50 ms, share 0.2 lent up to 0.5) from 78.2 % to 71.2 % within its SLO;
resnet152 stays at 100 % and GPU use does not move. Live, bert-base went from about 79 %
to 70.7 % (`bench/demo_agreement.py`).
Real CUDA kernels (the shim) are far smaller than a burst: there a burst of `s × 10 ms`
runs at full speed after an idle gap and the rest at the share, `L/s - 10 ms` in all.

The waiter priority of the shim (a launch refused for 10 ms blocks everyone else) has no
counterpart here: a Python gate has one launching task (the batcher or the training
loop), so nothing can starve it.
"""

from __future__ import annotations

from dataclasses import dataclass

PPM = 1_000_000
# Costs are clamped here so that cost × PPM stays far inside 64 bits (as in the shim).
MAX_COST_NS = 60_000_000_000
# How long a caller refused for the in-flight cap or a pause should wait before asking
# again: completions and new shares arrive asynchronously, so no exact time exists.
INFLIGHT_POLL_NS = 50_000
PAUSED_POLL_NS = 1_000_000
DEFAULT_PERIOD_NS = 10_000_000


def default_burst_ns(share: float, period_ns: int = DEFAULT_PERIOD_NS) -> int:
    """The burst rule: one period of GPU time at the share (at least 1 ns)."""
    return max(1, round(share * period_ns))


def launch_ns(remaining_ns: int, burst_ns: int) -> int:
    """The launch-size rule for divisible work: the next launch is one burst, or what is
    left when that is less."""
    return min(remaining_ns, max(1, burst_ns))


def retry_ns(wait_ns: int, period_ns: int) -> int:
    """How long a refused launch sleeps before reading the control page again: the wait it
    was told, but never more than a period, so a new share applies within one period."""
    return min(wait_ns, period_ns)


@dataclass(frozen=True, slots=True)
class BucketParams:
    """What the bucket needs from the control page."""

    share_ppm: int  # effective share; ≥ PPM means the whole GPU (nothing rationed)
    burst_ns: int
    inflight_cap_ns: int
    paused: bool = False
    period_ns: int = DEFAULT_PERIOD_NS

    @property
    def unlimited(self) -> bool:
        return self.share_ppm >= PPM


def _clamp(cost_ns: int) -> int:
    return min(max(0, cost_ns), MAX_COST_NS)


def wall_ns(gpu_ns: int, share_ppm: int) -> int:
    """Wall time over which `share_ppm` earns `gpu_ns` of GPU time (rounded down)."""
    return _clamp(gpu_ns) * PPM // share_ppm


class TokenBucket:
    """One instance's bucket on one GPU (`limiter.c`'s `struct dilu_limiter`, less the
    waiter priority). `tat_ns == 0` is a full bucket."""

    __slots__ = ("inflight_ns", "tat_ns")

    def __init__(self, tat_ns: int = 0) -> None:
        self.tat_ns = tat_ns
        self.inflight_ns = 0

    def admit(self, now_ns: int, cost_ns: int, params: BucketParams) -> int:
        """0 when a launch of `cost_ns` GPU time is admitted now (its cost is debited and
        counted in flight); otherwise how many ns to wait before asking again."""
        if params.paused or params.share_ppm <= 0:
            return PAUSED_POLL_NS
        cost_ns = _clamp(cost_ns)
        # Work bigger than the cap is admitted alone, or it could never run.
        if self.inflight_ns > 0 and self.inflight_ns + cost_ns > params.inflight_cap_ns:
            return INFLIGHT_POLL_NS
        if params.unlimited:
            # The whole GPU: nothing to ration; the cap still bounds queued work.
            self.inflight_ns += cost_ns
            return 0
        increment = wall_ns(cost_ns, params.share_ppm)
        tolerance = max(wall_ns(params.burst_ns or 1, params.share_ppm), increment)
        due = max(self.tat_ns, now_ns) + increment
        if due - now_ns > tolerance:
            return due - now_ns - tolerance
        self.tat_ns = due
        self.inflight_ns += cost_ns
        return 0

    def complete(self, estimate_ns: int, actual_ns: int, params: BucketParams) -> None:
        """Admitted work finished: no longer in flight, and the bucket is corrected by
        what it really cost."""
        estimate_ns, actual_ns = _clamp(estimate_ns), _clamp(actual_ns)
        self.inflight_ns -= estimate_ns
        if params.unlimited or params.share_ppm <= 0 or actual_ns == estimate_ns:
            return
        delta = actual_ns - estimate_ns
        shift = wall_ns(delta, params.share_ppm) if delta > 0 else -wall_ns(-delta, params.share_ppm)
        self.tat_ns = max(0, self.tat_ns + shift)

    def cancel(self, estimate_ns: int, params: BucketParams) -> None:
        """The admitted launch never ran: refund it."""
        self.complete(estimate_ns, 0, params)

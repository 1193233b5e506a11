"""The GPU-time token bucket of the design, as a pure core with an injected clock.

Credit (ns of GPU time) grows at `share × elapsed`, capped by the burst. A launch with an
estimated cost is admitted when the credit covers it and the work in flight is under the
cap; admission spends the estimate, and completion corrects by the actual cost. The same
algorithm runs in the CUDA shim (C) and in the Python quota gate of sim and CPU workers.
"""

from __future__ import annotations

from dataclasses import dataclass

# Returned by `wait_ns` when nothing but a completion (or a new share) can admit the launch.
BLOCKED = -1


@dataclass(frozen=True, slots=True)
class BucketParams:
    share: float  # fraction of one GPU; 0 or `paused` admits nothing
    burst_ns: int
    inflight_cap_ns: int
    paused: bool = False


class TokenBucket:
    def __init__(self, now_ns: int, burst_ns: int) -> None:
        # Start full, so a fresh instance does not stall its first launch.
        self.credit_ns = float(burst_ns)
        self.inflight_ns = 0
        self._last_ns = now_ns

    def _refill(self, now_ns: int, params: BucketParams, cap_ns: float) -> None:
        elapsed = max(0, now_ns - self._last_ns)
        self._last_ns = now_ns
        if params.paused or params.share <= 0:
            return
        # A cap below the credit (the share just dropped) takes effect at once.
        self.credit_ns = min(cap_ns, self.credit_ns + params.share * elapsed)

    def wait_ns(self, cost_ns: int, now_ns: int, params: BucketParams) -> int:
        """0 when a launch of `cost_ns` may go now; else how long until it may (ns), or
        BLOCKED when only a completion or a new share can admit it."""
        # While a launch waits the cap is raised to its cost, so a launch bigger than the
        # burst is admitted once enough credit has accrued instead of never.
        self._refill(now_ns, params, max(params.burst_ns, cost_ns))
        if params.paused or params.share <= 0:
            return BLOCKED
        if self.inflight_ns > 0 and self.inflight_ns + cost_ns > params.inflight_cap_ns:
            return BLOCKED
        short = cost_ns - self.credit_ns
        if short <= 0:
            return 0
        return max(1, int(short / params.share) + 1)

    def admit(self, cost_ns: int) -> None:
        self.credit_ns -= cost_ns
        self.inflight_ns += cost_ns

    def complete(self, estimated_ns: int, actual_ns: int) -> None:
        """Work admitted at `estimated_ns` finished having used `actual_ns` of GPU time."""
        self.inflight_ns = max(0, self.inflight_ns - estimated_ns)
        self.credit_ns -= actual_ns - estimated_ns

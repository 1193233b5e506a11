"""The quota gate of workers without CUDA (sim and CPU runtimes): the design's GPU-time
token bucket (`services/node_agent/token_bucket.py`, the shim's algorithm), reading the
effective share from the control page at every admission."""

from __future__ import annotations

from services.common.clock import SYSTEM_CLOCK, Clock
from services.node_agent.pages import PPM, Control, ControlPageReader, StatsWriter
from services.node_agent.token_bucket import BucketParams, TokenBucket, launch_ns, retry_ns

# Sleep overshoot (the event loop wakes a little late) that the next launch makes up for,
# at most: beyond it the lateness was a stall, not jitter, and is not given back.
_MAX_CATCH_UP_NS = 2_000_000


def bucket_params(control: Control) -> BucketParams:
    """The bucket's view of a control page (shares travel as parts per million)."""
    return BucketParams(share_ppm=round(control.share * PPM), burst_ns=control.burst_ns,
                        inflight_cap_ns=control.inflight_cap_ns, paused=control.paused,
                        period_ns=control.period_ns)


class QuotaGate:
    """`enforcing=False` is for workers whose CUDA shim enforces the quota (and owns the
    launch and busy counters): the gate then admits everything at once and counts nothing."""

    def __init__(self, control: ControlPageReader, stats: StatsWriter,
                 clock: Clock = SYSTEM_CLOCK, enforcing: bool = True) -> None:
        self._control = control
        self._stats = stats
        self.enforcing = enforcing
        self.clock = clock
        self._bucket = TokenBucket()

    def control(self) -> Control:
        return self._control.read()

    async def admit(self, cost_ns: int) -> tuple[Control, int, int]:
        """Wait until a launch of `cost_ns` GPU time may run; returns the control snapshot
        it was admitted under, how long it waited (ns) and the time it was admitted at. The
        page is re-read at least once per token period, so a new share (or a pause) takes
        effect within one period.

        The event loop wakes a sleep a little late (more on a busy host); the bucket is asked
        as of when the sleep should have ended (up to `_MAX_CATCH_UP_NS` earlier than now),
        so that jitter does not add up over the waits of a batch. On an exact clock (virtual
        time) that is simply now."""
        if not self.enforcing:
            return self._control.read(), 0, self.clock.monotonic_ns()
        waited = 0
        asked = now = self.clock.monotonic_ns()
        while True:
            control = self._control.read()
            wait = self._bucket.admit(asked, cost_ns, bucket_params(control))
            if wait == 0:
                break
            delay = retry_ns(wait, control.period_ns)
            await self.clock.sleep(delay / 1e9)
            woke = self.clock.monotonic_ns()
            # Counted as it accrues, so the arbiter sees a waiting instance while it waits.
            waited += woke - now
            self._stats.add("throttled_ns", woke - now)
            asked = min(woke, max(asked + delay, woke - _MAX_CATCH_UP_NS))
            now = woke
        self._stats.add("launches", 1)
        return control, waited, asked

    def complete(self, estimated_ns: int, actual_ns: int) -> None:
        if not self.enforcing:
            return
        self._bucket.complete(estimated_ns, actual_ns, bucket_params(self._control.read()))
        self._stats.add("busy_ns", actual_ns)


class SimDevice:
    """Runs simulated GPU work through the gate the way the design's execution model says:
    the work occupies the whole GPU for its cost, cut into launches of one burst
    (`token_bucket.launch_ns`), each admitted under the share of that moment and then run
    at full speed. At share `s` a batch therefore takes about cost / s back to back."""

    def __init__(self, gate: QuotaGate) -> None:
        self._gate = gate
        self._clock = gate.clock
        self._lag_ns = 0  # how late the last launch's sleep woke up

    async def run(self, cost_s: float) -> None:
        """Occupy `cost_s` of whole-GPU time."""
        remaining_ns = max(1, round(cost_s * 1e9))
        while remaining_ns > 0:
            launch = launch_ns(remaining_ns, self._gate.control().burst_ns)
            _, waited, admitted = await self._gate.admit(launch)
            now = self._clock.monotonic_ns()
            # A launch that waited for credit runs from when it was admitted (the gate makes
            # up for its sleeps' lateness); one that did not makes up for the previous
            # launch's, so jitter does not add up over launches.
            end = (admitted if waited else now - self._lag_ns) + launch
            if end > now:
                await self._clock.sleep((end - now) / 1e9)
            self._lag_ns = min(max(0, self._clock.monotonic_ns() - end), _MAX_CATCH_UP_NS)
            self._gate.complete(launch, launch)
            remaining_ns -= launch

"""The quota gate of workers without CUDA (sim and CPU runtimes): the design's GPU-time
token bucket, reading the effective share from the control page at every admission."""

from __future__ import annotations

from collections.abc import Callable

from services.common.clock import SYSTEM_CLOCK, Clock
from services.node_agent.pages import Control, ControlPageReader, StatsWriter
from services.node_agent.token_bucket import BLOCKED, BucketParams, TokenBucket


class QuotaGate:
    """`enforcing=False` is for workers whose CUDA shim enforces the quota (and owns the
    launch and busy counters): the gate then admits everything at once and counts nothing."""

    def __init__(self, control: ControlPageReader, stats: StatsWriter,
                 clock: Clock = SYSTEM_CLOCK, enforcing: bool = True) -> None:
        self._control = control
        self._stats = stats
        self.enforcing = enforcing
        self._clock = clock
        self._bucket = TokenBucket(clock.monotonic_ns(), control.read().burst_ns)

    def control(self) -> Control:
        return self._control.read()

    async def admit(self, cost_ns: int) -> Control:
        """Wait until a launch of `cost_ns` GPU time may run; returns the control snapshot
        it was admitted under. The page is re-read at least once per token period, so a new
        share (or a pause) takes effect within one period."""
        if not self.enforcing:
            return self._control.read()
        while True:
            control = self._control.read()
            params = BucketParams(control.share, control.burst_ns, control.inflight_cap_ns,
                                  control.paused)
            now = self._clock.monotonic_ns()
            wait = self._bucket.wait_ns(cost_ns, now, params)
            if wait == 0:
                break
            delay = control.period_ns if wait == BLOCKED else min(wait, control.period_ns)
            await self._clock.sleep(delay / 1e9)
            # Counted as it accrues, so the arbiter sees a waiting instance while it waits.
            self._stats.add("throttled_ns", self._clock.monotonic_ns() - now)
        self._bucket.admit(cost_ns)
        self._stats.add("launches", 1)
        return control

    def complete(self, estimated_ns: int, actual_ns: int) -> None:
        if not self.enforcing:
            return
        self._bucket.complete(estimated_ns, actual_ns)
        self._stats.add("busy_ns", actual_ns)


class SimDevice:
    """Runs simulated GPU work through the gate in period-sized launches, the way a real
    batch is many kernels: each launch is admitted under the share of that moment."""

    def __init__(self, gate: QuotaGate, clock: Clock = SYSTEM_CLOCK) -> None:
        self._gate = gate
        self._clock = clock
        self._device_time = 0.0  # when the simulated device finishes its queued work

    async def run(self, cost_s: float, stretch: Callable[[float], float]) -> None:
        """Occupy `cost_s` of whole-GPU time. `stretch(share)` ≥ 1 is how much longer the
        work takes in wall time when it runs on `share` of the SMs (from the perf model)."""
        remaining_ns = max(1, round(cost_s * 1e9))
        while remaining_ns > 0:
            launch_ns = min(remaining_ns, self._gate.control().period_ns)
            asked = self._clock.monotonic()
            control = await self._gate.admit(launch_ns)
            now = self._clock.monotonic()
            # If the gate held the launch back, the bucket paces it; otherwise a device clock
            # that may trail by 2 ms keeps sleep overshoot from adding up over launches.
            held_back = now - asked > 0.0005
            start = now if held_back else max(self._device_time, now - 0.002)
            self._device_time = start + launch_ns / 1e9 * stretch(max(control.share, 1e-3))
            if self._device_time > now:
                await self._clock.sleep(self._device_time - now)
            self._gate.complete(launch_ns, launch_ns)
            remaining_ns -= launch_ns

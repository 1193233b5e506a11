"""One clock for production, tests and virtual time.

Pure cores take `now` as an argument; the shells around them read it from a `Clock`. Two
readings exist because they answer different questions: `time()` is wall time (epoch
seconds) for timestamps that leave the process (records, events, `next_retry_at`);
`monotonic()` never jumps and is for measuring intervals and pacing loops. A
`VirtualClock` serves both from one counter that only moves when told to, so a test or a
simulator decides exactly when time passes.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    """What a shell needs from time: two readings and a way to wait."""

    def time(self) -> float:
        """Wall time, seconds since the epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes back."""
        ...

    def monotonic_ns(self) -> int:
        """`monotonic()` in integer nanoseconds (for GPU-time accounting)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait until `monotonic()` has advanced by `seconds` (at least one yield)."""
        ...


class SystemClock:
    """The machine's clocks."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def monotonic_ns(self) -> int:
        return time.monotonic_ns()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


SYSTEM_CLOCK = SystemClock()


class VirtualClock:
    """A clock that moves only by `advance()` / `set()`.

    Wall time is `epoch_s` plus the virtual seconds elapsed, so timestamps look real.
    `sleep()` waits until someone advances the clock past its deadline; sleepers wake in
    deadline order, each after at least one yield to the event loop, so several loops on
    one virtual clock interleave as they would on a real one.
    """

    def __init__(self, start_s: float = 0.0, epoch_s: float = 1_700_000_000.0) -> None:
        self._now = float(start_s)
        self._epoch = float(epoch_s) - float(start_s)
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self._epoch + self._now

    def monotonic(self) -> float:
        return self._now

    def monotonic_ns(self) -> int:
        return round(self._now * 1e9)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"a clock only moves forward, got {seconds}")
        self.set(self._now + seconds)

    def set(self, monotonic_s: float) -> None:
        """Move to `monotonic_s` (never back) and wake every sleeper due by then."""
        if monotonic_s < self._now:
            raise ValueError(f"a clock only moves forward: {monotonic_s} < {self._now}")
        self._now = monotonic_s
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, waiter = heapq.heappop(self._sleepers)
            if not waiter.done():
                waiter.set_result(None)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), waiter))
        await waiter

    @property
    def sleepers(self) -> int:
        """How many sleeps are waiting for time to pass."""
        return sum(not w.done() for _, _, w in self._sleepers)

    def next_deadline(self) -> float | None:
        """When the earliest waiting sleep is due (`monotonic()` scale), if any: a driver
        jumps straight there instead of stepping through empty time."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)  # cancelled sleeps
        return self._sleepers[0][0] if self._sleepers else None

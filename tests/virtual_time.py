"""An asyncio event loop on virtual time, for driving real async objects (a sim worker's
batcher, gate and device) exactly: when nothing is ready, time jumps to the next timer
instead of waiting for it. Time is kept in integer nanoseconds; `time()` is that count in
seconds, so a timer set `d` seconds ahead fires at exactly `round((now + d) × 1e9)` ns.

No I/O is ever ready on it (it never polls file descriptors): it is for pure async code.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Mapping
from typing import Any


class _NoIO(selectors.BaseSelector):
    def __init__(self, loop: VirtualTimeLoop) -> None:
        self._loop = loop
        self._keys: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, fileobj if isinstance(fileobj, int) else fileobj.fileno(),
                                    events, data)
        self._keys[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        self._loop.advance_to_next_timer(timeout)
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self.now_ns = 0
        super().__init__(selector=_NoIO(self))

    def time(self) -> float:
        return self.now_ns / 1e9

    def advance_to_next_timer(self, timeout: float | None) -> None:
        if timeout is None:
            raise RuntimeError("virtual time: nothing is scheduled and nothing is ready")
        if timeout > 0:
            when = self._scheduled[0]._when  # type: ignore[attr-defined]
            self.now_ns = max(self.now_ns, round(when * 1e9))


class LoopClock:
    """The project's `Clock` on a virtual-time loop: readings are the loop's, sleeps are
    the loop's timers."""

    def __init__(self, loop: VirtualTimeLoop, epoch_s: float = 1_700_000_000.0) -> None:
        self._loop = loop
        self._epoch_s = epoch_s

    def time(self) -> float:
        return self._epoch_s + self._loop.time()

    def monotonic(self) -> float:
        return self._loop.time()

    def monotonic_ns(self) -> int:
        return self._loop.now_ns

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


def run_virtual(main: Any) -> Any:
    """Run coroutine `main` to completion on a fresh virtual-time loop."""
    loop = VirtualTimeLoop()
    try:
        asyncio.set_event_loop(loop)
        return loop.run_until_complete(main)
    finally:
        asyncio.set_event_loop(None)
        loop.close()

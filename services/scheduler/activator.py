"""Scale from zero without losing requests: the hold queue of the scheduler's Invoke path.

An `Invoke` for a function with no ready instance is held, as Knative's activator does,
instead of failing: it waits (polling the router every `poll_s`) until an instance is
ready, for at most `max_wait_s` (and never beyond the request's own timeout); a function
with no instance wanted at all (`replicas.min: 0`, scaled to zero) is asked for one at
once, by the first request held (a horizontal decision with source `scheduler`); the
scaler decides beyond that. At most `max_held` requests wait per function: one more is
refused at once with RESOURCE_EXHAUSTED, and a held request whose wait runs out gets
UNAVAILABLE, both saying why. A request already held is never dropped for another's sake.
The time from the first request held to the first instance ready is the cold start,
logged and kept per function (`cold_starts`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from services.common.errors import ResourceExhausted, Unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HoldSettings:
    max_held: int = 100        # requests waiting per function
    max_wait_s: float = 30.0   # how long one may wait for an instance
    poll_s: float = 0.02


@dataclass
class HoldQueue:
    settings: HoldSettings = field(default_factory=HoldSettings)
    held: dict[str, int] = field(default_factory=dict)
    # function → when its current wait for a first instance began
    waiting_since: dict[str, float] = field(default_factory=dict)
    cold_starts: dict[str, list[float]] = field(default_factory=dict)
    _asking: set[str] = field(default_factory=set)

    async def hold(self, name: str, timeout_s: float, route: Callable[[], tuple[str, str]],
                   wanted: Callable[[], int], ask: Callable[[], Awaitable[object]]) -> tuple[str, str]:
        """Wait for a ready instance of `name` and return `route()`'s answer. `wanted`: how
        many instances the function has wanted now; `ask`: asks for one (scale from zero)."""
        waiting = self.held.get(name, 0)
        if waiting >= self.settings.max_held:
            raise ResourceExhausted(
                f"{name} has no ready instance and {waiting} requests already wait for one "
                f"(the hold queue holds {self.settings.max_held}); retry later")
        self.held[name] = waiting + 1
        started = time.monotonic()
        self.waiting_since.setdefault(name, started)
        try:
            if wanted() == 0 and name not in self._asking:
                self._asking.add(name)
                try:
                    await ask()
                finally:
                    self._asking.discard(name)
            deadline = started + min(self.settings.max_wait_s, timeout_s)
            while True:
                try:
                    chosen = route()
                except Unavailable as why:
                    if time.monotonic() >= deadline:
                        raise Unavailable(
                            f"no instance of {name} became ready within "
                            f"{min(self.settings.max_wait_s, timeout_s):g} s of waiting: "
                            f"{why}") from None
                    await asyncio.sleep(self.settings.poll_s)
                    continue
                self._ready(name)
                return chosen
        finally:
            self.held[name] -= 1
            if not self.held[name]:
                del self.held[name]
                self.waiting_since.pop(name, None)

    def _ready(self, name: str) -> None:
        since = self.waiting_since.pop(name, None)
        if since is not None:
            cold = time.monotonic() - since
            self.cold_starts.setdefault(name, []).append(cold)
            log.info("%s: an instance is ready %.2f s after the first request was held "
                     "(cold start); %d held requests go to it", name, cold, self.held.get(name, 0))

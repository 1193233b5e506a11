"""One periodic loop for every service: heartbeats, the arbiter, telemetry, reconciling."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from services.common.clock import SYSTEM_CLOCK, Clock
from services.common.errors import Unavailable

log = logging.getLogger(__name__)


async def every(interval_s: float, action: Callable[[], Awaitable[object]], *,
                clock: Clock = SYSTEM_CLOCK, name: str | None = None,
                first_after_s: float | None = None) -> None:
    """Run `action` on a fixed schedule until cancelled.

    Runs are due at `start + first_after_s + k × interval_s` (`first_after_s` defaults to
    one interval; 0 runs at once). A run that starts late does not shift the ones after
    it. A run that overruns its slot skips the slots it missed and the next run is one
    interval after it ended, so a stall never turns into runs back to back.

    An exception never ends the loop: `Unavailable` (the bus or a peer is away, which
    the next run retries) is logged as a warning without a traceback, anything else with
    its traceback.
    """
    if interval_s <= 0:
        raise ValueError(f"interval_s must be positive, got {interval_s}")
    label = name or getattr(action, "__name__", "periodic action")
    due = clock.monotonic() + (interval_s if first_after_s is None else first_after_s)
    while True:
        await clock.sleep(due - clock.monotonic())
        try:
            await action()
        except asyncio.CancelledError:
            raise
        except Unavailable as error:
            log.warning("%s deferred: %s", label, error)
        except Exception:
            log.exception("%s failed", label)
        due += interval_s
        now = clock.monotonic()
        if due <= now:  # overran: skip the missed slots rather than catch up
            due = now + interval_s

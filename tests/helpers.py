"""Polling helpers: tests wait for conditions instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def assert_eventually(check: Callable[[], T], timeout: float = 10.0, interval: float = 0.1,
                      message: str = "") -> T:
    """Call `check` until it returns a truthy value (returned) or stops raising
    AssertionError; fail with the last problem after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            value = check()
            if value:
                return value
            last = AssertionError(f"condition still false: {value!r}")
        except AssertionError as error:
            last = error
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {message} ({last})")
        time.sleep(interval)


async def assert_eventually_async(check: Callable[[], Awaitable[T]], timeout: float = 10.0,
                                  interval: float = 0.1, message: str = "") -> T:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while True:
        try:
            value = await check()
            if value:
                return value
            last = AssertionError(f"condition still false: {value!r}")
        except AssertionError as error:
            last = error
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {message} ({last})")
        await asyncio.sleep(interval)

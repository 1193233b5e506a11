"""The shared clock, the periodic-loop helper, and who may import whom."""

from __future__ import annotations

import ast
import asyncio
import logging
from pathlib import Path

import pytest

from services.common.clock import SYSTEM_CLOCK, Clock, VirtualClock
from services.common.errors import Unavailable
from services.common.loops import every

ROOT = Path(__file__).resolve().parents[2]


def test_the_system_clock_and_the_virtual_clock_are_both_clocks():
    clocks: list[Clock] = [SYSTEM_CLOCK, VirtualClock()]
    for clock in clocks:
        assert clock.monotonic_ns() >= 0 and clock.time() > 1e9


def test_a_virtual_clock_moves_only_forward_and_only_when_told():
    clock = VirtualClock(start_s=5.0, epoch_s=1000.0)
    assert (clock.monotonic(), clock.time()) == (5.0, 1000.0)
    clock.advance(0.25)
    assert (clock.monotonic(), clock.time(), clock.monotonic_ns()) == (5.25, 1000.25, 5_250_000_000)
    with pytest.raises(ValueError):
        clock.advance(-1)
    with pytest.raises(ValueError):
        clock.set(5.0)


async def test_virtual_sleepers_wake_in_deadline_order_when_time_passes():
    clock = VirtualClock()
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(f"{name}@{clock.monotonic():g}")

    tasks = [asyncio.create_task(sleeper("late", 2.0)), asyncio.create_task(sleeper("soon", 1.0))]
    await asyncio.sleep(0)
    assert clock.sleepers == 2
    clock.advance(1.5)
    await asyncio.sleep(0)
    assert woke == ["soon@1.5"]
    clock.advance(1.0)
    await asyncio.gather(*tasks)
    assert woke == ["soon@1.5", "late@2.5"]


async def _run_for(clock: VirtualClock, task: asyncio.Task[None], until_s: float) -> None:
    """Jump from one due sleep to the next until `until_s`, letting the loop run between."""
    while True:
        for _ in range(5):
            await asyncio.sleep(0)
        due = clock.next_deadline()
        if due is None or due > until_s:
            break
        clock.set(due)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_a_late_run_does_not_shift_the_schedule():
    clock = VirtualClock()
    starts: list[float] = []

    async def action() -> None:
        starts.append(round(clock.monotonic(), 2))
        if len(starts) == 2:
            await clock.sleep(0.3)  # a slow run, but it ends before the next slot

    await _run_for(clock, asyncio.create_task(every(1.0, action, clock=clock)), 4.0)
    assert starts == [1.0, 2.0, 3.0, 4.0]


async def test_an_overrun_skips_missed_slots_instead_of_bunching_runs():
    clock = VirtualClock()
    starts: list[float] = []

    async def action() -> None:
        starts.append(round(clock.monotonic(), 2))
        if len(starts) == 2:
            await clock.sleep(2.5)  # overruns the slots at 3 and 4

    await _run_for(clock, asyncio.create_task(every(1.0, action, clock=clock)), 7.0)
    # The run that began at 2 ends at 4.5: the next is one interval later, not at once.
    assert starts == [1.0, 2.0, 5.5, 6.5]


async def test_errors_are_logged_and_the_loop_goes_on(caplog: pytest.LogCaptureFixture):
    clock = VirtualClock()
    runs: list[int] = []

    async def flaky() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise Unavailable("bus away")
        if len(runs) == 2:
            raise RuntimeError("bug")

    with caplog.at_level(logging.WARNING, logger="services.common.loops"):
        await _run_for(clock, asyncio.create_task(
            every(1.0, flaky, clock=clock, name="flaky", first_after_s=0)), 2.0)
    assert len(runs) == 3
    unavailable, crashed = caplog.records[0], caplog.records[1]
    assert unavailable.levelno == logging.WARNING and "bus away" in unavailable.getMessage()
    assert unavailable.exc_info is None
    assert crashed.levelno == logging.ERROR and crashed.exc_info is not None


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in found if m.startswith("services")}


def _module_file(module: str) -> Path | None:
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_the_simulator_never_imports_the_cli_even_indirectly():
    seen: set[str] = set()
    todo = [f"services.simulator.{p.stem}" for p in (ROOT / "services/simulator").glob("*.py")]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(module)
        if path is not None:
            todo.extend(_imports(path))
    assert "services.simulator.report" in seen
    assert not [m for m in seen if m.startswith("services.cli")]

"""Under the CUDA shim the Python gate stands aside: no second throttle, no second writer."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from services.node_agent.pages import (
    ControlPageReader,
    ControlPageWriter,
    StatsWriter,
    control_for,
    create_stats_page,
)
from services.node_agent.worker.gate import QuotaGate


def _gate(tmp_path: Path, enforcing: bool) -> tuple[QuotaGate, StatsWriter]:
    ControlPageWriter(tmp_path / "i.ctl", control_for(0.01, 0.01, 0.01, 0)).close()
    create_stats_page(tmp_path / "i.stats")
    stats = StatsWriter(tmp_path / "i.stats")
    return QuotaGate(ControlPageReader(tmp_path / "i.ctl"), stats, enforcing=enforcing), stats


async def _launch(gate: QuotaGate, count: int) -> None:
    for _ in range(count):
        await gate.admit(10_000_000)
        gate.complete(10_000_000, 10_000_000)


def test_a_gate_that_does_not_enforce_admits_at_once_and_counts_nothing(tmp_path: Path) -> None:
    gate, stats = _gate(tmp_path, enforcing=False)
    started = time.monotonic()
    asyncio.run(_launch(gate, 50))  # 0.5 s of GPU time at share 0.01 would take 50 s
    assert time.monotonic() - started < 1.0
    reading = stats.read()
    assert (reading.launches, reading.busy_ns, reading.throttled_ns) == (0, 0, 0)


def test_an_enforcing_gate_counts_what_it_admits(tmp_path: Path) -> None:
    gate, stats = _gate(tmp_path, enforcing=True)
    asyncio.run(_launch(gate, 1))
    reading = stats.read()
    assert reading.launches == 1 and reading.busy_ns == 10_000_000

"""sd_notify without libsystemd: messages reach a socket we own, and the watchdog is fed
from the asyncio loop, so a blocked loop stops the pings (what makes systemd restart it)."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.systemd import Notifier, watchdog_interval_s
from tests.notify_socket import NotifySocket


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[NotifySocket]:
    owned = NotifySocket(str(tmp_path / "notify.sock"))
    yield owned
    owned.close()


def test_ready_status_and_stopping_arrive_as_key_value_lines(manager: NotifySocket):
    notifier = Notifier(manager.path)
    assert notifier.ready("serving on 127.0.0.1:50051")
    assert notifier.stopping()
    manager.wait_for_count(2)
    assert [m for _, m in manager.received] == [
        "READY=1\nSTATUS=serving on 127.0.0.1:50051", "STOPPING=1"]


def test_an_abstract_socket_name_is_understood():
    owned = NotifySocket(f"@dilu-test-{os.getpid()}-{time.monotonic_ns()}")
    try:
        assert Notifier(owned.path).ready()
        owned.wait_for_count(1)
        assert [m for _, m in owned.received] == ["READY=1"]
    finally:
        owned.close()


def test_without_a_service_manager_nothing_is_sent_and_nothing_fails():
    notifier = Notifier.from_environment({})
    assert not notifier.active
    assert not notifier.ready()
    assert notifier.start_watchdog() is None


def test_a_vanished_socket_is_logged_not_raised(tmp_path: Path):
    assert not Notifier(str(tmp_path / "gone.sock")).ready()


def test_the_environment_is_consumed_so_children_do_not_inherit_it(manager: NotifySocket):
    env = {"NOTIFY_SOCKET": manager.path, "WATCHDOG_USEC": "2000000",
           "WATCHDOG_PID": str(os.getpid()), "OTHER": "kept"}
    notifier = Notifier.from_environment(env)
    assert notifier.active and notifier.watchdog_s == 1.0
    assert env == {"OTHER": "kept"}


def test_the_watchdog_pings_at_half_the_timeout_and_only_for_its_own_pid():
    me = os.getpid()
    assert watchdog_interval_s({"WATCHDOG_USEC": "3000000"}, me) == 1.5
    assert watchdog_interval_s({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": str(me)}, me) == 1.5
    assert watchdog_interval_s({"WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}, me) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}, me) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}, me) is None
    assert watchdog_interval_s({}, me) is None


async def test_a_blocked_loop_stops_the_pings_and_they_resume_after_it(manager: NotifySocket):
    notifier = Notifier(manager.path, watchdog_s=0.05)
    task = notifier.start_watchdog()
    assert task is not None
    try:
        await asyncio.sleep(0.5)
        blocked_at = time.monotonic()
        time.sleep(0.6)  # the loop is blocked: no task runs, the reader thread still does
        unblocked_at = time.monotonic()
        await asyncio.sleep(0.5)
    finally:
        task.cancel()
        notifier.close()
    pings = [at for at, message in manager.received if message == "WATCHDOG=1"]
    assert len(pings) >= 5
    during = [at for at in pings if blocked_at + 0.02 < at < unblocked_at]
    assert during == [], "a ping arrived while the loop was blocked"
    assert any(blocked_at > at > blocked_at - 0.3 for at in pings), "no ping before the block"
    assert any(at > unblocked_at for at in pings), "pings did not resume"

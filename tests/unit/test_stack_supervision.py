"""`dilu up`'s supervision and ownership, without processes of the stack: a process that
keeps dying is left down while the rest keeps running, and a directory has one owner."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from services.cli.ownership import AlreadyOwned, Ownership, owner_pid, same_process, start_time
from services.cli.up import MAX_RESTARTS, RESTART_WINDOW_S, RunningStack, _ServiceSpec


@dataclass
class FakeProcess:
    name: str
    pid: int
    address: str = ""
    peer_address: str = ""
    started: int | None = 1
    dead: bool = False

    def alive(self) -> bool:
        return not self.dead

    def stop(self) -> None:
        self.dead = True


@dataclass
class FakeNats:
    proc: FakeProcess = field(default_factory=lambda: FakeProcess("nats", 1))
    url: str = "nats://x"

    def start(self) -> None:
        self.proc = FakeProcess("nats", self.proc.pid + 1)

    def stop(self) -> None:
        self.proc.dead = True


@dataclass
class FakeLauncher:
    pids: int = 100

    def start(self, service: str, *extra: str, port: int = 0,
              metrics_port: int | None = None, tls: object = None,
              peer_port: int = 0) -> FakeProcess:
        self.pids += 1
        return FakeProcess(service, self.pids)


def _stack() -> RunningStack:
    specs = {name: _ServiceSpec(name, 0) for name in ("scheduler", "node-agent", "profiler")}
    stack = RunningStack(FakeNats(), FakeLauncher(), specs)  # type: ignore[arg-type]
    for name in specs:
        stack.start(name)
    return stack


def test_a_process_that_keeps_dying_is_left_down_and_the_rest_keeps_running():
    stack = _stack()
    agent = stack.services["node-agent"]
    now = 1000.0
    for death in range(1, MAX_RESTARTS):
        stack.services["profiler"].dead = True  # type: ignore[attr-defined]
        restarted, given_up = stack.revive(now + death)
        assert (restarted, given_up) == (["profiler"], [])
    stack.services["profiler"].dead = True  # type: ignore[attr-defined]
    restarted, given_up = stack.revive(now + MAX_RESTARTS)
    assert (restarted, given_up) == ([], ["profiler"])
    assert "died 5 times" in stack.given_up["profiler"]
    # Left down: not restarted again, and nothing else was touched.
    assert stack.revive(now + MAX_RESTARTS + 1) == ([], [])
    assert stack.services["node-agent"] is agent and agent.alive()
    assert all(p.alive() for n, p in stack.processes().items() if n != "profiler")


def test_deaths_spread_over_more_than_the_window_are_restarted_for_ever():
    stack = _stack()
    for death in range(3 * MAX_RESTARTS):
        stack.services["scheduler"].dead = True  # type: ignore[attr-defined]
        restarted, given_up = stack.revive(death * RESTART_WINDOW_S / (MAX_RESTARTS - 1))
        assert restarted == ["scheduler"] and not given_up


def test_a_directory_has_one_owner_and_a_dead_owners_lock_is_taken_over(tmp_path: Path):
    lock = tmp_path / "state" / "dilu-up.lock"
    first = Ownership.take(lock, "the state dir")
    assert owner_pid(lock) == os.getpid()
    with pytest.raises(AlreadyOwned, match=f"pid {os.getpid()}"):
        Ownership.take(lock, "the state dir")
    first.release()
    # A process that took the lock and was killed leaves it to the next one.
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path[:0] = sys.argv[1:2]\n"
        "from pathlib import Path\n"
        "from services.cli.ownership import Ownership\n"
        f"o = Ownership.take(Path({str(lock)!r}), 'x'); print('held', flush=True); time.sleep(60)"),
        str(Path(__file__).resolve().parents[2])], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(AlreadyOwned, match=f"pid {holder.pid}"):
            Ownership.take(lock, "the state dir")
        holder.kill()
        holder.wait()
        again = Ownership.take(lock, "the state dir")
        assert owner_pid(lock) == os.getpid()
        again.release()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()


def test_a_recorded_process_is_identified_by_pid_and_start_time():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        started = start_time(child.pid)
        assert started is not None and same_process(child.pid, started)
        assert not same_process(child.pid, started + 1)  # a reused pid is another process
    finally:
        child.kill()
        child.wait()
    deadline = time.monotonic() + 5
    while same_process(child.pid, started) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not same_process(child.pid, started)


def test_dilu_down_stops_what_a_dead_dilu_up_left_running(tmp_path: Path, capsys):
    import json

    from services.cli.up import run_down, stack_file

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone_started = start_time(gone.pid)
    gone.wait()
    survivor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        stack_file(tmp_path).write_text(json.dumps({
            "pid": gone.pid, "started": gone_started,
            "pids": {"scheduler": survivor.pid, "scaler": gone.pid},
            "starts": {"scheduler": start_time(survivor.pid), "scaler": gone_started}}))
        assert run_down(tmp_path) == 0
        assert survivor.wait(timeout=10) != 0  # stopped by its own pid and start time
        out = capsys.readouterr().out
        assert f"stack process {gone.pid} was gone" in out and "scheduler" in out
        assert "scaler" not in out
        assert not stack_file(tmp_path).exists()
    finally:
        if survivor.poll() is None:
            survivor.kill()
            survivor.wait()

"""Exclusive ownership of a directory (a stack's state dir, a JetStream store) by one
running process, and the identity of processes recorded by pid.

Ownership is an exclusive `flock` on a lock file holding the owner's pid. The kernel drops
the lock when the last holder of the file descriptor exits, however it exits, so the lock
of a dead owner is simply taken over; a live owner (even one whose supervisor was killed)
keeps it. A child that inherits the descriptor (`pass_fds`) holds the lock for as long as
it runs: that is how a nats-server keeps its store while it lives.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class AlreadyOwned(RuntimeError):
    """Another live process owns the directory."""


class Ownership:
    """A held lock file; `release()` (or the holder's exit) gives it up."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def take(cls, path: Path, what: str) -> Ownership:
        """Own `path` (created if missing), or raise `AlreadyOwned` naming the owner."""
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            owner = owner_pid(path)
            raise AlreadyOwned(f"{what} is in use by another process"
                               + (f" (pid {owner})" if owner else "")) from None
        ownership = cls(path, fd)
        ownership.record(os.getpid())
        return ownership

    def fileno(self) -> int:
        assert self._fd is not None, "released"
        return self._fd

    def record(self, pid: int) -> None:
        """Write the pid of the process that owns the directory now."""
        fd = self.fileno()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{pid}\n".encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


def owner_pid(path: Path) -> int | None:
    """The pid recorded in a lock file, if any."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def start_time(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/<pid>/stat field 22), or
    None when it does not exist: with the pid it identifies a process, since pids are
    reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":  # a zombie has exited already
        return None
    return int(fields[19])


def same_process(pid: int, started: int | None) -> bool:
    """Whether `pid` is still the process that started at `started`."""
    return started is not None and start_time(pid) == started

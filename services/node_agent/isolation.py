"""Who may open an instance's pages: the runtime directory's and the pages' ownership, and,
where the agent may switch users, one unprivileged uid per worker.

**Without per-worker uids** (the local quick start, any agent without the privilege) the
agent's runtime directory (`<runtime dir>` and its `<node>` subdirectory) is 0700: no other
user of the machine can open a page. The control and spec pages are made read-only (0400)
once written, so a worker cannot open them for writing by mistake; but every worker runs as
the agent's own uid, so a worker that wants to could still open another instance's pages
(or chmod them back): the README says so.

**With per-worker uids** (`--worker-uids FIRST-LAST`, env `DILU_WORKER_UIDS`; needs root or
the capabilities CAP_SETUID, CAP_SETGID, CAP_CHOWN, CAP_KILL and CAP_DAC_READ_SEARCH, as the
systemd unit and the Kubernetes manifest give it) the first id is the workers' shared group
and each instance runs as its own uid from the rest, with a private group of the same
number. Then:

- `<runtime dir>`: agent, 0711: workers pass through it and list nothing.
- `<runtime dir>/<node>`: agent, group workers, 1730: workers create files there (their
  rotated logs) but list nothing, and rename or remove only their own files (sticky).
- `<id>.ctl`, `<id>.spec`: agent, the instance's group, 0440: the agent writes (it mapped
  the page before), its worker reads, no other worker opens them.
- `<id>.stats`: agent, the instance's group, 0660: its worker (and the CUDA shim inside
  it) writes, the agent reads.
- `<id>.log*`: the instance's uid and group, 0600: its worker writes and rotates them, the
  agent reads them (CAP_DAC_READ_SEARCH; it writes only through the descriptor it opened
  before handing the file over).
- `<runtime dir>/<node>/tls` (secure mode): agent, group workers, 0750, files 0640: the
  node's worker identity, which all its workers share.

Uids are handed out round robin and never to a uid some process still runs as, so a
worker's leftovers can never open the pages of the instance that gets its uid next.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from services.common.errors import ResourceExhausted
from services.common.security.tls import TlsFiles

# Capabilities (bit numbers of /proc/<pid>/status CapEff) an agent needs to run workers as
# other users: switch uid and gid, hand files to them, signal them, read their logs.
_NEEDED_CAPABILITIES = {"CAP_CHOWN": 0, "CAP_DAC_READ_SEARCH": 2, "CAP_KILL": 5,
                        "CAP_SETGID": 6, "CAP_SETUID": 7}


class IsolationError(RuntimeError):
    """Per-worker uids were asked for but cannot be had."""


@dataclass(frozen=True, slots=True)
class WorkerUser:
    """The user one worker runs as."""

    uid: int
    gid: int
    groups: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class WorkerIds:
    """The `--worker-uids` setting: the shared group and the uids of instances."""

    group: int
    first: int
    last: int

    @classmethod
    def parse(cls, text: str) -> WorkerIds | None:
        """`FIRST-LAST` (e.g. 61000-61999): FIRST is the workers' group, the rest their
        uids; empty: off."""
        if not text:
            return None
        low, sep, high = text.partition("-")
        try:
            first, last = int(low), int(high)
        except ValueError:
            raise ValueError(f"{text!r} is not FIRST-LAST, e.g. 61000-61999") from None
        if not sep or not 1000 <= first < last <= 2**31 - 2:
            raise ValueError(f"{text!r} must be FIRST-LAST with 1000 <= FIRST < LAST (FIRST "
                             "is the workers' group, the others their uids)")
        return cls(first, first + 1, last)


@dataclass
class UidPool:
    """Round-robin uids for instances (pure: `busy` says which uids some process holds)."""

    ids: WorkerIds
    _next: int = 0
    _held: dict[str, int] = field(default_factory=dict)

    def take(self, instance_id: str, busy: Callable[[], set[int]]) -> int:
        if instance_id in self._held:
            return self._held[instance_id]
        size = self.ids.last - self.ids.first + 1
        taken = set(self._held.values()) | busy()
        for step in range(size):
            uid = self.ids.first + (self._next + step) % size
            if uid not in taken:
                self._next = (uid - self.ids.first + 1) % size
                self._held[instance_id] = uid
                return uid
        raise ResourceExhausted(f"all {size} worker uids {self.ids.first}-{self.ids.last} "
                                "are in use")

    def release(self, instance_id: str) -> None:
        self._held.pop(instance_id, None)


def uids_in_use(pool: WorkerIds, proc: Path = Path("/proc")) -> set[int]:
    """The uids of the range that some process runs as now."""
    found = set()
    for status in proc.glob("[0-9]*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("Uid:"):
                    uid = int(line.split()[2])  # effective
                    if pool.first <= uid <= pool.last:
                        found.add(uid)
                    break
        except (OSError, ValueError, IndexError):
            continue
    return found


def missing_privileges() -> list[str]:
    """What this process lacks to run workers as other users (empty: nothing)."""
    if os.geteuid() == 0:
        return []
    try:
        status = Path("/proc/self/status").read_text()
        effective = int(next(l.split()[1] for l in status.splitlines() if l.startswith("CapEff:")), 16)  # noqa: E741
    except (OSError, StopIteration, ValueError):
        return list(_NEEDED_CAPABILITIES)
    return [name for name, bit in _NEEDED_CAPABILITIES.items() if not effective >> bit & 1]


class Isolation:
    """How the agent lays out and hands over an instance's files, with or without
    per-worker uids."""

    def __init__(self, ids: WorkerIds | None) -> None:
        if ids is not None:
            lacking = missing_privileges()
            if lacking:
                raise IsolationError(f"--worker-uids needs root or the capabilities "
                                     f"{', '.join(lacking)} (see deploy/systemd/README.md)")
        self.ids = ids
        self._pool = UidPool(ids) if ids is not None else None

    @property
    def per_worker_uids(self) -> bool:
        return self.ids is not None

    def prepare(self, base: Path, node_dir: Path) -> None:
        """The runtime directories, owned and closed as the module docstring says."""
        node_dir.mkdir(parents=True, exist_ok=True)
        # A base directory of someone else's (`--runtime-dir /tmp`) is left as it is: the
        # node's own directory below it is what closes the pages.
        if self.ids is None:
            for path in (base, node_dir):
                if path.stat().st_uid == os.geteuid():
                    path.chmod(0o700)
            return
        if base.stat().st_uid == os.geteuid():
            base.chmod(0o711)
        os.chown(node_dir, os.geteuid(), self.ids.group)
        node_dir.chmod(0o1730)

    def user_for(self, instance_id: str) -> WorkerUser | None:
        if self._pool is None or self.ids is None:
            return None
        ids = self.ids
        uid = self._pool.take(instance_id, lambda: uids_in_use(ids))
        return WorkerUser(uid, uid, (ids.group,))

    def release(self, instance_id: str) -> None:
        if self._pool is not None:
            self._pool.release(instance_id)

    def hand_over(self, user: WorkerUser | None, *, read_only: Iterable[Path],
                  shared: Iterable[Path]) -> None:
        """Give an instance's pages their owners and modes: `read_only` (control, spec)
        for its worker to read, `shared` (stats) for it to write."""
        me = os.geteuid()
        for path in read_only:
            if user is not None:
                os.chown(path, me, user.gid)
            path.chmod(0o440 if user is not None else 0o400)
        for path in shared:
            if user is not None:
                os.chown(path, me, user.gid)
            path.chmod(0o660 if user is not None else 0o600)

    @staticmethod
    def hand_over_log(user: WorkerUser | None, fd: int) -> None:
        """The worker's log (open as `fd`), its own: it rotates it."""
        if user is not None:
            os.fchown(fd, user.uid, user.gid)
        os.fchmod(fd, 0o600)

    def worker_tls(self, tls: TlsFiles, node_dir: Path) -> TlsFiles:
        """The files workers serve with, readable by them: as given without per-worker
        uids; else copies in `<node dir>/tls`, readable by the workers' group only."""
        if self.ids is None:
            return tls
        target = node_dir / "tls"
        target.mkdir(exist_ok=True)
        os.chown(target, os.geteuid(), self.ids.group)
        target.chmod(0o750)
        copies = []
        for source in (tls.ca, tls.cert, tls.key):
            copy = target / source.name
            shutil.copyfile(source, copy)
            os.chown(copy, os.geteuid(), self.ids.group)
            copy.chmod(0o640)
            copies.append(copy)
        return TlsFiles(*copies)

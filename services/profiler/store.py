"""Profiles in JetStream KV (`dilu-profiles`), one record per key id, and the state machine
of a run over them.

    (none) --ask--> WANTED --claim--> RUNNING --finish--> READY | FAILED
                      ^                  |                     |
                      +-- a successor ---+      ask(refresh) --+

Every transition is a compare-and-set on the record's revision, so two writers never both
win: two `ask`s for one key make one record (the second joins it), and of two profilers
only one claims a run. A RUNNING record names its `owner` (one profiler process); a
profiler that starts finds the records its predecessor left RUNNING and puts them back to
WANTED (`requeue`), counting the attempt, and gives a run up as INTERRUPTED after
`MAX_ATTEMPTS`.
"""

from __future__ import annotations

from collections.abc import Callable

from dilu.v1 import profiler_pb2

from services.common.bus import ProtoKV
from services.common.errors import ResourceExhausted
from services.common.profiling import key_id
from services.common.timestamps import now_timestamp

__all__ = ["MAX_ATTEMPTS", "ProfileStore"]

P = profiler_pb2
MAX_ATTEMPTS = 3
_OPEN = (P.PROFILE_STATE_WANTED, P.PROFILE_STATE_RUNNING)
_RETRIES = 8  # compare-and-set rounds before a writer gives up (another kept winning)


class ProfileStore:
    def __init__(self, kv: ProtoKV[profiler_pb2.Profile], now: Callable[[], float],
                 max_open: int = 16) -> None:
        self._kv = kv
        self._now = now
        self.max_open = max_open

    async def get(self, profile_key_id: str) -> profiler_pb2.Profile | None:
        return await self._kv.get(profile_key_id)

    async def open_runs(self) -> list[profiler_pb2.Profile]:
        """Records WANTED or RUNNING, oldest request first."""
        records = [p for _, p in (await self._kv.items()).values() if p.state in _OPEN]
        return sorted(records, key=lambda p: (p.requested_at.ToNanoseconds(), p.key_id))

    async def ask(self, key: profiler_pb2.ProfileKey, function: str,
                  refresh: bool = False) -> profiler_pb2.Profile:
        """The record for `key`: created WANTED when there is none (or, with `refresh`,
        when the stored one is finished); joined as it is otherwise. ResourceExhausted
        when a new run would pass `max_open` open runs."""
        kid = key_id(key)
        wanted = P.Profile(function=function, model=key.model, key=key, key_id=kid,
                           state=P.PROFILE_STATE_WANTED, message="waiting for the profiler",
                           requested_at=now_timestamp(self._now()))
        for _ in range(_RETRIES):
            found = await self._kv.entry(kid)
            if found is not None:
                revision, record = found
                if record.state in _OPEN or not refresh:
                    return record
                await self._check_room()
                if await self._kv.update(kid, wanted, revision) is not None:
                    return wanted
                continue
            await self._check_room()
            if await self._kv.create(kid, wanted) is not None:
                return wanted
        raise ResourceExhausted(f"profile {kid} keeps changing under this request; try again")

    async def _check_room(self) -> None:
        open_runs = await self.open_runs()
        if len(open_runs) >= self.max_open:
            raise ResourceExhausted(f"the profiler already has {len(open_runs)} profiles queued "
                                    f"or running (at most {self.max_open}); try again later")

    async def claim(self, profile_key_id: str, owner: str) -> profiler_pb2.Profile | None:
        """WANTED -> RUNNING for `owner`; None when someone else got it first."""
        found = await self._kv.entry(profile_key_id)
        if found is None or found[1].state != P.PROFILE_STATE_WANTED:
            return None
        revision, record = found
        running = P.Profile()
        running.CopyFrom(record)
        running.state = P.PROFILE_STATE_RUNNING
        running.owner = owner
        running.attempts += 1
        running.message = "starting"
        running.started_at.CopyFrom(now_timestamp(self._now()))
        if await self._kv.update(profile_key_id, running, revision) is None:
            return None
        return running

    async def note(self, profile_key_id: str, owner: str, message: str) -> None:
        """A RUNNING record's progress message (best effort: lost races are fine)."""
        found = await self._kv.entry(profile_key_id)
        if found is None:
            return
        revision, record = found
        if record.state != P.PROFILE_STATE_RUNNING or record.owner != owner or record.message == message:
            return
        record.message = message
        await self._kv.update(profile_key_id, record, revision)

    async def finish(self, profile: profiler_pb2.Profile, owner: str) -> bool:
        """Store a READY or FAILED profile for a run `owner` holds; False when the run is
        no longer its own (a successor took it over)."""
        for _ in range(_RETRIES):
            found = await self._kv.entry(profile.key_id)
            if found is None or found[1].owner != owner or found[1].state != P.PROFILE_STATE_RUNNING:
                return False
            profile.finished_at.CopyFrom(now_timestamp(self._now()))
            if await self._kv.update(profile.key_id, profile, found[0]) is not None:
                return True
        return False

    async def release(self, profile_key_id: str, owner: str, why: str) -> None:
        """Give a run `owner` holds back (WANTED), or up (FAILED, INTERRUPTED) after
        `MAX_ATTEMPTS`: for errors of the platform, not of the function."""
        found = await self._kv.entry(profile_key_id)
        if found is None or found[1].owner != owner or found[1].state != P.PROFILE_STATE_RUNNING:
            return
        revision, record = found
        self._release(record, why)
        await self._kv.update(profile_key_id, record, revision)

    def _release(self, record: profiler_pb2.Profile, why: str) -> None:
        """A run that lost its owner: wanted again, or FAILED (INTERRUPTED) after
        `MAX_ATTEMPTS`."""
        record.owner = ""
        record.message = why
        if record.attempts >= MAX_ATTEMPTS:
            record.state = P.PROFILE_STATE_FAILED
            record.failure = P.PROFILE_FAILURE_INTERRUPTED
            record.message += f"; given up after {record.attempts} attempts"
            record.finished_at.CopyFrom(now_timestamp(self._now()))
        else:
            record.state = P.PROFILE_STATE_WANTED

    async def requeue(self, owner: str) -> list[profiler_pb2.Profile]:
        """Runs RUNNING under any other owner (a predecessor that was stopped or killed):
        back to WANTED, or FAILED (INTERRUPTED) after `MAX_ATTEMPTS`. Returns what it
        changed."""
        changed = []
        for kid, (revision, record) in (await self._kv.items()).items():
            if record.state != P.PROFILE_STATE_RUNNING or record.owner == owner:
                continue
            self._release(record, f"its profiler ({record.owner}) stopped mid-run")
            if await self._kv.update(kid, record, revision) is not None:
                changed.append(record)
        return changed

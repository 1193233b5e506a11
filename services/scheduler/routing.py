"""Invocation routing: least outstanding requests, ties broken by least recently chosen."""

from __future__ import annotations

from collections.abc import Iterable


class LeastOutstanding:
    """Tracks in-flight requests per instance and picks the least loaded one."""

    def __init__(self) -> None:
        self._outstanding: dict[str, int] = {}
        self._last_pick: dict[str, int] = {}
        self._picks = 0

    def pick(self, candidates: Iterable[str]) -> str | None:
        options = list(candidates)
        if not options:
            return None
        choice = min(
            options,
            key=lambda i: (self._outstanding.get(i, 0), self._last_pick.get(i, -1), i),
        )
        self._picks += 1
        self._last_pick[choice] = self._picks
        return choice

    def begin(self, instance_id: str) -> None:
        self._outstanding[instance_id] = self._outstanding.get(instance_id, 0) + 1

    def end(self, instance_id: str) -> None:
        left = self._outstanding.get(instance_id, 0) - 1
        if left > 0:
            self._outstanding[instance_id] = left
        else:
            self._outstanding.pop(instance_id, None)

    def outstanding(self, instance_id: str) -> int:
        return self._outstanding.get(instance_id, 0)

    def forget(self, instance_id: str) -> None:
        self._outstanding.pop(instance_id, None)
        self._last_pick.pop(instance_id, None)

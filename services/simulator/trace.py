"""Placement traces: the paper's recorded ones (see data/ORIGIN.md) and their events."""

from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from services.scheduler.placement import InstanceShape, WorkloadKind

GIB = 1024  # MiB per GB as the traces count it

_KINDS = {"inference": WorkloadKind.INFERENCE, "llm-inference": WorkloadKind.LLM_INFERENCE,
          "training": WorkloadKind.TRAINING}


class TraceError(ValueError):
    """A trace line that cannot be understood; names the file and the line."""


@dataclass(frozen=True, slots=True)
class Event:
    time_s: float            # seconds since the trace began
    start: bool              # False: the instance named `instance` is deleted
    instance: str
    shape: InstanceShape


def bundled_trace(instances: int) -> Path:
    """The paper's trace with this many instances, shipped with the package."""
    path = Path(str(resources.files("services.simulator") / "data" / "traces" / f"instances-{instances}.txt"))
    if not path.exists():
        known = sorted(int(p.stem.split("-")[1]) for p in path.parent.glob("instances-*.txt"))
        raise FileNotFoundError(f"no bundled trace with {instances} instances; known: {known}")
    return path


def load_trace(path: Path, llm_shards: int = 1) -> list[Event]:
    """Events in file order (the order the recording saw them), times from the first.
    LLM inference may be split into up to `llm_shards` pipeline stages (the traces do not
    say; a policy that cannot split ignores it)."""
    events: list[Event] = []
    origin: datetime | None = None
    with path.open() as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                when, start, name, shape = _parse(ast.literal_eval(line), llm_shards)
            except (ValueError, SyntaxError, TypeError) as e:
                raise TraceError(f"{path}:{number}: {e}") from None
            except KeyError as e:
                raise TraceError(f"{path}:{number}: missing key {e}") from None
            origin = when if origin is None else origin
            if events and (when - origin).total_seconds() < events[-1].time_s:
                raise TraceError(f"{path}:{number}: time {when} is before the line above's")
            # Naive wall times subtracted as such: no local zone, no daylight saving.
            events.append(Event((when - origin).total_seconds(), start, name, shape))
    return events


def _parse(row: object, llm_shards: int) -> tuple[datetime, bool, str, InstanceShape]:
    if not isinstance(row, dict) or not isinstance(row.get("Instance"), dict):
        raise ValueError("expected a dict literal with Time, Action and an Instance dict")
    action = row["Action"]
    if action not in ("start", "delete"):
        raise ValueError(f"Action must be start or delete, not {action!r}")
    spec = row["Instance"]
    kind = spec["type"]
    if kind not in _KINDS:
        raise ValueError(f"Instance.type must be one of {sorted(_KINDS)}, not {kind!r}")
    gpus = int(spec["gpu_num"])
    memory = list(spec["memory"])
    if gpus < 1 or len(memory) != gpus:
        raise ValueError(f"Instance.memory needs one entry per GPU ({gpus}), has {len(memory)}")
    request, limit = float(spec["sm_requests"]), float(spec["sm_limits"])
    if not 0 < request <= limit:
        raise ValueError(f"need 0 < sm_requests <= sm_limits, got {request} and {limit}")
    shape = InstanceShape(
        function=spec["service_name"], kind=_KINDS[kind], sm_request=request, sm_limit=limit,
        # One shape per GPU: an uneven split is placed as if every GPU needed the most.
        memory_mib=int(max(memory) * GIB), gpus=gpus,
        max_shards=llm_shards if kind == "llm-inference" and gpus == 1 else 1)
    when = datetime.fromisoformat(row["Time"])
    if when.tzinfo is not None:  # compare all times in UTC, without a zone
        when = when.astimezone(UTC).replace(tzinfo=None)
    return when, action == "start", spec["service_name"], shape


def starts(events: Iterable[Event]) -> list[InstanceShape]:
    return [e.shape for e in events if e.start]

"""Placement: which GPUs an instance goes to. Policies are pure objects behind `Placement`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from services.scheduler.placement.first_fit import FirstFit
from services.scheduler.placement.ledger import Ledger
from services.scheduler.placement.types import (
    Assignment,
    GpuSlot,
    InstanceShape,
    PlacementBounds,
    WorkloadKind,
)


class Placement(Protocol):
    """Chooses GPUs for one instance; returns None when nothing admits it.

    `gpus` lists only GPUs of nodes that are up, sorted by (node, uuid). A policy must not
    mutate anything: the caller commits the result to its `Ledger`.
    """

    name: str

    def place(self, shape: InstanceShape, gpus: Sequence[GpuSlot]) -> Assignment | None: ...


POLICIES: dict[str, type] = {FirstFit.name: FirstFit}


def make_placement(name: str, bounds: PlacementBounds | None = None) -> Placement:
    try:
        policy = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown placement policy {name!r}; known: {', '.join(POLICIES)}") from None
    placement: Placement = policy(bounds)
    return placement


__all__ = [
    "POLICIES",
    "Assignment",
    "FirstFit",
    "GpuSlot",
    "InstanceShape",
    "Ledger",
    "Placement",
    "PlacementBounds",
    "WorkloadKind",
    "make_placement",
]

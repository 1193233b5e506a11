"""Placement: which GPUs an instance goes to. Policies are pure objects behind `Placement`."""

from __future__ import annotations

from typing import Protocol

from services.scheduler.placement.baselines import Exclusive, InflessLimits, InflessRequests, PaperDilu
from services.scheduler.placement.complementary import Complementary
from services.scheduler.placement.first_fit import FirstFit
from services.scheduler.placement.ledger import Ledger
from services.scheduler.placement.types import (
    SLO_BOUND,
    Assignment,
    GpuSlot,
    InstanceShape,
    PlacementBounds,
    WorkloadKind,
)
from services.scheduler.placement.view import ClusterView


class Placement(Protocol):
    """Chooses GPUs for one instance; returns None when nothing admits it.

    `view` holds every GPU the ledger knows; only those marked eligible (their node is
    up) may be chosen. A policy never changes the view: the caller commits the result to
    its `Ledger`. A policy may learn from the shapes it is asked about (see
    `Complementary`), so one policy object serves one cluster.
    """

    name: str
    bounds: PlacementBounds

    def place(self, shape: InstanceShape, view: ClusterView) -> Assignment | None: ...


POLICIES: dict[str, type] = {p.name: p for p in (
    Complementary, PaperDilu, InflessLimits, InflessRequests, Exclusive, FirstFit)}
DEFAULT_POLICY = Complementary.name


def make_placement(name: str, bounds: PlacementBounds | None = None) -> Placement:
    try:
        policy = POLICIES[name]
    except KeyError:
        raise ValueError(f"unknown placement policy {name!r}; known: {', '.join(POLICIES)}") from None
    placement: Placement = policy(bounds)
    return placement


__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "SLO_BOUND",
    "Assignment",
    "ClusterView",
    "Complementary",
    "Exclusive",
    "FirstFit",
    "GpuSlot",
    "InflessLimits",
    "InflessRequests",
    "InstanceShape",
    "Ledger",
    "PaperDilu",
    "Placement",
    "PlacementBounds",
    "WorkloadKind",
    "make_placement",
]

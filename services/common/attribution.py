"""Who made a scaling decision: the `source` every ScaleOut, ScaleIn and SetQuota carries
into `DILU_SCALING`.

A source is a short lowercase token (a letter, then letters, digits, '-' or '_'; at most
32), so it can be matched on and counted. The ones Dilu itself sends:

    manual     a request that names no source (grpcurl, a script), the default
    cli        the `dilu` command line
    scaler     the co-scaler (vertical SetQuota and horizontal ScaleOut/ScaleIn)
    scheduler  the scheduler's own decisions

Other tools pick their own token (e.g. "ci", "my-autoscaler").
"""

from __future__ import annotations

import re

from services.common.errors import InvalidArgument

SOURCE_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,31}")
MANUAL = "manual"
CLI = "cli"
SCALER = "scaler"
SCHEDULER = "scheduler"


def checked_source(field: str, source: str) -> str:
    """`source`, or "manual" when empty; INVALID_ARGUMENT naming `field` when it is not a
    short lowercase token."""
    if not source:
        return MANUAL
    if not SOURCE_PATTERN.fullmatch(source):
        shown = source if len(source) <= 40 else source[:40] + "…"
        raise InvalidArgument(field, f"{shown!r} must be a lowercase token: a letter, then up "
                                     "to 31 letters, digits, '-' or '_' (e.g. scaler, cli)")
    return source

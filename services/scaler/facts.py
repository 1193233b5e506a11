"""What the live scaler sizes a function from: its profile and its cold-start time.

No profiler result is stored yet (`dilu-profiles` stays empty until the profiler lands),
so a function of the `sim` runtime is sized from the stand-in profile the serving simulator
computes for the same model and SLO (`services.simulator.serving.profile`: cached on disk,
measured in a worker thread the first time, which takes tens of seconds; the function is
left alone until it is ready) and its cold start is the simulator's model of one.

A function the simulator cannot model (the `torch` runtime) has no profile here: the
policy leaves it as deployed. Acting on measured latency alone for such a function is not
built (see the README's co-scaling section).
"""

from __future__ import annotations

import asyncio
import logging

from dilu.v1 import types_pb2

from services.perf import SIM_MODELS
from services.scaler.live_context import FunctionFacts

log = logging.getLogger(__name__)


class FactsCache:
    """Function name → facts, computed off the event loop the first time they are needed."""

    def __init__(self, overhead_ms: float | None = None) -> None:
        from services.simulator.serving.engine import PROXY_OVERHEAD_MS

        self._overhead_ms = PROXY_OVERHEAD_MS if overhead_ms is None else overhead_ms
        self._facts: dict[tuple[str, float], FunctionFacts] = {}
        self._pending: dict[tuple[str, float], asyncio.Task[None]] = {}

    def lookup(self, specs: list[types_pb2.FunctionSpec]) -> dict[str, FunctionFacts]:
        """The facts known now for these specs; starts computing the missing ones."""
        known = {}
        for spec in specs:
            if spec.kind == types_pb2.FUNCTION_KIND_TRAINING:
                continue
            if spec.runtime != types_pb2.RUNTIME_SIM or spec.model not in SIM_MODELS:
                continue
            key = (spec.model, spec.slo.latency_ms)
            fact = self._facts.get(key)
            if fact is not None:
                known[spec.name] = fact
            elif key not in self._pending:
                self._pending[key] = asyncio.create_task(self._compute(key))
        return known

    async def _compute(self, key: tuple[str, float]) -> None:
        try:
            self._facts[key] = await asyncio.to_thread(_facts, key[0], key[1], self._overhead_ms)
            log.info("profile of %s at %g ms ready", *key)
        except Exception:
            log.exception("no profile for %s at %g ms", *key)
        finally:
            self._pending.pop(key, None)


def _facts(model: str, slo_ms: float, overhead_ms: float) -> FunctionFacts:
    from services.simulator.serving.engine import cold_start_s
    from services.simulator.serving.profile import profiles_for

    # The tables' own speed (slowdown 1): the scaler does not read runtime options yet.
    profile = profiles_for([(model, slo_ms, 1.0)], overhead_ms)[model, slo_ms, 1.0]
    return FunctionFacts(profile, cold_start_s(model))

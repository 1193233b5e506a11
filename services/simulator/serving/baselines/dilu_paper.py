"""The Dilu paper as its reference code runs it (`sigserverless/Dilu`): `dilu-paper`
placement (requests ≤ 100 %, limits ≤ 150 %, weighted best fit 0.6·SM + 0.4·memory), the
RCKM rule on every node (`rckm.py`) and lazy horizontal scaling
(`adaptive_2D_scaling/horizontal_scaling/scaler.py`):

Every second, per function, the requests that arrived in the last second join a history
of the last 40. With N instances deployed (starting or ready) and C one instance's
capacity, it scales out by one when at least 20 of the 40 exceed N × C, and in by one
(never below the minimum, at least 1) when at least 30 of the 40 are below (N − 1) × C;
after either the history starts over. The reference checks out before in, in the same
second. C is the reference's per-function `throughput` figure; here the stand-in capacity
of one instance at its limit and max batch (under RCKM inference is never throttled, so
an instance runs at its limit or more while it is alone with training).

Quotas and batches are sized as today's platform sizes them (`operator_sizing`: the
scenario's where it pins them, else request for the trace's mean rate, limit for its peak
and at least the share at which a lone request meets the SLO): Dilu's profiler (HGSS) is
not here, and until it lands every system sizes from the stand-in profile.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.scheduler.placement import Placement, PlacementBounds, make_placement
from services.simulator.serving import policy as hooks
from services.simulator.serving.baselines import rckm
from services.simulator.serving.baselines.rckm import RckmDriver
from services.simulator.serving.engine import Sizing
from services.simulator.serving.instances import DRAINING
from services.simulator.serving.profile import StandInProfile
from services.simulator.serving.scenario import Scenario, ServedFunction

if TYPE_CHECKING:
    from services.simulator.serving.systems import ArbitrationFactory


@dataclass(frozen=True, slots=True)
class LazySettings:
    interval_s: float = 1.0
    history: int = 40
    out_after: int = 20       # samples above N × C
    in_after: int = 30        # samples below (N - 1) × C


class LazyScaling:
    """The reference's `Scaler`: a pure decision object over one-second request counts."""

    def __init__(self, capacity_rps: Mapping[str, float], settings: LazySettings = LazySettings()) -> None:
        self.capacity = dict(capacity_rps)
        self.settings = settings
        self.interval_s = settings.interval_s
        self.history: dict[str, deque[float]] = {
            name: deque(maxlen=settings.history) for name in capacity_rps}

    def decide(self, view: hooks.ClusterView) -> Sequence[hooks.Action]:
        actions: list[hooks.Action] = []
        for name, function in view.functions.items():
            window = function.window
            history = self.history[name]
            history.append(window.arrivals if window is not None else 0)
            deployed = sum(1 for i in function.instances if i.state != DRAINING)
            action = self.step(name, deployed, function.replicas_min, function.replicas_max)
            if action is not None:
                actions.append(action)
        return actions

    def step(self, name: str, deployed: int, minimum: int, maximum: int) -> hooks.Action | None:
        """One check of one function with `deployed` instances (its history updated)."""
        history, capacity, s = self.history[name], self.capacity[name], self.settings
        if sum(1 for x in history if x > deployed * capacity) >= s.out_after and deployed < maximum:
            history.clear()
            return hooks.ScaleOut(name, 1, reason="lazy: out")
        if (sum(1 for x in history if x < (deployed - 1) * capacity) >= s.in_after
                and deployed > max(1, minimum)):
            history.clear()
            return hooks.ScaleIn(name, reason="lazy: in")
        return None


class DiluPaper:
    """`dilu-paper` placement, the RCKM rule, lazy scaling."""

    name = "dilu-paper"
    lazy = LazySettings()

    def __init__(self) -> None:
        self._sizing: dict[str, Sizing] = {}

    def placement(self, bounds: PlacementBounds) -> Placement:
        return make_placement("dilu-paper", bounds)

    def arbitration(self) -> ArbitrationFactory:
        return RckmDriver

    def sizing(self, function: ServedFunction, profile: StandInProfile | None) -> Sizing:
        from services.simulator.serving.systems import operator_sizing  # it registers this module

        sizing = self._sizing.get(function.name)
        if sizing is None:
            sizing = self._sizing[function.name] = operator_sizing(function, profile)
        return sizing

    def policy(self, scenario: Scenario, profiles: Mapping[str, StandInProfile]) -> LazyScaling:
        capacity = {}
        for function in scenario.functions:
            sizing = self.sizing(function, profiles.get(function.name))
            profile = profiles.get(function.name)
            capacity[function.name] = (profile.capacity(sizing.limit, sizing.max_batch)
                                       if profile is not None else 0.0)
        return LazyScaling(capacity, self.lazy)

    def parameters(self) -> Mapping[str, object]:
        return {"placement": "dilu-paper (0.6·SM + 0.4·memory best fit)",
                "arbitration": "RCKM", "rckm_tick_ms": rckm.TICK_NS / 1e6,
                "rckm_emergency": f"burst/shortest ≥ {rckm.EMERGENCY_RATIO} (< "
                                  f"{rckm.CEILING_RATIO}): budget / ratio, floor "
                                  f"{100 * rckm.FLOOR:g}% of request",
                "rckm_recovery": f"< {rckm.RECOVERY_RATIO} on every {rckm.RECOVERY_EVERY}th "
                                 f"burst: budget × {rckm.INCREASE}",
                "rckm_idle_restore_s": rckm.IDLE_TICKS * rckm.TICK_NS / 1e9,
                "rckm_initial_budget": rckm.INITIAL_BUDGET,
                "lazy_interval_s": self.lazy.interval_s, "lazy_history": self.lazy.history,
                "lazy_out": f"≥ {self.lazy.out_after} of {self.lazy.history} > N × capacity",
                "lazy_in": f"≥ {self.lazy.in_after} of {self.lazy.history} < (N-1) × capacity",
                "capacity": "stand-in capacity at the limit and max batch",
                "sizing": "operator_sizing (as static)"}

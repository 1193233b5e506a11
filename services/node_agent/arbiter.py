"""The per-GPU arbiter: turns requests, limits and recent demand into effective shares.

Requests are guaranteed. Capacity nobody requested is lent up to limits: first to
inference instances that are short of credit (SLO-bound work first), then to training.
When an inference instance is short of credit and still below its limit (the GPU is full),
training's borrowing is cut multiplicatively at once and restored gradually afterwards, so
bursts win the GPU within one period and training gets idle time back without
oscillating. Inference that is hungry at its own limit is no reason to idle the rest of
the GPU: training may have what inference is not allowed to take.
"""

from __future__ import annotations

from dataclasses import dataclass

_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Claim:
    instance_id: str
    inference: bool
    request: float
    limit: float
    # Waited for credit (or queued work) during the last period: it could use more.
    hungry: bool


@dataclass(frozen=True, slots=True)
class ArbiterSettings:
    training_decrease: float = 0.5  # multiplicative cut of training's borrowing under pressure
    training_increase: float = 0.02  # additive restore per quiet period (full in ~50 periods)


class GpuArbiter:
    """One per GPU; remembers how far training borrowing is throttled."""

    def __init__(self, settings: ArbiterSettings = ArbiterSettings()) -> None:
        self._settings = settings
        self.training_factor = 1.0

    def shares(self, claims: list[Claim]) -> dict[str, float]:
        """One period: effective shares, and training's throttle moved one step."""
        if not claims:
            return {}
        self.training_factor = self.next_factor(claims)
        return allocate(claims, self.training_factor)

    def skip(self, claims: list[Claim], periods: int) -> None:
        """Advance training's throttle exactly as `periods` more calls of `shares(claims)`
        would, without computing the shares (an event-driven caller skips quiet periods)."""
        if periods <= 0 or not claims or _overcommitted(claims):
            return
        if self.under_pressure(claims):
            for _ in range(periods):
                if self.training_factor == 0.0:
                    break
                self.training_factor *= self._settings.training_decrease
        else:
            for _ in range(periods):
                if self.training_factor >= 1.0:
                    break
                self.training_factor = min(1.0, self.training_factor + self._settings.training_increase)

    def moving(self, claims: list[Claim]) -> bool:
        """Whether another period with these claims could change a share: training borrows
        less than its full ceiling and nothing is pressing it (the throttle is restoring)."""
        return (self.training_factor < 1.0 and any(not c.inference for c in claims)
                and not _overcommitted(claims) and not self.under_pressure(claims))

    def under_pressure(self, claims: list[Claim]) -> bool:
        """An inference instance is hungry and still below its limit after the spare was
        lent: it is being slowed by its neighbours."""
        if not claims or _overcommitted(claims):
            return False
        shares = {c.instance_id: c.request for c in claims}
        hungry = [c for c in claims if c.inference and c.hungry]
        _lend(shares, 1.0 - sum(c.request for c in claims), {c.instance_id: c.limit for c in hungry})
        return any(shares[c.instance_id] < c.limit - _EPSILON for c in hungry)

    def next_factor(self, claims: list[Claim], factor: float | None = None) -> float:
        """Training's throttle after one more period with these claims (pure)."""
        factor = self.training_factor if factor is None else factor
        if _overcommitted(claims):
            return factor  # the guarantees are scaled instead; nothing is lent
        if self.under_pressure(claims):
            return factor * self._settings.training_decrease
        return min(1.0, factor + self._settings.training_increase)


def _overcommitted(claims: list[Claim]) -> bool:
    return sum(c.request for c in claims) > 1 + _EPSILON


def allocate(claims: list[Claim], training_factor: float) -> dict[str, float]:
    """Effective shares for one period (pure): requests, then the spare lent to hungry
    inference up to limits, then to training up to `request + factor × (limit - request)`."""
    requested = sum(c.request for c in claims)
    if requested > 1 + _EPSILON:
        # Only reachable through a quota change that over-commits the GPU: scale the
        # guarantees down evenly rather than hand out more than the GPU has.
        return {c.instance_id: c.request / requested for c in claims}
    shares = {c.instance_id: c.request for c in claims}
    spare = 1.0 - requested
    hungry_inference = {c.instance_id: c.limit for c in claims if c.inference and c.hungry}
    spare = _lend(shares, spare, hungry_inference)
    training = {c.instance_id: c.request + training_factor * (c.limit - c.request)
                for c in claims if not c.inference}
    _lend(shares, spare, training)
    return shares


def _lend(shares: dict[str, float], spare: float, ceilings: dict[str, float]) -> float:
    """Water-fill `spare` over the instances in `ceilings` (equal increments, none above
    its ceiling); returns what is left."""
    open_ids = [i for i, ceiling in ceilings.items() if ceiling - shares[i] > _EPSILON]
    while spare > _EPSILON and open_ids:
        each = spare / len(open_ids)
        still_open = []
        for instance_id in open_ids:
            grant = min(each, ceilings[instance_id] - shares[instance_id])
            shares[instance_id] += grant
            spare -= grant
            if ceilings[instance_id] - shares[instance_id] > _EPSILON:
                still_open.append(instance_id)
        open_ids = still_open
    return max(0.0, spare)

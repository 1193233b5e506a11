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
        # What the last period found: an inference instance pressed by its neighbours,
        # training among the claims, the guarantees over-committed (nothing lent).
        self.pressed = False
        self._training = False
        self._overcommitted = False

    def shares(self, claims: list[Claim]) -> dict[str, float]:
        """One period: effective shares, and training's throttle moved one step."""
        if not claims:
            return {}
        requested = sum(c.request for c in claims)
        self._training = any(not c.inference for c in claims)
        self._overcommitted = requested > 1 + _EPSILON
        if self._overcommitted:
            # Only reachable through a quota change that over-commits the GPU: scale the
            # guarantees down evenly rather than hand out more than the GPU has.
            self.pressed = False
            return {c.instance_id: c.request / requested for c in claims}
        shares = {c.instance_id: c.request for c in claims}
        spare = 1.0 - requested
        hungry_inference = [c for c in claims if c.inference and c.hungry]
        spare = _lend(shares, spare, {c.instance_id: c.limit for c in hungry_inference})
        self.pressed = any(shares[c.instance_id] < c.limit - _EPSILON for c in hungry_inference)
        self._step()
        training = {c.instance_id: c.request + self.training_factor * (c.limit - c.request)
                    for c in claims if not c.inference}
        _lend(shares, spare, training)
        return shares

    def _step(self) -> None:
        if self.pressed:
            self.training_factor *= self._settings.training_decrease
        else:
            self.training_factor = min(1.0, self.training_factor + self._settings.training_increase)

    def skip(self, periods: int) -> None:
        """Advance training's throttle exactly as `periods` more periods with the last
        period's claims would, without computing shares (an event-driven caller skips
        the periods where nothing changes)."""
        if self._overcommitted:
            return
        for _ in range(max(0, periods)):
            if (self.training_factor == 0.0) if self.pressed else (self.training_factor >= 1.0):
                break  # it stays there
            self._step()

    def restoring(self) -> bool:
        """Whether another period with the last claims changes training's ceiling: the
        throttle is being restored (nothing presses) on a GPU with training."""
        return (self._training and not self._overcommitted and not self.pressed
                and self.training_factor < 1.0)


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

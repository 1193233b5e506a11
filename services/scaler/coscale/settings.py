"""The co-scaling policy's parameters: one frozen settings object, units in the names.

`CoscaleSettings.validated()` checks every field and raises `InvalidArgument` naming it
(`policy.<field>`), so a `SetPolicy` carrying a bad value is refused with the field in the
message; `to_proto` / `from_proto` convert to and from `dilu.v1.ScalingPolicy`, whose fields are
these, one for one (a field left unset there keeps its default here).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

from dilu.v1 import scaler_pb2

from services.common import limits
from services.common.errors import InvalidArgument

# The smallest share an agent accepts (DESIGN.md: a share below 0.01 is out of range).
MIN_SHARE = 0.01


@dataclass(frozen=True, slots=True)
class CoscaleSettings:
    # How often the policy decides (the QoS windows are one second long).
    interval_s: float = 1.0
    # A function's rate level is its mean over the last `rate_window_s` plus one standard
    # error; a last window more than `noise_sigmas` Poisson deviations above it is a jump
    # (taken at once), and the trend fitted over `trend_window_s` is extrapolated when it
    # stands `noise_sigmas` standard errors out of the noise (never downwards).
    rate_window_s: float = 5.0
    trend_window_s: float = 6.0
    noise_sigmas: float = 3.0
    # The part of requests the policy sizes to answer within the SLO.
    slo_target: float = 0.99
    # Every instance is sized for its predicted rate × (1 + capacity_headroom): the
    # Poisson noise of a one-second rate, and a jump before the next decision.
    capacity_headroom: float = 0.25
    # Its limit (the busy share the arbiter lends up to while it waits for credit, free
    # while it idles) is sized for its predicted rate × (1 + burst_headroom): a one-second
    # jump of the rate is absorbed within one arbiter period, before any decision.
    burst_headroom: float = 1.0
    # Scale in only when the instances left carry the highest rate of the last
    # `scale_in_after_s` × (1 + scale_in_headroom): wider than `capacity_headroom`, so a
    # scale-in is never followed by a scale-out at the same load (hysteresis).
    scale_in_headroom: float = 0.6
    scale_in_after_s: float = 15.0
    # Quotas rise at once (by more than half `min_change`); they are lowered to the highest
    # target of the last `scale_down_after_s`, and only by at least `min_change` of a GPU.
    scale_down_after_s: float = 15.0
    min_change: float = 0.05
    # Training yields: its request may be lowered to `training_request_floor` × its
    # deployed request (never below MIN_SHARE), its limit to `training_limit_floor` × its
    # deployed request (so when inference idles it still runs at its deployed guarantee).
    training_request_floor: float = 0.5
    training_limit_floor: float = 1.0
    # A function starts (and `ScaleOut` places) at the busy share one instance needs for
    # its expected rate, at most this much of a GPU.
    start_share_max: float = 0.5
    # A requested instance that has not appeared after its cold start plus this long is
    # taken as not placed (the cluster is full) and asked for again.
    scale_out_patience_s: float = 5.0
    # Functions whose minimum is 0 go to zero after this long without a request.
    keep_alive_s: float = 60.0
    # Ablations: vertical only (replicas as deployed), horizontal only (quotas as deployed).
    vertical: bool = True
    horizontal: bool = True

    def validated(self) -> CoscaleSettings:
        """Self, or `InvalidArgument` naming the first bad field (`policy.<field>`): every
        number in its range (`services.common.limits.POLICY`), then the rules between
        fields."""
        for name, bounds in limits.POLICY.items():
            limits.check_number(f"policy.{name}", getattr(self, name), bounds)
        if not self.capacity_headroom <= self.burst_headroom:
            raise InvalidArgument("policy.burst_headroom",
                                  f"must be at least capacity_headroom ({self.capacity_headroom:g}): "
                                  f"a limit is never below the busy share, got {self.burst_headroom:g}")
        if not self.capacity_headroom < self.scale_in_headroom:
            raise InvalidArgument(
                "policy.scale_in_headroom",
                f"must be above capacity_headroom ({self.capacity_headroom:g}): a scale-in must "
                f"leave more room than a scale-out asks for, got {self.scale_in_headroom:g}")
        if not self.training_request_floor <= self.training_limit_floor:
            raise InvalidArgument(
                "policy.training_limit_floor",
                f"must be at least training_request_floor ({self.training_request_floor:g}), "
                f"got {self.training_limit_floor:g}")
        if not (self.vertical or self.horizontal):
            raise InvalidArgument("policy.horizontal", "vertical and horizontal cannot both be off")
        return self

    # ---- the wire ----------------------------------------------------------------------

    def to_proto(self) -> scaler_pb2.ScalingPolicy:
        """Every field set (the proto's fields are the settings', one for one)."""
        return scaler_pb2.ScalingPolicy(**{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def from_proto(cls, message: scaler_pb2.ScalingPolicy) -> CoscaleSettings:
        """The settings a `ScalingPolicy` carries, validated; a field it leaves unset
        keeps its default (every field has presence)."""
        changes = {f.name: getattr(message, f.name) for f in fields(cls)
                   if message.HasField(f.name)}  # type: ignore[arg-type]  # names, not literals
        return replace(cls(), **changes).validated()

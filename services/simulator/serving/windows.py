"""Per-second QoS windows: what the simulator measures about each instance and function in
one window, as the node agent's QoS reports do live (`dilu.qos.<function>`). Scaling
policies see the last closed window of every instance (see `policy.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NS = 1_000_000_000


@dataclass(frozen=True, slots=True)
class QosWindow:
    """One instance's (or one function's) window `[start_s, end_s)`."""

    start_s: float
    end_s: float
    arrivals: int              # requests routed to it (a function: offered, incl. refused)
    completed: int
    within_slo: int
    p50_ms: float
    p99_ms: float
    queue: int                 # waiting at the window's end (a function: for a ready instance)
    busy_s: float              # GPU time its batches used (whole-GPU seconds)
    throttled_s: float         # time its gate made it wait for credit
    mean_share: float          # time-averaged effective share
    concurrency: float         # time-averaged requests in flight (routed, not yet answered)
    refused: int = 0           # a function: refused by a full queue
    p95_ms: float = 0.0

    @property
    def rps(self) -> float:
        return self.arrivals / max(self.end_s - self.start_s, 1e-9)

    @property
    def violations(self) -> int:
        return self.completed - self.within_slo


@dataclass(slots=True)
class WindowCounter:
    """Accumulates one window; `close` returns it and starts the next."""

    start_ns: int
    arrivals: int = 0
    completed: int = 0
    within_slo: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    busy_ns: int = 0
    throttled_ns: int = 0
    refused: int = 0
    share_ns: float = 0.0       # ∫ share dt
    inflight_ns: float = 0.0    # ∫ in-flight dt
    _share: float = 0.0
    _share_since: int = 0
    _inflight: int = 0
    _inflight_since: int = 0

    def set_share(self, now_ns: int, share: float) -> None:
        self.share_ns += self._share * (now_ns - self._share_since)
        self._share, self._share_since = share, now_ns

    def inflight(self, now_ns: int, delta: int) -> None:
        self.inflight_ns += self._inflight * (now_ns - self._inflight_since)
        self._inflight += delta
        self._inflight_since = now_ns

    def close(self, now_ns: int, queue: int) -> QosWindow:
        self.set_share(now_ns, self._share)
        self.inflight(now_ns, 0)
        span = max(now_ns - self.start_ns, 1)
        if self.latencies_ms:
            p50, p95, p99 = (float(v) for v in np.percentile(self.latencies_ms, [50, 95, 99]))
        else:
            p50 = p95 = p99 = 0.0
        window = QosWindow(self.start_ns / NS, now_ns / NS, self.arrivals, self.completed,
                           self.within_slo, p50, p99, queue, self.busy_ns / NS,
                           self.throttled_ns / NS, self.share_ns / span, self.inflight_ns / span,
                           self.refused, p95)
        self.start_ns = now_ns
        self.arrivals = self.completed = self.within_slo = self.refused = 0
        self.latencies_ms = []
        self.busy_ns = self.throttled_ns = 0
        self.share_ns = self.inflight_ns = 0.0
        return window

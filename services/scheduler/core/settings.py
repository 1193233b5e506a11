"""The scheduler's settings: one frozen value shared by the core and its shell."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SchedulerSettings:
    # A node whose heartbeat entry has not changed for this long is lost.
    node_timeout_s: float = 10.0
    # How often the shell reads heartbeats and ticks the core.
    reconcile_interval_s: float = 1.0
    # Minimum age of a placement before an agent's heartbeats may declare it gone.
    agent_grace_s: float = 2.0
    # Failed, lost and stopped instances stay visible this long, then are forgotten...
    terminal_retention_s: float = 30.0
    # ...and only this many of them per function, the newest.
    kept_terminal: int = 5
    agent_timeout_s: float = 5.0
    # How long a stopping instance may take to finish its in-flight requests.
    drain_timeout_s: float = 10.0
    # Failures back a function off: the first retry waits this long, each further
    # failure doubles the wait, up to `backoff_max_s`.
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 30.0
    # Failures in a row after which a function is degraded (retried every backoff_max_s).
    degraded_after: int = 5
    # An instance ready this long, with no failure meanwhile, clears the failure count.
    healthy_after_s: float = 60.0
    # A node that refused or could not be reached for a start gets no placement of that
    # function for this long, so the replacement goes elsewhere.
    avoid_node_s: float = 30.0

    def __post_init__(self) -> None:
        if self.backoff_initial_s <= 0 or self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("back-off needs 0 < backoff_initial_s <= backoff_max_s, got "
                             f"{self.backoff_initial_s} and {self.backoff_max_s}")
        if self.degraded_after < 1 or self.kept_terminal < 0:
            raise ValueError("degraded_after must be at least 1 and kept_terminal at least 0")

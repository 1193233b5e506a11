"""Back-off per function: pure rules over the failure fields of its `FunctionStatus`.

Every instance that fails counts: a start an agent refused or could not be reached for,
and a worker that exited without being asked (a crash, or one that never became ready).
Lost nodes, GPUs that disappeared and instances an agent forgot do not count: they say
nothing about the function. After failure n the function's next start waits

    backoff_initial_s × 2^(n-1), at most backoff_max_s     (1, 2, 4, 8 s ... 30 s)

and from `degraded_after` failures in a row on it is DEGRADED and waits `backoff_max_s`
every time: it keeps being retried, so it recovers by itself when the cause clears (a
node with room, a fixed model file), at a pace that cannot flood the cluster. The count
goes back to zero, and the state to OK, once an instance has stayed ready for
`healthy_after_s` with no failure in between.

The state lives in the function's record, so a restarted scheduler keeps backing off.
"""

from __future__ import annotations

from dilu.v1 import types_pb2

from services.common.timestamps import now_timestamp
from services.scheduler.core.records import seconds
from services.scheduler.core.settings import SchedulerSettings

S = types_pb2


def retry_delay_s(failures: int, settings: SchedulerSettings) -> float:
    """How long the next start waits after `failures` failures in a row."""
    if failures <= 0:
        return 0.0
    if failures >= settings.degraded_after:
        return settings.backoff_max_s
    # min() before the power would be clearer but overflows for absurd counts.
    return min(settings.backoff_initial_s * 2.0 ** min(failures - 1, 64), settings.backoff_max_s)


def record_failure(status: types_pb2.FunctionStatus, error: str, now: float,
                   settings: SchedulerSettings) -> None:
    status.consecutive_failures += 1
    status.last_error = error
    status.next_retry_at.CopyFrom(
        now_timestamp(now + retry_delay_s(status.consecutive_failures, settings)))
    status.state = (S.FUNCTION_STATE_DEGRADED
                    if status.consecutive_failures >= settings.degraded_after
                    else S.FUNCTION_STATE_BACKING_OFF)


def may_start(status: types_pb2.FunctionStatus, now: float) -> bool:
    # Epsilon so that a tick landing exactly on the retry time counts as due.
    return not status.HasField("next_retry_at") or now + 1e-9 >= seconds(status.next_retry_at)


def last_failure_at(status: types_pb2.FunctionStatus, settings: SchedulerSettings) -> float | None:
    if status.consecutive_failures <= 0 or not status.HasField("next_retry_at"):
        return None
    return seconds(status.next_retry_at) - retry_delay_s(status.consecutive_failures, settings)


def healed(status: types_pb2.FunctionStatus, ready_since: list[float], now: float,
           settings: SchedulerSettings) -> bool:
    """Whether an instance ready since one of `ready_since` has now served for
    `healthy_after_s` with no failure of the function in between."""
    if status.consecutive_failures <= 0:
        return False
    failed_at = last_failure_at(status, settings) or float("-inf")
    return any(now - max(since, failed_at) >= settings.healthy_after_s - 1e-9
               for since in ready_since)


def record_healthy(status: types_pb2.FunctionStatus) -> None:
    status.consecutive_failures = 0
    status.last_error = ""
    status.ClearField("next_retry_at")
    status.state = S.FUNCTION_STATE_OK

"""Trace spans from inside a worker: its start-up, and for inference how long each
request waited in the queue and the batch it ran in.

`worker.startup` (process start to READY) continues the trace of the agent's
`StartInstance`, whose context the agent passes in `DILU_TRACEPARENT`.

A request's `Infer` server span (opened by the tracing interceptor) is the parent of two
spans recorded after its batch finished, with the times they measured:
`worker.queued` (arrival to batch start) and `worker.batch` (batch start to end, with the
batch's id and size, so the requests that shared a batch can be found in every trace).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract
from opentelemetry.trace import Status, StatusCode

from services.common.tracing import exporting

log = logging.getLogger(__name__)
_tracer = trace.get_tracer("dilu.worker")
_batch_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Arrival:
    """Where a request's trace continues, and when (Unix ns) it was queued."""

    context: otel_context.Context = field(default_factory=otel_context.get_current)
    queued_ns: int = 0


def next_batch_id() -> int:
    return next(_batch_ids)


def record_batch(arrivals: Iterable[Arrival], batch_id: int, size: int, started_ns: int,
                 ended_ns: int, error: BaseException | None = None) -> None:
    """The queued and batch spans of every request of one batch (about 30 µs a request,
    so only when spans are exported). Never raises: telemetry must not fail the requests
    it describes."""
    if not exporting():
        return
    try:
        for arrival in arrivals:
            queued = _tracer.start_span("worker.queued", context=arrival.context,
                                        start_time=arrival.queued_ns)
            queued.end(end_time=max(arrival.queued_ns, started_ns))
            batch = _tracer.start_span(
                "worker.batch", context=arrival.context, start_time=started_ns,
                attributes={"dilu.batch.id": batch_id, "dilu.batch.size": size})
            if error is not None:
                batch.record_exception(error)
                batch.set_status(Status(StatusCode.ERROR, str(error)))
            batch.end(end_time=ended_ns)
    except Exception:
        log.debug("could not record the spans of batch %d", batch_id, exc_info=True)


def record_startup(started_ns: int, traceparent: str) -> None:
    """The worker's start-up span, when the agent passed a trace to continue."""
    if not traceparent or not started_ns:
        return
    try:
        _tracer.start_span("worker.startup", context=extract({"traceparent": traceparent}),
                           start_time=started_ns).end()
    except Exception:
        log.debug("could not record the start-up span", exc_info=True)

"""OpenTelemetry setup and W3C trace-context propagation helpers.

Traces export over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (Jaeger accepts
OTLP on 4317), and as JSON lines to `DILU_TRACE_FILE` when that is set (handy without a
collector, and how the tests follow one trace across processes). Otherwise spans are
created but not exported, so the code paths are the same.
"""

from __future__ import annotations

import logging
import os
import socket
from importlib import metadata

from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)

log = logging.getLogger(__name__)
# Whether spans leave this process (OTLP or a trace file): optional spans skip work otherwise.
_exporting = False


def exporting() -> bool:
    """True once setup_tracing found somewhere to send spans."""
    return _exporting


def service_resource(service_name: str, **attributes: str) -> Resource:
    """Who emits the spans: the service, its release, the host and process, plus
    `attributes` (e.g. `dilu.node.id`). `OTEL_RESOURCE_ATTRIBUTES` adds more."""
    try:
        version = metadata.version("dilu")
    except metadata.PackageNotFoundError:
        version = "unknown"
    host = socket.gethostname()
    return Resource.create({
        "service.name": service_name, "service.namespace": "dilu", "service.version": version,
        "service.instance.id": f"{host}/{os.getpid()}", "host.name": host,
        "process.pid": os.getpid(), **attributes})


def setup_tracing(service_name: str, **attributes: str) -> TracerProvider:
    global _exporting
    provider = TracerProvider(resource=service_resource(service_name, **attributes))
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if endpoint:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            _exporting = True
            log.info("exporting traces over OTLP to %s", endpoint)
        except Exception:  # telemetry never stops a service from starting
            log.exception("could not set up the OTLP exporter; traces are not exported")
    trace_file = os.environ.get("DILU_TRACE_FILE")
    if trace_file:
        out = open(trace_file, "a", buffering=1)  # noqa: SIM115 - lives as long as the process
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(
            out=out, formatter=lambda span: span.to_json(indent=None) + "\n")))
        _exporting = True
    trace.set_tracer_provider(provider)
    return provider


def trace_headers() -> dict[str, str]:
    """The current trace context as W3C headers (for NATS headers or gRPC metadata)."""
    carrier: dict[str, str] = {}
    try:
        inject(carrier)
    except Exception:
        log.debug("trace context injection failed", exc_info=True)
    return carrier


def trace_metadata() -> tuple[tuple[str, str], ...]:
    """The current trace context as gRPC call metadata."""
    return tuple(trace_headers().items())

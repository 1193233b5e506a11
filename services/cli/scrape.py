"""Reading a service's Prometheus endpoint, as `curl` would: used by `dilu demo` to check
that the node agent's request counters agree with the load it offered."""

from __future__ import annotations

import ssl
import urllib.request
from collections import defaultdict

from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from services.common.security.tls import TlsFiles, client_context


def scrape(url: str, timeout_s: float = 5.0, tls: TlsFiles | None = None) -> list[Sample]:
    """Every sample a `/metrics` endpoint serves now (`tls`: over HTTPS, presenting that
    client certificate, as secure mode asks)."""
    context: ssl.SSLContext | None = None
    if tls is not None:
        url = url.replace("http://", "https://", 1)
        context = client_context(tls)
        context.check_hostname = False  # dialled by address; the CA is what is checked
    with urllib.request.urlopen(url, timeout=timeout_s, context=context) as answer:
        text = answer.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


class CounterIncrease:
    """How much a per-instance counter grew, per function, across instances that come and
    go — what `sum by (function) (increase(...))` gives in Prometheus. A series present at
    the first scrape counts from its value then; one that appears later (a new instance)
    counts from 0; one that disappears (an instance scaled in) keeps what it was last seen
    at, so only what it served after the last scrape is missed."""

    def __init__(self, name: str, label: str = "function") -> None:
        self.name = name
        self.label = label
        self._first: dict[tuple[tuple[str, str], ...], float] = {}
        self._last: dict[tuple[tuple[str, str], ...], float] = {}
        self._scrapes = 0

    def observe(self, samples: list[Sample]) -> None:
        for sample in samples:
            if sample.name != self.name:
                continue
            series = tuple(sorted(sample.labels.items()))
            self._first.setdefault(series, sample.value if self._scrapes == 0 else 0.0)
            self._last[series] = sample.value
        self._scrapes += 1

    def by_label(self) -> dict[str, float]:
        totals: dict[str, float] = defaultdict(float)
        for series, last in self._last.items():
            totals[dict(series).get(self.label, "")] += last - self._first[series]
        return dict(totals)


def rate_table(offered: dict[str, int], before: dict[str, float], after: dict[str, float],
               duration_s: float) -> tuple[str, dict[str, float]]:
    """Each function's request rate over the run: offered by the client against counted by
    the exporter (`dilu_instance_requests_total`). Returns the table and the ratios."""
    lines = [f"  {'FUNCTION':<12}{'OFFERED REQ/S':>15}{'METRICS REQ/S':>15}{'RATIO':>8}"]
    ratios = {}
    for function, sent in offered.items():
        offered_rps = sent / duration_s
        counted_rps = (after.get(function, 0.0) - before.get(function, 0.0)) / duration_s
        ratios[function] = counted_rps / offered_rps if offered_rps else float("nan")
        lines.append(f"  {function:<12}{offered_rps:>15.2f}{counted_rps:>15.2f}"
                     f"{ratios[function]:>8.3f}")
    return "\n".join(lines), ratios

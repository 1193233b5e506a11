"""QoS window reports and GPU telemetry built from two readings of stats pages."""

from __future__ import annotations

from dataclasses import replace

import pytest

from services.node_agent.pages import HIST_BUCKETS, HIST_RATIO, Stats, histogram_bucket
from services.node_agent.reporting import MIB, InstanceInfo, UsageSample, gpu_telemetry, qos_report

WIDTH = HIST_RATIO - 1  # relative width of one histogram bucket (~9 %)

INFERENCE = InstanceInfo(instance_id="fn-a-1", function="fn-a", slo_ms=100.0, training=False)
TRAINING = InstanceInfo(instance_id="train-1", function="train", slo_ms=0.0, training=True)


def stats(**changes: object) -> Stats:
    empty = Stats(busy_ns=0, launches=0, throttled_ns=0, memory_used_bytes=0, memory_peak_bytes=0,
                  requests=0, violations=0, iterations=0, batches=0, queue_length=0, pid=42,
                  histogram=(0,) * HIST_BUCKETS)
    return replace(empty, **changes)  # type: ignore[arg-type]


def histogram(latencies: dict[float, int]) -> tuple[int, ...]:
    counts = [0] * HIST_BUCKETS
    for latency, count in latencies.items():
        counts[histogram_bucket(latency)] += count
    return tuple(counts)


def add(first: tuple[int, ...], second: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(a + b for a, b in zip(first, second, strict=True))


def test_report_counts_requests_rate_and_violations_of_the_window_only() -> None:
    before = stats(requests=1_000, violations=70, histogram=histogram({5.0: 1_000}), queue_length=9)
    after = stats(requests=1_300, violations=85, histogram=histogram({5.0: 1_300}), queue_length=4)
    report = qos_report(INFERENCE, "node-1", before, after, window_s=2.0, now_s=1_700_000_000.5)
    assert report.function == "fn-a"
    assert report.instance_id == "fn-a-1"
    assert report.node == "node-1"
    assert report.window_s == 2.0
    assert report.requests == 300
    assert report.rps == pytest.approx(150.0)
    assert report.violations == 15
    assert report.queue_length == 4  # the gauge now, not a difference
    assert report.slo_ms == 100.0
    assert report.window_end.ToNanoseconds() == 1_700_000_000_500_000_000
    assert report.iterations_per_s == 0.0


def test_percentiles_come_from_the_window_histogram_only() -> None:
    # Long ago: a thousand slow requests. In this window: a hundred fast ones.
    before = stats(requests=1_000, histogram=histogram({2_000.0: 1_000}))
    window = histogram({1.0: 50, 3.0: 45, 10.0: 5})
    after = stats(requests=1_100, histogram=add(before.histogram, window))
    report = qos_report(INFERENCE, "node-1", before, after, window_s=1.0, now_s=0.0)
    assert report.p50_ms == pytest.approx(1.0, rel=WIDTH)
    assert report.p95_ms == pytest.approx(3.0, rel=WIDTH)
    assert report.p99_ms == pytest.approx(10.0, rel=WIDTH)


def test_an_idle_window_reports_zero_percentiles_and_rate() -> None:
    before = stats(requests=500, histogram=histogram({40.0: 500}))
    report = qos_report(INFERENCE, "node-1", before, before, window_s=1.0, now_s=0.0)
    assert report.requests == 0
    assert report.rps == 0.0
    assert (report.p50_ms, report.p95_ms, report.p99_ms) == (0.0, 0.0, 0.0)


def test_a_zero_length_window_reports_no_rate() -> None:
    after = stats(requests=10, iterations=10, histogram=histogram({1.0: 10}))
    assert qos_report(INFERENCE, "n", stats(), after, window_s=0.0, now_s=0.0).rps == 0.0
    assert qos_report(TRAINING, "n", stats(), after, window_s=0.0, now_s=0.0).iterations_per_s == 0.0


def test_training_reports_iterations_per_second() -> None:
    before = stats(iterations=100)
    after = stats(iterations=160)
    report = qos_report(TRAINING, "node-1", before, after, window_s=4.0, now_s=0.0)
    assert report.iterations_per_s == pytest.approx(15.0)
    assert report.requests == 0


def test_inference_does_not_report_iterations() -> None:
    report = qos_report(INFERENCE, "node-1", stats(iterations=1), stats(iterations=99), window_s=1.0,
                        now_s=0.0)
    assert report.iterations_per_s == 0.0


def _usage(info: InstanceInfo, share: float, busy_ns: int, memory_bytes: int,
           busy_before_ns: int = 0) -> UsageSample:
    return UsageSample(info=info, effective_share=share, before=stats(busy_ns=busy_before_ns),
                       after=stats(busy_ns=busy_before_ns + busy_ns, memory_used_bytes=memory_bytes))


def test_simulated_utilization_is_busy_time_over_the_interval() -> None:
    usages = [_usage(INFERENCE, 0.4, busy_ns=150_000_000, memory_bytes=0, busy_before_ns=9 * 10**12),
              _usage(TRAINING, 0.6, busy_ns=100_000_000, memory_bytes=0)]
    message = gpu_telemetry("node-1", "GPU-sim-0", 40_960, usages, interval_s=0.5, now_s=12.25,
                            measured_utilization=None, measured_memory_mib=None)
    assert message.utilization == pytest.approx(0.5)
    assert message.node == "node-1"
    assert message.gpu_uuid == "GPU-sim-0"
    assert message.interval_s == 0.5
    assert message.memory_total_mib == 40_960
    assert message.at.ToNanoseconds() == 12_250_000_000


def test_simulated_utilization_is_capped_at_one() -> None:
    usages = [_usage(INFERENCE, 1.0, busy_ns=900_000_000, memory_bytes=0),
              _usage(TRAINING, 1.0, busy_ns=900_000_000, memory_bytes=0)]
    message = gpu_telemetry("n", "g", 1, usages, interval_s=1.0, now_s=0.0,
                            measured_utilization=None, measured_memory_mib=None)
    assert message.utilization == 1.0


def test_measured_values_replace_the_simulated_ones() -> None:
    usages = [_usage(INFERENCE, 0.5, busy_ns=100_000_000, memory_bytes=3 * 1024 * MIB)]
    message = gpu_telemetry("n", "g", 81_920, usages, interval_s=1.0, now_s=0.0,
                            measured_utilization=0.83, measured_memory_mib=5_000)
    assert message.utilization == pytest.approx(0.83)
    assert message.memory_used_mib == 5_000
    # The per-instance entries still come from the stats pages.
    assert message.instances[0].busy_ns == 100_000_000
    assert message.instances[0].memory_used_mib == 3 * 1024


def test_memory_in_use_is_the_sum_over_instances_in_whole_mib() -> None:
    usages = [_usage(INFERENCE, 0.5, busy_ns=0, memory_bytes=3 * 1024 * MIB + 5),
              _usage(TRAINING, 0.5, busy_ns=0, memory_bytes=512 * MIB)]
    message = gpu_telemetry("n", "g", 40_960, usages, interval_s=1.0, now_s=0.0,
                            measured_utilization=None, measured_memory_mib=None)
    assert message.memory_used_mib == 3 * 1024 + 512


def test_one_usage_entry_per_instance() -> None:
    usages = [_usage(INFERENCE, 0.25, busy_ns=70_000_000, memory_bytes=100 * MIB),
              _usage(TRAINING, 0.75, busy_ns=300_000_000, memory_bytes=2_000 * MIB)]
    message = gpu_telemetry("n", "g", 40_960, usages, interval_s=1.0, now_s=0.0,
                            measured_utilization=None, measured_memory_mib=None)
    entries = [(e.instance_id, e.function, e.effective_share, e.busy_ns, e.memory_used_mib)
               for e in message.instances]
    assert entries == [("fn-a-1", "fn-a", 0.25, 70_000_000, 100),
                       ("train-1", "train", 0.75, 300_000_000, 2_000)]


def test_a_counter_that_went_backwards_counts_as_idle() -> None:
    # A restarted worker starts its page again from zero.
    usage = UsageSample(info=INFERENCE, effective_share=0.5, before=stats(busy_ns=10**12),
                        after=stats(busy_ns=5_000))
    message = gpu_telemetry("n", "g", 1, [usage], interval_s=1.0, now_s=0.0,
                            measured_utilization=None, measured_memory_mib=None)
    assert message.instances[0].busy_ns == 0
    assert message.utilization == 0.0


def test_no_instances_and_no_interval_mean_an_idle_gpu() -> None:
    message = gpu_telemetry("n", "g", 40_960, [], interval_s=0.0, now_s=0.0,
                            measured_utilization=None, measured_memory_mib=None)
    assert message.utilization == 0.0
    assert message.memory_used_mib == 0
    assert len(message.instances) == 0

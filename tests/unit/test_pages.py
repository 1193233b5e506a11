"""The control and stats pages: round trips through real files, the byte layout of the ABI,
the seqlock, and the latency histogram."""

from __future__ import annotations

import math
import mmap
import os
import struct
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.node_agent.pages import (
    CONTROL_MAGIC,
    CONTROL_VERSION,
    DEFAULT_PERIOD_US,
    FLAG_PAUSED,
    HIST_BASE_MS,
    HIST_BUCKETS,
    HIST_RATIO,
    PAGE_SIZE,
    STATS_MAGIC,
    STATS_VERSION,
    Control,
    ControlPageReader,
    ControlPageWriter,
    PageError,
    StatsReader,
    StatsWriter,
    bucket_upper_ms,
    control_for,
    create_stats_page,
    histogram_bucket,
    percentile_ms,
)

LAST_EDGE_MS = bucket_upper_ms(HIST_BUCKETS - 1)


def _control(**changes: object) -> Control:
    base = Control(generation=0, paused=False, share=0.25, period_ns=10_000_000, burst_ns=2_500_000,
                   inflight_cap_ns=10_000_000, memory_limit_bytes=3 << 30, request=0.2, limit=0.6)
    return replace(base, **changes)  # type: ignore[arg-type]


def _u32(raw: bytes, offset: int) -> int:
    return int(struct.unpack_from("<I", raw, offset)[0])


def _u64(raw: bytes, offset: int) -> int:
    return int(struct.unpack_from("<Q", raw, offset)[0])


@pytest.fixture
def control_path(tmp_path: Path) -> Path:
    return tmp_path / "instance.ctl"


@pytest.fixture
def stats_path(tmp_path: Path) -> Path:
    path = tmp_path / "instance.stats"
    create_stats_page(path)
    return path


# --- control page ------------------------------------------------------------------------


def test_control_round_trip_through_a_real_file(control_path: Path) -> None:
    written = _control()
    writer = ControlPageWriter(control_path, written)
    reader = ControlPageReader(control_path)
    try:
        assert control_path.stat().st_size == PAGE_SIZE
        read = reader.read()
        assert read == replace(written, generation=1)
    finally:
        reader.close()
        writer.close()


def test_reader_sees_each_later_write(control_path: Path) -> None:
    writer = ControlPageWriter(control_path, _control())
    reader = ControlPageReader(control_path)
    try:
        update = _control(share=0.75, burst_ns=7_500_000, memory_limit_bytes=0, request=0.5, limit=1.0)
        writer.write(update)
        assert reader.read() == replace(update, generation=2)
    finally:
        reader.close()
        writer.close()


def test_generation_increments_by_one_per_write(control_path: Path) -> None:
    writer = ControlPageWriter(control_path, _control())
    reader = ControlPageReader(control_path)
    try:
        assert reader.generation() == 1  # the initial write
        for expected in range(2, 7):
            # The generation in the given snapshot is ignored.
            assert writer.write(_control(generation=1000)) == expected
            assert reader.generation() == expected
            assert reader.read().generation == expected
    finally:
        reader.close()
        writer.close()


def test_generation_wraps_at_32_bits(control_path: Path) -> None:
    writer = ControlPageWriter(control_path, _control())
    reader = ControlPageReader(control_path)
    try:
        writer._generation = 0xFFFFFFFF
        assert writer.write(_control()) == 0
        assert reader.read().generation == 0
    finally:
        reader.close()
        writer.close()


def test_paused_flag_round_trips_and_sets_bit_zero(control_path: Path) -> None:
    writer = ControlPageWriter(control_path, _control(paused=True))
    reader = ControlPageReader(control_path)
    try:
        assert reader.read().paused is True
        assert _u32(control_path.read_bytes(), 20) == FLAG_PAUSED
        writer.write(_control(paused=False))
        assert reader.read().paused is False
        assert _u32(control_path.read_bytes(), 20) == 0
    finally:
        reader.close()
        writer.close()


@pytest.mark.parametrize(("fraction", "ppm"), [
    (0.0, 0), (1.0, 1_000_000), (0.25, 250_000), (0.1234567, 123_457), (0.1234564, 123_456),
    (1e-7, 0), (6e-7, 1), (1.5, 1_000_000), (-0.2, 0)])
def test_fractions_are_rounded_to_ppm_and_clamped_to_one_gpu(control_path: Path, fraction: float,
                                                             ppm: int) -> None:
    writer = ControlPageWriter(control_path, _control(share=fraction, request=fraction, limit=fraction))
    reader = ControlPageReader(control_path)
    try:
        raw = control_path.read_bytes()
        assert (_u32(raw, 24), _u32(raw, 56), _u32(raw, 60)) == (ppm, ppm, ppm)
        read = reader.read()
        assert read.share == read.request == read.limit == ppm / 1_000_000
    finally:
        reader.close()
        writer.close()


def test_period_is_stored_in_whole_microseconds(control_path: Path) -> None:
    writer = ControlPageWriter(control_path, _control(period_ns=2_500_999))
    reader = ControlPageReader(control_path)
    try:
        assert _u32(control_path.read_bytes(), 28) == 2_500
        assert reader.read().period_ns == 2_500_000
    finally:
        reader.close()
        writer.close()


def test_byte_layout_matches_the_abi_table(control_path: Path) -> None:
    first = _control(paused=True, share=0.3, period_ns=5_000_000, burst_ns=(1 << 40) + 3,
                     inflight_cap_ns=(1 << 41) + 5, memory_limit_bytes=(1 << 42) + 7, request=0.125,
                     limit=0.875)
    writer = ControlPageWriter(control_path, first)
    try:
        raw = control_path.read_bytes()
        assert len(raw) == PAGE_SIZE
        assert _u32(raw, 0) == CONTROL_MAGIC == 0x44494C55
        assert raw[0:4] == b"ULID"  # little-endian "DILU"
        assert _u32(raw, 4) == CONTROL_VERSION == 1
        assert _u64(raw, 8) == 2  # even: one complete write
        assert _u32(raw, 16) == 1
        assert _u32(raw, 20) == FLAG_PAUSED
        assert _u32(raw, 24) == 300_000
        assert _u32(raw, 28) == 5_000
        assert _u64(raw, 32) == (1 << 40) + 3
        assert _u64(raw, 40) == (1 << 41) + 5
        assert _u64(raw, 48) == (1 << 42) + 7
        assert _u32(raw, 56) == 125_000
        assert _u32(raw, 60) == 875_000
        assert raw[64:] == bytes(PAGE_SIZE - 64)

        writer.write(replace(first, paused=False, share=1.0, memory_limit_bytes=0))
        raw = control_path.read_bytes()
        assert _u32(raw, 0) == CONTROL_MAGIC
        assert _u32(raw, 4) == CONTROL_VERSION
        assert _u64(raw, 8) == 4  # still even after the second write
        assert _u32(raw, 16) == 2
        assert _u32(raw, 20) == 0
        assert _u32(raw, 24) == 1_000_000
        assert _u64(raw, 48) == 0
    finally:
        writer.close()


def test_control_for_defaults_to_one_period_of_burst_and_half_of_in_flight(
        control_path: Path) -> None:
    control = control_for(share=0.4, request=0.3, limit=0.9, memory_limit_bytes=1 << 30)
    assert control.period_ns == DEFAULT_PERIOD_US * 1000
    assert control.burst_ns == 4_000_000
    assert control.inflight_cap_ns == control.period_ns // 2
    assert control_for(0.0, 0.0, 0.0, 0).burst_ns == 1  # never a zero burst
    writer = ControlPageWriter(control_path, control)
    reader = ControlPageReader(control_path)
    try:
        assert reader.read() == replace(control, generation=1)
    finally:
        reader.close()
        writer.close()


def test_reader_waits_while_the_seqlock_is_odd(control_path: Path) -> None:
    writer = ControlPageWriter(control_path, _control(share=0.25))
    reader = ControlPageReader(control_path)
    fd = os.open(control_path, os.O_RDWR)
    other = mmap.mmap(fd, PAGE_SIZE, access=mmap.ACCESS_WRITE)
    os.close(fd)
    released_at: list[float] = []
    try:
        seq = _u64(bytes(other[:16]), 8)
        struct.pack_into("<Q", other, 8, seq + 1)  # a writer is mid-update
        struct.pack_into("<I", other, 24, 123)  # half-written body

        def finish_the_update() -> None:
            time.sleep(0.15)
            struct.pack_into("<I", other, 24, 600_000)
            released_at.append(time.monotonic())
            struct.pack_into("<Q", other, 8, seq + 2)

        thread = threading.Thread(target=finish_the_update)
        thread.start()
        control = reader.read()
        returned_at = time.monotonic()
        thread.join()
        assert released_at and returned_at >= released_at[0]
        assert control.share == 0.6  # the completed value, never the half-written one
    finally:
        other.close()
        reader.close()
        writer.close()


def test_a_value_the_page_cannot_hold_leaves_it_consistent_and_writable(control_path: Path) -> None:
    # Issue 11: a SetQuota of 2**62 MiB became a memory limit beyond the page's u64; the
    # write raised halfway with the seqlock left odd, and every later write raised too.
    writer = ControlPageWriter(control_path, _control(share=0.25))
    reader = ControlPageReader(control_path)
    try:
        with pytest.raises(PageError):
            writer.write(_control(memory_limit_bytes=(2**62) * 2**20))
        seq = _u64(control_path.read_bytes(), 8)
        assert seq % 2 == 0
        assert reader.read() == replace(_control(share=0.25), generation=1)
        writer.write(_control(share=0.5))
        assert reader.read().share == 0.5 and reader.read().generation == 2
    finally:
        reader.close()
        writer.close()


def test_reader_refuses_a_file_of_the_wrong_size(control_path: Path) -> None:
    ControlPageWriter(control_path, _control()).close()
    with control_path.open("ab") as file:
        file.write(b"\0")
    with pytest.raises(PageError):
        ControlPageReader(control_path)
    control_path.write_bytes(control_path.read_bytes()[:100])
    with pytest.raises(PageError):
        ControlPageReader(control_path)


def test_reader_refuses_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PageError):
        ControlPageReader(tmp_path / "absent.ctl")


@pytest.mark.parametrize(("offset", "value"), [(0, 0x12345678), (4, 2)], ids=["magic", "version"])
def test_reader_refuses_a_wrong_magic_or_version(control_path: Path, offset: int, value: int) -> None:
    ControlPageWriter(control_path, _control()).close()
    raw = bytearray(control_path.read_bytes())
    struct.pack_into("<I", raw, offset, value)
    control_path.write_bytes(bytes(raw))
    with pytest.raises(PageError):
        ControlPageReader(control_path)


def test_stats_page_is_not_a_control_page(stats_path: Path) -> None:
    with pytest.raises(PageError):
        ControlPageReader(stats_path)


# --- stats page --------------------------------------------------------------------------


def test_new_stats_page_has_header_and_zero_counters(stats_path: Path) -> None:
    raw = stats_path.read_bytes()
    assert len(raw) == PAGE_SIZE
    assert _u32(raw, 0) == STATS_MAGIC == 0x444C5354
    assert _u32(raw, 4) == STATS_VERSION == 1
    assert _u32(raw, 128) == HIST_BUCKETS == 128
    reader = StatsReader(stats_path)
    try:
        stats = reader.read()
        assert stats.busy_ns == stats.requests == stats.violations == stats.queue_length == 0
        assert stats.histogram == (0,) * HIST_BUCKETS
    finally:
        reader.close()


def test_stats_writer_counters_reach_the_reader(stats_path: Path) -> None:
    writer = StatsWriter(stats_path)
    reader = StatsReader(stats_path)
    try:
        writer.add("busy_ns", 1_000)
        writer.add("busy_ns", 2_500)
        writer.add("launches", 7)
        writer.add("throttled_ns", 40)
        writer.add("throttled_ns", 2)
        writer.set("memory_used_bytes", 5 << 30)
        writer.set("memory_peak_bytes", 6 << 30)
        writer.add("iterations", 11)
        writer.add("batches", 3)
        writer.set_queue_length(9)
        stats = reader.read()
        assert stats.busy_ns == 3_500
        assert stats.launches == 7
        assert stats.throttled_ns == 42 == reader.throttled_ns()
        assert stats.memory_used_bytes == 5 << 30
        assert stats.memory_peak_bytes == 6 << 30
        assert stats.iterations == 11
        assert stats.batches == 3
        assert stats.queue_length == 9
        assert stats.pid == os.getpid()
        assert writer.read() == stats
    finally:
        reader.close()
        writer.close()


def test_stats_byte_layout_matches_the_module_table(stats_path: Path) -> None:
    writer = StatsWriter(stats_path)
    try:
        for index, field in enumerate(["busy_ns", "launches", "throttled_ns", "memory_used_bytes",
                                       "memory_peak_bytes", "requests", "violations", "iterations",
                                       "batches"]):
            writer.set(field, 1000 + index)
        writer.set_queue_length(77)
        writer.record_latency(HIST_BASE_MS / 2, slo_ms=0)  # bucket 0, requests + 1
        raw = stats_path.read_bytes()
        assert [_u64(raw, offset) for offset in range(8, 80, 8)] == [
            1000, 1001, 1002, 1003, 1004, 1005 + 1, 1006, 1007, 1008]
        assert _u32(raw, 80) == 77
        assert _u32(raw, 84) == os.getpid()
        assert _u64(raw, 256) == 1
    finally:
        writer.close()


def test_queue_length_is_clamped_to_u32(stats_path: Path) -> None:
    writer = StatsWriter(stats_path)
    try:
        writer.set_queue_length(-5)
        assert writer.read().queue_length == 0
        writer.set_queue_length(1 << 40)
        assert writer.read().queue_length == 0xFFFFFFFF
    finally:
        writer.close()


def test_violations_count_only_latencies_above_the_slo(stats_path: Path) -> None:
    writer = StatsWriter(stats_path)
    try:
        for latency in [5.0, 49.9, 50.0, 50.1, 200.0]:
            writer.record_latency(latency, slo_ms=50.0)
        writer.record_latency(10_000.0, slo_ms=0.0)  # no SLO: never a violation
        stats = writer.read()
        assert stats.requests == 6
        assert stats.violations == 2
        assert sum(stats.histogram) == 6
    finally:
        writer.close()


def test_recorded_latencies_land_in_their_buckets(stats_path: Path) -> None:
    writer = StatsWriter(stats_path)
    try:
        latencies = [0.05, 1.0, 1.0, 12.3, 99_999.0]
        for latency in latencies:
            writer.record_latency(latency, slo_ms=100.0)
        histogram = writer.read().histogram
        expected = [0] * HIST_BUCKETS
        for latency in latencies:
            expected[histogram_bucket(latency)] += 1
        assert list(histogram) == expected
        assert histogram[0] == 1
        assert histogram[HIST_BUCKETS - 1] == 1  # the last bucket takes everything slower
    finally:
        writer.close()


def test_stats_reader_and_writer_refuse_a_page_without_the_magic(tmp_path: Path) -> None:
    path = tmp_path / "plain.stats"
    path.write_bytes(bytes(PAGE_SIZE))
    with pytest.raises(PageError):
        StatsReader(path)
    with pytest.raises(PageError):
        StatsWriter(path)
    path.write_bytes(bytes(10))
    with pytest.raises(PageError):
        StatsReader(path)


# --- histogram ---------------------------------------------------------------------------


def test_bucket_edges_grow_by_the_ratio_from_the_base() -> None:
    assert bucket_upper_ms(0) == HIST_BASE_MS
    assert math.isclose(HIST_RATIO, 2 ** (1 / 8))
    assert HIST_RATIO < 1.0906  # each bucket within ~9 % of its neighbour
    for index in range(1, HIST_BUCKETS):
        assert math.isclose(bucket_upper_ms(index) / bucket_upper_ms(index - 1), HIST_RATIO)


def test_latencies_up_to_the_base_fall_in_bucket_zero() -> None:
    assert histogram_bucket(0.0) == 0
    assert histogram_bucket(-1.0) == 0
    assert histogram_bucket(HIST_BASE_MS) == 0
    assert histogram_bucket(1e9) == HIST_BUCKETS - 1


def _fits(latency: float, bucket: int, slack: float = 0.0) -> bool:
    upper_ok = bucket_upper_ms(bucket) * (1 + slack) >= latency
    lower_ok = bucket == 0 or bucket_upper_ms(bucket - 1) < latency * (1 + slack)
    return upper_ok and lower_ok


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=HIST_BASE_MS, max_value=LAST_EDGE_MS, allow_nan=False))
def test_a_latency_falls_in_a_bucket_whose_edges_enclose_it(latency: float) -> None:
    # Up to floating-point rounding at the edges themselves (see the exact-edge test below).
    assert _fits(latency, histogram_bucket(latency), slack=1e-12)


def test_a_latency_exactly_on_an_edge_falls_in_the_bucket_of_that_edge() -> None:
    misplaced = [index for index in range(HIST_BUCKETS)
                 if not _fits(bucket_upper_ms(index), histogram_bucket(bucket_upper_ms(index)))]
    assert misplaced == []


def test_percentile_of_an_empty_histogram_is_zero() -> None:
    assert percentile_ms([0] * HIST_BUCKETS, 50) == 0.0
    assert percentile_ms((), 99) == 0.0


def test_percentile_of_a_single_bucket_stays_inside_that_bucket() -> None:
    histogram = [0] * HIST_BUCKETS
    histogram[40] = 10
    for percentile in (1, 50, 99, 100):
        value = percentile_ms(histogram, percentile)
        assert bucket_upper_ms(39) <= value <= bucket_upper_ms(40)
    assert percentile_ms(histogram, 100) == pytest.approx(bucket_upper_ms(40))


def test_percentile_inside_bucket_zero_interpolates_from_zero() -> None:
    histogram = [0] * HIST_BUCKETS
    histogram[0] = 4
    assert percentile_ms(histogram, 50) == pytest.approx(HIST_BASE_MS / 2)
    assert percentile_ms(histogram, 100) == pytest.approx(HIST_BASE_MS)


def _true_percentile(latencies: list[float], percentile: float) -> float:
    """Nearest rank: the smallest value with at least `percentile` % of values at or below it."""
    ordered = sorted(latencies)
    rank = max(1, math.ceil(percentile / 100 * len(ordered) - 1e-9))
    return ordered[rank - 1]


def _histogram_of(latencies: list[float]) -> list[int]:
    histogram = [0] * HIST_BUCKETS
    for latency in latencies:
        histogram[histogram_bucket(latency)] += 1
    return histogram


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(min_value=HIST_BASE_MS, max_value=LAST_EDGE_MS, exclude_min=True,
                          allow_nan=False), min_size=1, max_size=300),
       st.sampled_from([50.0, 90.0, 95.0, 99.0, 99.9, 100.0]))
def test_percentile_is_within_one_bucket_width_of_the_true_percentile(latencies: list[float],
                                                                     percentile: float) -> None:
    # Above bucket 0, which spans 0..HIST_BASE_MS and is interpolated linearly instead.
    estimate = percentile_ms(_histogram_of(latencies), percentile)
    true = _true_percentile(latencies, percentile)
    width = HIST_RATIO * (1 + 1e-9)
    assert true / width <= estimate <= true * width


def test_percentile_of_a_known_distribution() -> None:
    # 1..1000 ms uniformly: p50 = 500 ms, p99 = 990 ms.
    histogram = _histogram_of([float(ms) for ms in range(1, 1001)])
    assert percentile_ms(histogram, 50) == pytest.approx(500, rel=HIST_RATIO - 1)
    assert percentile_ms(histogram, 99) == pytest.approx(990, rel=HIST_RATIO - 1)
    # Percentiles never decrease.
    values = [percentile_ms(histogram, p) for p in range(1, 101)]
    assert values == sorted(values)

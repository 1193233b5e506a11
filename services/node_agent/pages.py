"""The two shared-memory pages of an instance, written once here for every Python user.

**Control page** (agent writes, worker reads; the ABI of ../shared/DESIGN.md, shared with the
CUDA shim). 4096 bytes, little-endian, naturally aligned:

| offset | type | field |
|---|---|---|
| 0 | u32 | magic 0x44494C55 ("DILU") |
| 4 | u32 | ABI version = 1 |
| 8 | u64 | seqlock counter (odd while the agent writes) |
| 16 | u32 | generation, +1 per update |
| 20 | u32 | flags (bit 0: paused) |
| 24 | u32 | effective share, parts per million of one GPU |
| 28 | u32 | token period, µs |
| 32 | u64 | burst, ns of GPU time |
| 40 | u64 | in-flight cap, ns of GPU time |
| 48 | u64 | memory limit, bytes (0 = none) |
| 56 | u32 | request, ppm (informational) |
| 60 | u32 | limit, ppm (informational) |

**Stats page** (worker and its shim write, agent reads). 4096 bytes, little-endian. Every
counter is monotonic and written by exactly one party, so the reader needs no lock: an
aligned 8-byte store is never torn on the platforms Dilu runs on.

Python has no memory fences: the seqlock below relies on x86-64's store ordering when the
writer is this module. The CUDA shim (C) reads with acquire loads, which is what makes the
protocol portable.

| offset | type | field | written by |
|---|---|---|---|
| 0 | u32 | magic 0x444C5354 ("DLST") | agent (on create) |
| 4 | u32 | layout version = 1 | agent |
| 8 | u64 | GPU busy ns (GPU time the instance's work occupied) | gate / shim |
| 16 | u64 | launches admitted (kernels, or sim/CPU steps) | gate / shim |
| 24 | u64 | ns spent waiting for credit (throttled) | gate / shim |
| 32 | u64 | GPU memory in use, bytes | worker / shim |
| 40 | u64 | GPU memory peak, bytes | worker / shim |
| 48 | u64 | requests served | worker |
| 56 | u64 | requests slower than the SLO | worker |
| 64 | u64 | training iterations | worker |
| 72 | u64 | batches run | worker |
| 80 | u32 | queue length now (gauge) | worker |
| 84 | u32 | worker pid | worker |
| 88 | u64 | requests accepted into the queue | worker |
| 128 | u32 | histogram bucket count (= 128) | agent |
| 256 | u64[128] | latency histogram of served requests | worker |
| 1280 | 16 × 48 bytes | per-GPU memory slots (below) | shim |

Under the CUDA shim (services/node_agent/shim/), the shim writes busy ns, launches,
throttled ns and the memory counters with atomic adds, since every thread and process of the
instance shares the page; the worker's Python gate then leaves them alone. The memory quota
is per GPU, so the shim also keeps one slot per GPU, claimed by the first process of the
instance that allocates on it: u32 state (0 free, 1 being claimed, 2 ready), u32 reserved,
the GPU's 16-byte UUID, u64 bytes in use, u64 peak bytes. Allocations reserve against the
slot before the driver is asked, so the instance's processes never pass the limit together.

Histogram bucket `i` counts latencies at most its edge `HIST_BASE_MS * HIST_RATIO**i` and
above the previous edge; the last bucket also takes everything slower. The ratio 2^(1/8)
keeps each bucket within 9 % of its neighbours, from 0.1 ms to 6.0 s.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from services.node_agent.token_bucket import default_burst_ns

PAGE_SIZE = 4096
MIB = 1 << 20  # memory figures travel in bytes on the pages and in MiB elsewhere

CONTROL_MAGIC = 0x44494C55
CONTROL_VERSION = 1
PPM = 1_000_000
FLAG_PAUSED = 1
DEFAULT_PERIOD_US = 10_000

# Fields after the seqlock counter, in offset order 16..63.
_CONTROL_BODY = struct.Struct("<IIIIQQQII")
_HEADER = struct.Struct("<IIQ")  # magic, version, seq

_MAX_SPINS = 10_000  # ~1 s of 100 µs naps after a brief busy wait

STATS_MAGIC = 0x444C5354
STATS_VERSION = 1
HIST_BUCKETS = 128
HIST_BASE_MS = 0.1
HIST_RATIO = 2 ** (1 / 8)
_HIST_OFFSET = 256
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


class PageError(RuntimeError):
    """A page file is missing, of the wrong size, or not a Dilu page."""


@dataclass(frozen=True, slots=True)
class Control:
    """One consistent snapshot of a control page."""

    generation: int
    paused: bool
    share: float  # effective share, fraction of one GPU
    period_ns: int
    burst_ns: int
    inflight_cap_ns: int
    memory_limit_bytes: int
    request: float
    limit: float


def control_for(share: float, request: float, limit: float, memory_limit_bytes: int,
                period_us: int = DEFAULT_PERIOD_US, paused: bool = False) -> Control:
    """A control snapshot with the default burst (one period at the share, the rule of
    `token_bucket.default_burst_ns`) and in-flight cap (half a period of GPU time). Work
    already queued on the GPU cannot be recalled, so the cap is what a cut must wait out:
    half a period keeps a lower share holding within one period, and is still far more
    queued work than a GPU needs to stay busy."""
    period_ns = period_us * 1000
    return Control(generation=0, paused=paused, share=share, period_ns=period_ns,
                   burst_ns=default_burst_ns(share, period_ns), inflight_cap_ns=period_ns // 2,
                   memory_limit_bytes=memory_limit_bytes, request=request, limit=limit)


def _ppm(fraction: float) -> int:
    if math.isnan(fraction):
        raise ValueError("a share is NaN")
    return max(0, min(PPM, round(min(max(fraction, 0.0), 1.0) * PPM)))


def _map(path: Path, writable: bool) -> mmap.mmap:
    flags = os.O_RDWR if writable else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError as error:
        raise PageError(f"cannot open page {path}: {error.strerror}") from error
    try:
        if os.fstat(fd).st_size != PAGE_SIZE:
            raise PageError(f"{path} is not a {PAGE_SIZE}-byte page")
        access = mmap.ACCESS_WRITE if writable else mmap.ACCESS_READ
        return mmap.mmap(fd, PAGE_SIZE, access=access)
    finally:
        os.close(fd)


def _create(path: Path) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.ftruncate(fd, PAGE_SIZE)
    finally:
        os.close(fd)


class ControlPageWriter:
    """The agent's side: creates the page and publishes updates under the seqlock."""

    def __init__(self, path: Path, initial: Control) -> None:
        _create(path)
        self.path = path
        self._page = _map(path, writable=True)
        _HEADER.pack_into(self._page, 0, CONTROL_MAGIC, CONTROL_VERSION, 0)
        self._generation = 0
        self.write(initial)

    def write(self, control: Control) -> int:
        """Publish `control` (its generation is ignored); returns the new generation.

        The body is encoded before the seqlock is touched: a value the page cannot hold
        raises `PageError` with the page unchanged and consistent, never half-written with
        the counter left odd (readers would then retry forever)."""
        generation = (self._generation + 1) & 0xFFFFFFFF
        try:
            body = _CONTROL_BODY.pack(
                generation, FLAG_PAUSED if control.paused else 0, _ppm(control.share),
                control.period_ns // 1000, control.burst_ns, control.inflight_cap_ns,
                control.memory_limit_bytes, _ppm(control.request), _ppm(control.limit))
        except (struct.error, ValueError, OverflowError) as error:
            raise PageError(f"{self.path}: control values out of the page's range: {error}") from error
        seq = _U64.unpack_from(self._page, 8)[0]
        _U64.pack_into(self._page, 8, seq + 1)  # odd: readers retry
        self._page[16:16 + _CONTROL_BODY.size] = body
        _U64.pack_into(self._page, 8, seq + 2)
        self._generation = generation
        return generation

    def close(self) -> None:
        self._page.close()


class ControlPageReader:
    """The worker's side: a read-only mapping and consistent snapshots."""

    def __init__(self, path: Path) -> None:
        self._page = _map(path, writable=False)
        magic, version, _ = _HEADER.unpack_from(self._page, 0)
        if magic != CONTROL_MAGIC or version != CONTROL_VERSION:
            raise PageError(f"{path}: not a version-{CONTROL_VERSION} Dilu control page")

    def generation(self) -> int:
        return int(_U32.unpack_from(self._page, 16)[0])

    def read(self) -> Control:
        spins = 0
        while True:
            before = _U64.unpack_from(self._page, 8)[0]
            if not before & 1:
                (generation, flags, share, period_us, burst, cap, memory, request,
                 limit) = _CONTROL_BODY.unpack_from(self._page, 16)
                if _U64.unpack_from(self._page, 8)[0] == before:
                    return Control(generation, bool(flags & FLAG_PAUSED), share / PPM,
                                   period_us * 1000, burst, cap, memory, request / PPM,
                                   limit / PPM)
            # A write takes microseconds; a page that stays odd belongs to a writer that died
            # mid-write, and spinning on it forever would hang the worker.
            spins += 1
            if spins > _MAX_SPINS:
                raise PageError("control page stuck mid-write (its writer died?)")
            if spins > 100:
                time.sleep(0.0001)

    def close(self) -> None:
        self._page.close()


GPU_SLOTS_OFFSET = _HIST_OFFSET + 8 * HIST_BUCKETS  # 1280, just after the histogram
GPU_SLOT_SIZE = 48
GPU_SLOTS = 16
_GPU_SLOT = struct.Struct("<II16sQQ")
_SLOT_READY = 2


@dataclass(frozen=True, slots=True)
class GpuMemory:
    """What the shim charged to one GPU of an instance."""

    uuid: str  # as NVML spells it: GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx
    used_bytes: int
    peak_bytes: int


def gpu_uuid_text(raw: bytes) -> str:
    """A GPU's 16 UUID bytes as NVML and nvidia-smi spell them."""
    h = raw.hex()
    return f"GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"


def read_gpu_memory(page: mmap.mmap) -> list[GpuMemory]:
    """The per-GPU memory slots the CUDA shim claimed (none for workers without it)."""
    slots = []
    for index in range(GPU_SLOTS):
        state, _, raw, used, peak = _GPU_SLOT.unpack_from(
            page, GPU_SLOTS_OFFSET + index * GPU_SLOT_SIZE)
        if state == _SLOT_READY:
            slots.append(GpuMemory(gpu_uuid_text(raw), used, peak))
    return slots


@dataclass(frozen=True, slots=True)
class Stats:
    """One reading of a stats page."""

    busy_ns: int
    launches: int
    throttled_ns: int
    memory_used_bytes: int
    memory_peak_bytes: int
    requests: int
    violations: int
    iterations: int
    batches: int
    queue_length: int
    pid: int
    histogram: tuple[int, ...]
    accepted: int = 0
    gpu_memory: tuple[GpuMemory, ...] = ()  # per GPU, written by the CUDA shim only

    def memory_on(self, gpu_uuid: str) -> int:
        """Bytes the instance holds on one GPU: the shim's figure for it when there is one,
        else the instance's total (workers without the shim hold one GPU's worth)."""
        for slot in self.gpu_memory:
            if slot.uuid == gpu_uuid:
                return slot.used_bytes
        return self.memory_used_bytes

    def most_on_one_gpu(self) -> int:
        """What a per-GPU memory limit must stay above."""
        return max((slot.used_bytes for slot in self.gpu_memory), default=self.memory_used_bytes)


_STATS_COUNTERS = struct.Struct("<QQQQQQQQQIIQ")
_HISTOGRAM = struct.Struct(f"<{HIST_BUCKETS}Q")


def create_stats_page(path: Path) -> None:
    _create(path)
    page = _map(path, writable=True)
    try:
        _U32.pack_into(page, 0, STATS_MAGIC)
        _U32.pack_into(page, 4, STATS_VERSION)
        _U32.pack_into(page, 128, HIST_BUCKETS)
    finally:
        page.close()


def read_stats(page: mmap.mmap) -> Stats:
    (busy, launches, throttled, memory_used, memory_peak, requests, violations, iterations,
     batches, queue_length, pid, accepted) = _STATS_COUNTERS.unpack_from(page, 8)
    return Stats(busy, launches, throttled, memory_used, memory_peak, requests, violations,
                 iterations, batches, queue_length, pid, _HISTOGRAM.unpack_from(page, _HIST_OFFSET),
                 accepted, tuple(read_gpu_memory(page)))


class StatsReader:
    """The agent's side of a stats page."""

    def __init__(self, path: Path) -> None:
        self._page = _map(path, writable=False)
        if _U32.unpack_from(self._page, 0)[0] != STATS_MAGIC:
            raise PageError(f"{path}: not a Dilu stats page")

    def read(self) -> Stats:
        return read_stats(self._page)

    def gpu_memory(self) -> list[GpuMemory]:
        """Per-GPU memory of a worker under the CUDA shim (empty otherwise)."""
        return read_gpu_memory(self._page)

    def throttled_ns(self) -> int:
        """The one counter the arbiter reads every period, without the histogram."""
        return int(_U64.unpack_from(self._page, 24)[0])

    def close(self) -> None:
        self._page.close()


def histogram_bucket(latency_ms: float) -> int:
    if latency_ms <= HIST_BASE_MS:
        return 0
    index = min(HIST_BUCKETS - 1, math.ceil(math.log(latency_ms / HIST_BASE_MS, HIST_RATIO)))
    # The logarithm rounds; settle exact edges against the edges themselves.
    while index > 0 and bucket_upper_ms(index - 1) >= latency_ms:
        index -= 1
    while index < HIST_BUCKETS - 1 and bucket_upper_ms(index) < latency_ms:
        index += 1
    return index


def bucket_upper_ms(index: int) -> float:
    return float(HIST_BASE_MS * HIST_RATIO**index)


class StatsWriter:
    """The worker's side: one writer per field, so plain stores suffice."""

    _OFFSETS: ClassVar[dict[str, int]] = {
        "busy_ns": 8, "launches": 16, "throttled_ns": 24, "memory_used_bytes": 32,
        "memory_peak_bytes": 40, "requests": 48, "violations": 56, "iterations": 64,
        "batches": 72, "accepted": 88}

    def __init__(self, path: Path) -> None:
        self._page = _map(path, writable=True)
        if _U32.unpack_from(self._page, 0)[0] != STATS_MAGIC:
            raise PageError(f"{path}: not a Dilu stats page")
        _U32.pack_into(self._page, 84, os.getpid())

    def add(self, field: str, amount: int) -> None:
        offset = self._OFFSETS[field]
        _U64.pack_into(self._page, offset, _U64.unpack_from(self._page, offset)[0] + amount)

    def set(self, field: str, value: int) -> None:
        _U64.pack_into(self._page, self._OFFSETS[field], value)

    def set_queue_length(self, length: int) -> None:
        _U32.pack_into(self._page, 80, max(0, min(length, 0xFFFFFFFF)))

    def record_latency(self, latency_ms: float, slo_ms: float) -> None:
        offset = _HIST_OFFSET + 8 * histogram_bucket(latency_ms)
        _U64.pack_into(self._page, offset, _U64.unpack_from(self._page, offset)[0] + 1)
        self.add("requests", 1)
        if slo_ms > 0 and latency_ms > slo_ms:
            self.add("violations", 1)

    def read(self) -> Stats:
        return read_stats(self._page)

    def close(self) -> None:
        self._page.close()


def percentile_ms(histogram: list[int] | tuple[int, ...], percentile: float) -> float:
    """The `percentile` (0-100] latency of a histogram, interpolated geometrically inside
    the bucket it falls in; 0.0 for an empty histogram."""
    total = sum(histogram)
    if total == 0:
        return 0.0
    rank = percentile / 100 * total
    seen = 0
    for index, count in enumerate(histogram):
        if count and seen + count >= rank:
            upper = bucket_upper_ms(index)
            lower = upper / HIST_RATIO if index else 0.0
            fraction = (rank - seen) / count
            if lower == 0.0:
                return upper * fraction
            return float(lower * (upper / lower) ** fraction)
        seen += count
    return bucket_upper_ms(len(histogram) - 1)

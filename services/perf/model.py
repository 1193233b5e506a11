"""Performance model of the ``sim`` runtime: latency of a model's batch on a share of an A100.

Built from the Dilu authors' A100-40GB profiles (see ``data/ORIGIN.md``): latency measured per
batch size (1..32) and SM share (10..100 %). The raw grid is cleaned to be monotone, then
interpolated; outside the grid it is extrapolated with simple, stated rules.
"""

from __future__ import annotations

import csv
import functools
import io
import math
from dataclasses import dataclass, field
from fractions import Fraction
from importlib import resources

__all__ = [
    "BATCHES",
    "SIM_MODELS",
    "SM_PERCENTS",
    "LatencyTable",
    "PerfModel",
    "load_model",
]

SIM_MODELS: dict[str, str] = {
    "resnet152": "bs_sm_resnet152",
    "bert-base": "bs_sm_bert_base",
    "roberta-large": "bs_sm_roberta_large",
    "gpt2-large": "bs_sm_gpt2_large",
    "llama2-7b": "bs_sm_llama2",
}
"""Model name -> stem of its profile CSV in ``services/perf/data/a100``."""

BATCHES: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
"""Measured batch sizes: the row index of a :data:`LatencyTable`."""

SM_PERCENTS: tuple[int, ...] = tuple(range(10, 101, 10))
"""Measured SM shares in percent: the column index of a :data:`LatencyTable`."""

LatencyTable = tuple[tuple[float, ...], ...]
"""Latency in seconds, ``table[i][j]`` for ``BATCHES[i]`` and ``SM_PERCENTS[j]``."""

# Shares above 1 by at most this much are taken as 1, so that sums of fractions that should
# make a whole GPU (0.3 + 0.7 ...) are not rejected for rounding.
_SHARE_EPSILON = 1e-9

# Grid shares as the exact value of the float nearest p/100 (Fraction(0.3), not 3/10), so a
# caller passing the float 0.3 lands exactly on the measured point.
_GRID_SHARES: tuple[Fraction, ...] = tuple(Fraction(p / 100) for p in SM_PERCENTS)
_MIN_SHARE = _GRID_SHARES[0]
_MAX_BATCH = BATCHES[-1]

# Published parameter counts; weights are assumed to be held in fp16 (2 bytes each).
_PARAMETERS: dict[str, int] = {
    "resnet152": 60_200_000,
    "bert-base": 110_000_000,
    "roberta-large": 355_000_000,
    "gpt2-large": 774_000_000,
    "llama2-7b": 6_740_000_000,
}

# Rough per-sample allowance for activations (and, for the decoders, the KV cache), in MiB.
# Estimates, not measurements: ResNet-152 at 224x224 keeps a few MiB of feature maps live plus
# cuDNN workspace; the encoders at 512 tokens hold one layer's attention scores and hidden
# states (~10 MiB base, ~20 MiB large); GPT-2 large caches 180 KiB per token
# (36 layers x K,V x 1280 x 2 B) and Llama-2-7B 512 KiB per token (32 x 2 x 4096 x 2 B),
# both sized for ~1k tokens.
_ACTIVATION_MIB_PER_SAMPLE: dict[str, int] = {
    "resnet152": 32,
    "bert-base": 16,
    "roberta-large": 32,
    "gpt2-large": 192,
    "llama2-7b": 512,
}


@dataclass(frozen=True, slots=True)
class PerfModel:
    """Latency, throughput and memory of one model on a fraction of an A100.

    ``raw_latency`` holds the profile as measured; ``latency`` the cleaned, monotone table that
    every method interpolates. Prefer :func:`load_model`, which caches instances.
    """

    model: str
    raw_latency: LatencyTable = field(init=False, repr=False, compare=False)
    latency: LatencyTable = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.model not in SIM_MODELS:
            raise ValueError(f"unknown model {self.model!r}; known models: {', '.join(SIM_MODELS)}")
        raw, cleaned = _tables(SIM_MODELS[self.model])
        object.__setattr__(self, "raw_latency", raw)
        object.__setattr__(self, "latency", cleaned)

    def latency_s(self, batch: int, share: float) -> float:
        """Wall time in seconds of one batch of ``batch`` requests on ``share`` (0, 1] of an A100.

        Linear in share between measured shares and linear in log2(batch) between measured
        batch sizes. Below 10 % the GPU is taken to be time-sliced (latency grows as 1/share);
        above batch 32 the work is taken to scale linearly with batch.
        """
        _check_batch(batch)
        return _latency(SIM_MODELS[self.model], batch, _check_share(share))

    def full_gpu_cost_s(self, batch: int) -> float:
        """GPU time in seconds that one batch occupies a whole GPU: ``latency_s(batch, 1.0)``."""
        return self.latency_s(batch, 1.0)

    def throughput_rps(self, batch: int, share: float) -> float:
        """Requests per second when batches of ``batch`` run back to back: batch / latency."""
        return batch / self.latency_s(batch, share)

    def training_step_s(self, batch: int, share: float) -> float:
        """Estimated time in seconds of one training step (forward + backward) on ``batch``."""
        # Rule of thumb, not measured: the backward pass costs about twice the forward pass
        # (gradients w.r.t. both activations and weights), so a step is ~3x a forward pass.
        return 3.0 * self.latency_s(batch, share)

    @property
    def weights_bytes(self) -> int:
        """The model's weights in fp16 (2 bytes per published parameter)."""
        return _PARAMETERS[self.model] * 2

    def memory_mib(self, batch: int) -> int:
        """Estimated GPU memory in MiB: fp16 weights plus a per-sample activation allowance.

        An estimate from published parameter counts, not a measurement; CUDA context and
        allocator overhead are not included.
        """
        _check_batch(batch)
        weights_mib = math.ceil(_PARAMETERS[self.model] * 2 / 2**20)
        return weights_mib + batch * _ACTIVATION_MIB_PER_SAMPLE[self.model]


@functools.cache
def load_model(model: str) -> PerfModel:
    """The (cached) :class:`PerfModel` of ``model``, one of :data:`SIM_MODELS`.

    Raises ``ValueError`` naming the known models if ``model`` is not one of them.
    """
    return PerfModel(model)


def _check_batch(batch: int) -> None:
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")


def _check_share(share: float) -> float:
    # Written as a negated range test so NaN is rejected too.
    if not 0.0 < share <= 1.0 + _SHARE_EPSILON:
        raise ValueError(f"share must be in (0, 1], got {share}")
    return min(float(share), 1.0)


@functools.cache
def _tables(stem: str) -> tuple[LatencyTable, LatencyTable]:
    raw = _read_profile(stem)
    return raw, _make_monotone(raw)


# Exact rational arithmetic, rounded to float once at the end: correct rounding is monotone,
# so the result is monotone in batch and share to the last bit, which float bilinear
# interpolation does not guarantee. It costs tens of microseconds, hence the cache: a
# simulation asks for few distinct (batch, share) pairs, many times over.
@functools.lru_cache(maxsize=1 << 16)
def _latency(stem: str, batch: int, share: float) -> float:
    return float(_exact_latency(_tables(stem)[1], batch, Fraction(share)))


def _read_profile(stem: str) -> LatencyTable:
    text = resources.files("services.perf").joinpath("data", "a100", f"{stem}.csv").read_text()
    latency: dict[tuple[int, int], float] = {}
    for row in csv.reader(io.StringIO(text)):
        if not row:
            continue
        batch, percent = round(float(row[0])), round(float(row[1]))
        if (batch, percent) in latency:
            raise ValueError(f"{stem}.csv: duplicate point batch={batch} sm={percent}")
        latency[batch, percent] = float(row[2])
    missing = [(b, p) for b in BATCHES for p in SM_PERCENTS if (b, p) not in latency]
    if missing or len(latency) != len(BATCHES) * len(SM_PERCENTS):
        raise ValueError(f"{stem}.csv: not the full batch x SM grid (missing {missing})")
    return tuple(tuple(latency[b, p] for p in SM_PERCENTS) for b in BATCHES)


def _make_monotone(raw: LatencyTable) -> LatencyTable:
    """Clean measurement noise so latency never rises with share nor falls with batch.

    First a running minimum along share for each batch: more SMs can never hurt, since the
    work could simply run on fewer of them, so a slower reading at a larger share is noise.
    Then a running maximum along batch for each share: a batch is never faster than a smaller
    one, since the smaller batch is part of the same work. The second pass keeps the first's
    property (a maximum of non-increasing sequences is non-increasing).
    """
    rows = []
    for measured in raw:
        row, best = [], math.inf
        for value in measured:
            best = min(best, value)
            row.append(best)
        rows.append(row)
    for j in range(len(SM_PERCENTS)):
        worst = 0.0
        for row in rows:
            worst = max(worst, row[j])
            row[j] = worst
    return tuple(tuple(row) for row in rows)


def _exact_latency(table: LatencyTable, batch: int, share: Fraction) -> Fraction:
    scale = Fraction(1)
    if share < _MIN_SHARE:
        # Below the smallest measured share: time slicing of the 10 % configuration.
        scale, share = _MIN_SHARE / share, _MIN_SHARE
    if batch > _MAX_BATCH:
        # Beyond the largest measured batch the GPU is saturated: work grows with batch.
        scale, batch = scale * Fraction(batch, _MAX_BATCH), _MAX_BATCH
    # Measured batches are the powers of two 1..32, so log2(batch) is the fractional row index.
    position = Fraction(math.log2(batch))
    i = min(math.floor(position), len(BATCHES) - 2)
    low, high = _along_share(table[i], share), _along_share(table[i + 1], share)
    return (low + (position - i) * (high - low)) * scale


def _along_share(row: tuple[float, ...], share: Fraction) -> Fraction:
    j = len(_GRID_SHARES) - 2
    while j > 0 and share < _GRID_SHARES[j]:
        j -= 1
    s0, s1 = _GRID_SHARES[j], _GRID_SHARES[j + 1]
    v0, v1 = Fraction(row[j]), Fraction(row[j + 1])
    return v0 + (share - s0) / (s1 - s0) * (v1 - v0)

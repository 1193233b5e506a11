"""The sim runtime's performance model: cleaning, interpolation, extrapolation, validation."""

from __future__ import annotations

import csv
import io
import itertools
import math
from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.perf import BATCHES, SIM_MODELS, SM_PERCENTS, PerfModel, load_model

MODELS = sorted(SIM_MODELS)

# Cleaning only irons out noise: a measured point moves by at most 15 %. One point in the data
# as released is a spike rather than noise: gpt2-large, batch 2 at 90 % SMs reads 0.0418 s
# where 80 % and 100 % read 0.0306 s; the running minimum brings it down 27 %. It is listed
# here with its own bound so any other large move still fails the test.
TOLERANCE = 0.15
KNOWN_OUTLIERS = {("gpt2-large", 2, 90): 0.28}

shares = st.floats(min_value=1e-4, max_value=1.0, allow_nan=False)
batches = st.integers(min_value=1, max_value=100)


def _grid() -> list[tuple[int, int, int, int]]:
    return [(i, b, j, p) for i, b in enumerate(BATCHES) for j, p in enumerate(SM_PERCENTS)]


@pytest.mark.parametrize("name", MODELS)
def test_cleaning_only_irons_out_noise(name: str) -> None:
    model = load_model(name)
    for i, batch, j, percent in _grid():
        raw, cleaned = model.raw_latency[i][j], model.latency[i][j]
        bound = KNOWN_OUTLIERS.get((name, batch, percent), TOLERANCE)
        assert abs(cleaned - raw) / raw <= bound, (name, batch, percent, raw, cleaned)


def test_known_outliers_are_real() -> None:
    # Keeps KNOWN_OUTLIERS honest: each entry does move more than the general tolerance.
    for (name, batch, percent), _ in KNOWN_OUTLIERS.items():
        model = load_model(name)
        i, j = BATCHES.index(batch), SM_PERCENTS.index(percent)
        raw, cleaned = model.raw_latency[i][j], model.latency[i][j]
        assert abs(cleaned - raw) / raw > TOLERANCE


@pytest.mark.parametrize("name", MODELS)
def test_cleaned_table_is_monotone_and_raw_is_kept(name: str) -> None:
    model = load_model(name)
    for row in model.latency:
        assert all(a >= b for a, b in itertools.pairwise(row))
    for j in range(len(SM_PERCENTS)):
        column = [row[j] for row in model.latency]
        assert all(a <= b for a, b in itertools.pairwise(column))
    assert len(model.raw_latency) == len(BATCHES)
    assert all(len(row) == len(SM_PERCENTS) for row in model.raw_latency)


def test_raw_data_is_noisy_so_cleaning_matters() -> None:
    assert any(load_model(name).raw_latency != load_model(name).latency for name in MODELS)


@pytest.mark.parametrize("name", MODELS)
def test_interpolation_hits_cleaned_points_exactly(name: str) -> None:
    model = load_model(name)
    for i, batch, j, percent in _grid():
        assert model.latency_s(batch, percent / 100) == model.latency[i][j]


def test_interpolation_between_points() -> None:
    model = load_model("bert-base")
    table = model.latency
    # Halfway in share between 10 % and 20 %.
    assert model.latency_s(4, 0.15) == pytest.approx((table[2][0] + table[2][1]) / 2, rel=1e-12)
    # Batch 12 sits at log2(12) - 3 = 0.585 of the way from batch 8 to batch 16.
    u = math.log2(12) - 3
    expected = table[3][9] + u * (table[4][9] - table[3][9])
    assert model.latency_s(12, 1.0) == pytest.approx(expected, rel=1e-12)
    for batch in (3, 5, 12):
        assert model.latency_s(batch, 0.55) > 0


def test_extrapolation_rules() -> None:
    model = load_model("resnet152")
    # Below 10 %: time slicing of the 10 % configuration.
    assert model.latency_s(4, 0.05) == pytest.approx(2 * model.latency_s(4, 0.1), rel=1e-12)
    assert model.latency_s(4, 0.025) == pytest.approx(4 * model.latency_s(4, 0.1), rel=1e-12)
    # Above batch 32: linear in batch.
    assert model.latency_s(64, 0.5) == pytest.approx(2 * model.latency_s(32, 0.5), rel=1e-12)
    assert model.latency_s(48, 0.05) == pytest.approx(
        1.5 * 2 * model.latency_s(32, 0.1), rel=1e-12)


@pytest.mark.parametrize("name", MODELS)
@given(batch=batches, a=shares, b=shares)
def test_latency_non_increasing_in_share(name: str, batch: int, a: float, b: float) -> None:
    model = load_model(name)
    low, high = sorted((a, b))
    assert model.latency_s(batch, low) >= model.latency_s(batch, high)
    # Down to the last bit: the next float up never gives a longer latency.
    if low < 1.0:
        assert model.latency_s(batch, low) >= model.latency_s(batch, math.nextafter(low, 1.0))


@pytest.mark.parametrize("name", MODELS)
@given(a=batches, b=batches, share=shares)
def test_latency_non_decreasing_in_batch(name: str, a: int, b: int, share: float) -> None:
    model = load_model(name)
    small, large = sorted((a, b))
    assert model.latency_s(small, share) <= model.latency_s(large, share)


@pytest.mark.parametrize("name", MODELS)
@given(batch=batches, share=shares)
def test_derived_figures(name: str, batch: int, share: float) -> None:
    model = load_model(name)
    latency = model.latency_s(batch, share)
    assert latency > 0
    assert model.throughput_rps(batch, share) == batch / latency
    assert model.training_step_s(batch, share) == 3 * latency
    assert model.full_gpu_cost_s(batch) == model.latency_s(batch, 1.0)


def test_resnet152_throughput_matches_measurement() -> None:
    text = resources.files("services.perf").joinpath("data", "a100", "bs_sm_resnet152.csv").read_text()
    measured = [float(row[3]) for row in csv.reader(io.StringIO(text))
                if row and float(row[0]) == 32 and float(row[1]) == 100]
    assert len(measured) == 1
    assert load_model("resnet152").throughput_rps(32, 1.0) == pytest.approx(measured[0], rel=0.01)


def test_memory_estimate() -> None:
    llama = load_model("llama2-7b")
    # fp16 weights of 6.74 B parameters are ~12.6 GiB; more samples need more memory.
    assert 12_800 < llama.memory_mib(1) < 14_000
    assert llama.memory_mib(8) > llama.memory_mib(1)
    sizes = [load_model(name).memory_mib(1) for name in
             ("resnet152", "bert-base", "roberta-large", "gpt2-large", "llama2-7b")]
    assert sizes == sorted(sizes)


@pytest.mark.parametrize("batch", [0, -1])
def test_bad_batch_raises(batch: int) -> None:
    model = load_model("resnet152")
    for call in (lambda: model.latency_s(batch, 0.5), lambda: model.full_gpu_cost_s(batch),
                 lambda: model.throughput_rps(batch, 0.5), lambda: model.training_step_s(batch, 0.5),
                 lambda: model.memory_mib(batch)):
        with pytest.raises(ValueError, match="batch"):
            call()


@pytest.mark.parametrize("share", [0.0, -0.1, 1.01, math.nan, math.inf])
def test_bad_share_raises(share: float) -> None:
    model = load_model("resnet152")
    for call in (lambda: model.latency_s(4, share), lambda: model.throughput_rps(4, share),
                 lambda: model.training_step_s(4, share)):
        with pytest.raises(ValueError, match="share"):
            call()


def test_share_a_hair_above_one_is_one() -> None:
    model = load_model("resnet152")
    assert model.latency_s(4, 0.3 + 0.7 + 1e-12) == model.latency_s(4, 1.0)


def test_unknown_model_raises_naming_known_ones() -> None:
    with pytest.raises(ValueError, match="resnet152"):
        load_model("vgg16")
    with pytest.raises(ValueError, match="llama2-7b"):
        PerfModel("gpt-5")


def test_load_model_is_cached() -> None:
    assert load_model("bert-base") is load_model("bert-base")
    assert load_model("bert-base") == PerfModel("bert-base")

"""The per-GPU arbiter: guarantees, lending order, water-filling, and training's back-off."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.node_agent.arbiter import ArbiterSettings, Claim, GpuArbiter

TOLERANCE = 1e-9


def inference(instance_id: str, request: float, limit: float, hungry: bool = False) -> Claim:
    return Claim(instance_id=instance_id, inference=True, request=request, limit=limit, hungry=hungry)


def training(instance_id: str, request: float, limit: float, hungry: bool = False) -> Claim:
    return Claim(instance_id=instance_id, inference=False, request=request, limit=limit, hungry=hungry)


@st.composite
def claim_lists(draw: st.DrawFn, max_request_total: float = 1.0) -> list[Claim]:
    """1-6 claims with request ≤ limit ≤ 1, requests scaled down to sum to at most the total."""
    count = draw(st.integers(min_value=1, max_value=6))
    claims = []
    for index in range(count):
        request = draw(st.floats(min_value=0.0, max_value=1.0))
        limit = draw(st.floats(min_value=request, max_value=1.0))
        claims.append(Claim(instance_id=f"i{index}", inference=draw(st.booleans()), request=request,
                            limit=limit, hungry=draw(st.booleans())))
    total = sum(c.request for c in claims)
    if total > max_request_total:
        scale = max_request_total / total
        claims = [Claim(c.instance_id, c.inference, c.request * scale, c.limit, c.hungry)
                  for c in claims]
    return claims


@st.composite
def overcommitted_claim_lists(draw: st.DrawFn) -> list[Claim]:
    """2-6 claims whose requests sum to more than one GPU."""
    count = draw(st.integers(min_value=2, max_value=6))
    claims = []
    for index in range(count):
        request = draw(st.floats(min_value=1.0 / count + 1e-6, max_value=1.0))
        limit = draw(st.floats(min_value=request, max_value=1.0))
        claims.append(Claim(instance_id=f"i{index}", inference=draw(st.booleans()), request=request,
                            limit=limit, hungry=draw(st.booleans())))
    return claims


@settings(max_examples=300, deadline=None)
@given(st.lists(claim_lists(), min_size=1, max_size=5))
def test_shares_respect_requests_limits_and_the_gpu(periods: list[list[Claim]]) -> None:
    arbiter = GpuArbiter()
    for claims in periods:  # history (the training factor) must not break the invariants
        shares = arbiter.shares(claims)
        assert set(shares) == {c.instance_id for c in claims}
        for claim in claims:
            assert claim.request - TOLERANCE <= shares[claim.instance_id] <= claim.limit + TOLERANCE
        assert sum(shares.values()) <= 1 + TOLERANCE


@settings(max_examples=200, deadline=None)
@given(overcommitted_claim_lists())
def test_overcommitted_requests_are_scaled_to_fill_the_gpu_exactly(claims: list[Claim]) -> None:
    arbiter = GpuArbiter()
    shares = arbiter.shares(claims)
    total = sum(c.request for c in claims)
    assert sum(shares.values()) == pytest.approx(1.0, abs=TOLERANCE)
    for claim in claims:
        assert shares[claim.instance_id] == pytest.approx(claim.request / total, abs=TOLERANCE)


@settings(max_examples=200, deadline=None)
@given(claim_lists())
def test_non_hungry_inference_stays_at_its_request(claims: list[Claim]) -> None:
    shares = GpuArbiter().shares(claims)
    for claim in claims:
        if claim.inference and not claim.hungry:
            assert shares[claim.instance_id] == claim.request


@settings(max_examples=200, deadline=None)
@given(claim_lists())
def test_training_borrows_only_what_hungry_inference_left(claims: list[Claim]) -> None:
    shares = GpuArbiter().shares(claims)
    borrowed_by_training = sum(shares[c.instance_id] - c.request for c in claims if not c.inference)
    if borrowed_by_training > TOLERANCE:
        # Then every hungry inference instance got all it may have.
        for claim in claims:
            if claim.inference and claim.hungry:
                assert shares[claim.instance_id] == pytest.approx(claim.limit, abs=TOLERANCE)


def test_no_claims_give_no_shares() -> None:
    assert GpuArbiter().shares([]) == {}


def test_requests_alone_are_guaranteed_when_nobody_borrows() -> None:
    shares = GpuArbiter().shares([inference("a", 0.3, 0.3), inference("b", 0.2, 0.9)])
    assert shares == {"a": 0.3, "b": 0.2}


def test_hungry_inference_is_served_before_training() -> None:
    arbiter = GpuArbiter()
    shares = arbiter.shares([training("t", 0.2, 1.0), inference("i", 0.3, 0.8, hungry=True)])
    assert shares["i"] == pytest.approx(0.8)
    assert shares["t"] == pytest.approx(0.2)


def test_training_gets_what_hungry_inference_cannot_use() -> None:
    arbiter = GpuArbiter()
    shares = arbiter.shares([training("t", 0.2, 1.0), inference("i", 0.3, 0.5, hungry=True)])
    assert shares["i"] == pytest.approx(0.5)
    # 0.3 left; training's borrowing is cut to half its headroom (0.4) this period.
    assert shares["t"] == pytest.approx(0.5)
    assert sum(shares.values()) <= 1 + TOLERANCE


def test_training_borrows_up_to_its_limit_when_inference_is_quiet() -> None:
    shares = GpuArbiter().shares([training("t", 0.2, 0.7), inference("i", 0.3, 0.5)])
    assert shares == {"t": pytest.approx(0.7), "i": 0.3}


def _pressure_claims(hungry: bool) -> list[Claim]:
    # Hungry, the inference instance takes all 0.7 of spare and still sits below its limit
    # (0.8 < 0.9): the GPU is full, which is pressure. Quiet, the spare is training's.
    return [inference("i", 0.1, 0.9, hungry=hungry), training("t", 0.2, 0.9)]


def test_training_borrowing_is_cut_by_half_in_the_period_inference_is_hungry() -> None:
    arbiter = GpuArbiter()
    assert arbiter.shares(_pressure_claims(hungry=False))["t"] == pytest.approx(0.9)
    pressed = arbiter.shares(_pressure_claims(hungry=True))
    assert pressed == {"i": pytest.approx(0.8), "t": pytest.approx(0.2)}
    assert arbiter.training_factor == pytest.approx(0.5)
    arbiter.shares(_pressure_claims(hungry=True))
    assert arbiter.training_factor == pytest.approx(0.25)
    assert arbiter.shares(_pressure_claims(hungry=False))["t"] == pytest.approx(0.2 + 0.27 * 0.7)


def test_inference_hungry_at_its_own_limit_is_no_pressure() -> None:
    arbiter = GpuArbiter()
    shares = arbiter.shares([inference("i", 0.1, 0.3, hungry=True), training("t", 0.2, 0.9)])
    assert shares == {"i": pytest.approx(0.3), "t": pytest.approx(0.7)}
    assert arbiter.training_factor == 1.0


def test_training_borrowing_is_restored_gradually_after_pressure() -> None:
    arbiter = GpuArbiter()
    arbiter.shares(_pressure_claims(hungry=True))
    arbiter.shares(_pressure_claims(hungry=True))  # factor 0.25
    expected = 0.25
    for _ in range(36):
        expected += 0.02
        share = arbiter.shares(_pressure_claims(hungry=False))["t"]
        assert arbiter.training_factor == pytest.approx(expected)
        assert share == pytest.approx(0.2 + expected * 0.7)
    # 0.25 + 38 × 0.02 > 1: capped at full borrowing.
    arbiter.shares(_pressure_claims(hungry=False))
    arbiter.shares(_pressure_claims(hungry=False))
    assert arbiter.training_factor == 1.0
    assert arbiter.shares(_pressure_claims(hungry=False))["t"] == pytest.approx(0.9)


def test_hungry_training_alone_is_no_pressure() -> None:
    arbiter = GpuArbiter()
    shares = arbiter.shares([training("t", 0.2, 0.9, hungry=True), inference("i", 0.1, 0.5)])
    assert arbiter.training_factor == 1.0
    assert shares["t"] == pytest.approx(0.9)


def test_overcommitted_period_leaves_the_training_factor_alone() -> None:
    arbiter = GpuArbiter()
    arbiter.shares([inference("i", 0.7, 0.9, hungry=True), training("t", 0.6, 0.9)])
    assert arbiter.training_factor == 1.0


def test_custom_settings_change_the_cut_and_the_restore() -> None:
    arbiter = GpuArbiter(ArbiterSettings(training_decrease=0.1, training_increase=0.3))
    arbiter.shares(_pressure_claims(hungry=True))
    assert arbiter.training_factor == pytest.approx(0.1)
    arbiter.shares(_pressure_claims(hungry=False))
    assert arbiter.training_factor == pytest.approx(0.4)


def test_water_filling_splits_spare_evenly_between_equal_hungry_inference() -> None:
    shares = GpuArbiter().shares([inference("a", 0.2, 0.6, hungry=True),
                                  inference("b", 0.2, 0.6, hungry=True)])
    assert shares["a"] == pytest.approx(0.5)
    assert shares["b"] == pytest.approx(0.5)


def test_water_filling_gives_leftovers_to_the_one_with_more_headroom() -> None:
    shares = GpuArbiter().shares([inference("small", 0.2, 0.3, hungry=True),
                                  inference("large", 0.2, 0.9, hungry=True)])
    assert shares["small"] == pytest.approx(0.3)  # its whole headroom (0.1)
    assert shares["large"] == pytest.approx(0.7)  # its even part (0.3) plus small's leftover (0.2)
    assert sum(shares.values()) == pytest.approx(1.0)


def test_water_filling_three_ways_with_one_capped() -> None:
    shares = GpuArbiter().shares([inference("a", 0.1, 0.15, hungry=True),
                                  inference("b", 0.1, 1.0, hungry=True),
                                  inference("c", 0.1, 1.0, hungry=True)])
    assert shares["a"] == pytest.approx(0.15)
    assert shares["b"] == pytest.approx(0.425)
    assert shares["c"] == pytest.approx(0.425)


@settings(max_examples=200, deadline=None)
@given(claim_lists())
def test_water_filling_is_max_min_fair_among_hungry_inference(claims: list[Claim]) -> None:
    shares = GpuArbiter().shares(claims)
    gains = {c.instance_id: shares[c.instance_id] - c.request
             for c in claims if c.inference and c.hungry}
    capped = {c.instance_id for c in claims if c.inference and c.hungry
              and shares[c.instance_id] >= c.limit - 1e-7}
    uncapped_gains = [gain for instance_id, gain in gains.items() if instance_id not in capped]
    if uncapped_gains:
        # Those below their limit all gained the same, and at least as much as any capped one.
        assert max(uncapped_gains) - min(uncapped_gains) <= 1e-7
        for instance_id in capped:
            assert gains[instance_id] <= min(uncapped_gains) + 1e-7
        # The GPU is then fully handed out.
        assert sum(shares.values()) == pytest.approx(1.0, abs=1e-7)

from __future__ import annotations

import math

import pytest
from dilu.v1 import types_pb2

from services.common.errors import InvalidArgument
from services.scheduler.validation import validate_spec

S = types_pb2


def good(**changes: object) -> types_pb2.FunctionSpec:
    spec = types_pb2.FunctionSpec(
        name="resnet", kind=S.FUNCTION_KIND_INFERENCE, runtime=S.RUNTIME_SIM, model="resnet152",
        slo=S.Slo(latency_ms=100), resources=S.Resources(sm_request=0.3, sm_limit=0.5,
                                                          memory_mib=4096))
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


def field_of(spec: types_pb2.FunctionSpec) -> str:
    with pytest.raises(InvalidArgument) as refused:
        validate_spec(spec)
    return refused.value.field


def test_a_good_spec_gets_its_defaults_filled_in():
    spec = validate_spec(good())
    assert spec.slo.percentile == 99
    assert spec.resources.gpus_per_instance == 1
    assert (spec.replicas.min, spec.replicas.max) == (1, 1)


def test_limit_defaults_to_request_and_the_input_is_not_mutated():
    raw = good()
    raw.resources.sm_limit = 0
    spec = validate_spec(raw)
    assert spec.resources.sm_limit == pytest.approx(0.3)
    assert raw.resources.sm_limit == 0


@pytest.mark.parametrize("name", ["", "UPPER", "-lead", "trail-", "has_underscore", "9starts", "a" * 64])
def test_bad_names_are_refused(name: str):
    assert field_of(good(name=name)) == "function.name"


@pytest.mark.parametrize(("request_", "limit", "field"), [
    (0.0, 0.5, "function.resources.sm_request"),
    (-0.1, 0.5, "function.resources.sm_request"),
    (1.2, 1.2, "function.resources.sm_request"),
    (math.nan, 0.5, "function.resources.sm_request"),
    (0.3, 1.01, "function.resources.sm_limit"),
    (0.6, 0.5, "function.resources.sm_request"),
])
def test_shares_outside_zero_one_or_request_above_limit_are_refused(request_, limit, field):
    spec = good()
    spec.resources.sm_request, spec.resources.sm_limit = request_, limit
    assert field_of(spec) == field


def test_request_above_limit_says_both_values():
    spec = good()
    spec.resources.sm_request, spec.resources.sm_limit = 0.8, 0.5
    with pytest.raises(InvalidArgument, match=r"0\.8 > 0\.5"):
        validate_spec(spec)


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda s: s.resources.__setattr__("memory_mib", -5), "function.resources.memory_mib"),
    (lambda s: s.resources.__setattr__("memory_mib", 0), "function.resources.memory_mib"),
    (lambda s: s.resources.__setattr__("gpus_per_instance", 2), "function.resources.gpus_per_instance"),
    (lambda s: s.resources.__setattr__("gpus_per_instance", -1), "function.resources.gpus_per_instance"),
    (lambda s: setattr(s, "kind", S.FUNCTION_KIND_UNSPECIFIED), "function.kind"),
    (lambda s: setattr(s, "runtime", S.RUNTIME_UNSPECIFIED), "function.runtime"),
    (lambda s: setattr(s, "model", ""), "function.model"),
    (lambda s: setattr(s, "model", "alexnet"), "function.model"),
    (lambda s: s.slo.__setattr__("latency_ms", 0), "function.slo.latency_ms"),
    (lambda s: s.slo.__setattr__("latency_ms", -1), "function.slo.latency_ms"),
    (lambda s: s.slo.__setattr__("percentile", 101), "function.slo.percentile"),
    (lambda s: s.replicas.__setattr__("min", -1), "function.replicas.min"),
    (lambda s: (s.replicas.__setattr__("min", 3), s.replicas.__setattr__("max", 2)), "function.replicas.max"),
    (lambda s: setattr(s, "max_batch", -4), "function.max_batch"),
])
def test_every_other_bad_field_is_named(mutate, field):
    spec = good()
    mutate(spec)
    assert field_of(spec) == field


def test_training_may_omit_the_slo_and_span_gpus():
    spec = good(kind=S.FUNCTION_KIND_TRAINING)
    spec.slo.latency_ms = 0
    spec.resources.gpus_per_instance = 4
    assert validate_spec(spec).resources.gpus_per_instance == 4


def test_torch_runtime_accepts_the_models_it_builds_and_names_the_others():
    assert validate_spec(good(runtime=S.RUNTIME_TORCH, model="transformer")).model == "transformer"
    with pytest.raises(InvalidArgument) as refused:
        validate_spec(good(runtime=S.RUNTIME_TORCH, model="my-cnn"))
    assert refused.value.field == "function.model" and "resnet" in str(refused.value)


def test_an_explicit_zero_minimum_allows_scale_to_zero():
    spec = good()
    spec.replicas.min = 0
    validated = validate_spec(spec)
    assert validated.replicas.HasField("min") and validated.replicas.min == 0
    assert validated.replicas.max == 1

from __future__ import annotations

import math

import pytest
from dilu.v1 import types_pb2

from services.common.errors import InvalidArgument
from services.scheduler.validation import needs_profile, validate_spec

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
    assert (spec.replicas.min, spec.replicas.max) == (1, 4)  # an unset max lets it scale out


def test_limit_defaults_to_request_and_the_input_is_not_mutated():
    raw = good()
    raw.resources.ClearField("sm_limit")
    spec = validate_spec(raw)
    assert spec.resources.sm_limit == pytest.approx(0.3)
    assert not raw.resources.HasField("sm_limit")


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
    assert validated.replicas.max == 4


def test_an_unset_maximum_lets_inference_scale_out_but_not_training():
    from services.scheduler.validation import default_replicas_max

    assert default_replicas_max(types_pb2.FUNCTION_KIND_INFERENCE, 1) == 4
    assert default_replicas_max(types_pb2.FUNCTION_KIND_INFERENCE, 3) == 6
    assert default_replicas_max(types_pb2.FUNCTION_KIND_TRAINING, 2) == 2


# ---- ranges: every field has a finite range; what is outside is refused by name ---------

SUBNORMAL = 5e-324


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda s: s.resources.__setattr__("sm_request", SUBNORMAL), "function.resources.sm_request"),
    (lambda s: s.resources.__setattr__("sm_request", 0.005), "function.resources.sm_request"),
    (lambda s: s.resources.__setattr__("sm_request", math.inf), "function.resources.sm_request"),
    (lambda s: s.resources.__setattr__("sm_limit", 0.0), "function.resources.sm_limit"),
    (lambda s: s.resources.__setattr__("sm_limit", math.nan), "function.resources.sm_limit"),
    (lambda s: s.resources.__setattr__("memory_mib", 2**62), "function.resources.memory_mib"),
    (lambda s: s.resources.__setattr__("gpus_per_instance", 2**31 - 1),
     "function.resources.gpus_per_instance"),
    (lambda s: s.slo.__setattr__("latency_ms", SUBNORMAL), "function.slo.latency_ms"),
    (lambda s: s.slo.__setattr__("latency_ms", 1e300), "function.slo.latency_ms"),
    (lambda s: s.slo.__setattr__("latency_ms", math.inf), "function.slo.latency_ms"),
    (lambda s: s.slo.__setattr__("latency_ms", math.nan), "function.slo.latency_ms"),
    (lambda s: s.slo.__setattr__("percentile", SUBNORMAL), "function.slo.percentile"),
    (lambda s: s.slo.__setattr__("percentile", math.nan), "function.slo.percentile"),
    (lambda s: s.replicas.__setattr__("min", 2**31 - 1), "function.replicas.min"),
    (lambda s: s.replicas.__setattr__("max", 1001), "function.replicas.max"),
    (lambda s: setattr(s, "max_batch", 0), "function.max_batch"),
    (lambda s: setattr(s, "max_batch", 4097), "function.max_batch"),
    (lambda s: setattr(s, "kind", 99), "function.kind"),
    (lambda s: setattr(s, "runtime", -3), "function.runtime"),
    (lambda s: setattr(s, "model", "m" * 65), "function.model"),
    (lambda s: setattr(s, "weights_uri", "/" + "w" * 1024), "function.weights_uri"),
    (lambda s: s.labels.update({f"k{i}": "v" for i in range(33)}), "function.labels"),
    (lambda s: s.labels.update({"team": "x" * 257}), "function.labels.team"),
    (lambda s: s.labels.update({"bad key!": "x"}), "function.labels['bad key!']"),
    (lambda s: s.labels.update({"team": "a\nb"}), "function.labels.team"),
])
def test_values_outside_their_finite_range_are_refused_by_name(mutate, field):
    spec = good()
    mutate(spec)
    assert field_of(spec) == field


def test_a_long_name_never_gets_in_and_the_message_stays_short():
    with pytest.raises(InvalidArgument) as refused:
        validate_spec(good(name="a" * 100_000))
    assert refused.value.field == "function.name" and len(str(refused.value)) < 300


@pytest.mark.parametrize("field", ["sm_request", "memory_mib"])
def test_shares_and_memory_left_to_the_profile_are_accepted_and_wait_for_it(field):
    spec = good()
    spec.resources.ClearField(field)
    checked = validate_spec(spec)
    assert not checked.resources.HasField(field) and needs_profile(checked)
    assert not needs_profile(validate_spec(good()))


def test_unset_and_zero_differ_for_max_batch():
    assert not validate_spec(good()).HasField("max_batch")  # left to the profile
    assert validate_spec(good(max_batch=8)).max_batch == 8
    assert field_of(good(max_batch=0)) == "function.max_batch"


# ---- what Deploy can know up front (issue 11: crash loops of specs no worker can run) ----


def test_a_model_larger_than_its_memory_is_refused_at_deploy():
    spec = good()  # resnet152: 115 MiB of fp16 weights + 32 MiB per sample
    spec.resources.memory_mib = 64
    with pytest.raises(InvalidArgument) as refused:
        validate_spec(spec)
    assert refused.value.field == "function.resources.memory_mib"
    assert "147 MiB" in refused.value.problem and "batch 1" in refused.value.problem


def test_memory_mib_one_is_refused_at_deploy():
    spec = good()
    spec.resources.memory_mib = 1
    assert field_of(spec) == "function.resources.memory_mib"


def test_the_memory_check_uses_the_largest_allowed_batch():
    spec = good()
    spec.resources.memory_mib = 200  # batch 1 fits (147 MiB), batch 16 does not (627 MiB)
    assert validate_spec(spec).resources.memory_mib == 200
    spec.max_batch = 16
    with pytest.raises(InvalidArgument, match="627 MiB"):
        validate_spec(spec)


def test_training_needs_three_times_the_model_at_its_step_batch():
    spec = good(kind=S.FUNCTION_KIND_TRAINING)
    spec.model = "roberta-large"  # 678 MiB + 16 × 32 MiB = 1190 MiB, ×3 = 3570 MiB
    spec.resources.memory_mib = 3569
    with pytest.raises(InvalidArgument, match="3570 MiB"):
        validate_spec(spec)
    spec.resources.memory_mib = 3570
    validate_spec(spec)
    spec.runtime_options["batch"] = "1"  # (678 + 32) × 3 = 2130 MiB
    spec.resources.memory_mib = 2130
    validate_spec(spec)


def test_a_misspelt_torch_option_is_refused_at_deploy():
    spec = good(runtime=S.RUNTIME_TORCH, model="resnet")
    spec.runtime_options["widht"] = "8"
    with pytest.raises(InvalidArgument) as refused:
        validate_spec(spec)
    assert refused.value.field == "function.runtime_options.widht"
    assert "width" in refused.value.problem  # the known options are listed


@pytest.mark.parametrize(("options", "field"), [
    ({"image_size": "0"}, "function.runtime_options.image_size"),
    ({"image_size": "100000"}, "function.runtime_options.image_size"),
    ({"blocks": "1,1,1,1,1,1,1,1,1"}, "function.runtime_options.blocks"),
    ({"blocks": "1000"}, "function.runtime_options.blocks"),
    ({"threads": "1e3"}, "function.runtime_options.threads"),
    ({"batch": "-1"}, "function.runtime_options.batch"),
])
def test_torch_option_values_have_bounds(options, field):
    spec = good(runtime=S.RUNTIME_TORCH, model="resnet")
    spec.runtime_options.update(options)
    assert field_of(spec) == field


def test_a_torch_model_too_large_for_its_memory_is_refused_without_building_it():
    spec = good(runtime=S.RUNTIME_TORCH, model="transformer")
    # 1 000 000 × 4096 embedding alone: 15.3 GiB of float32 weights.
    spec.runtime_options.update({"vocab": "1000000", "d_model": "4096", "heads": "8"})
    spec.resources.memory_mib = 8192
    with pytest.raises(InvalidArgument) as refused:
        validate_spec(spec)
    assert refused.value.field == "function.resources.memory_mib"


def test_sim_options_follow_their_table():
    training = good(kind=S.FUNCTION_KIND_TRAINING)
    training.runtime_options["batch"] = "8"
    validate_spec(training)
    training.runtime_options["batch"] = "0"
    assert field_of(training) == "function.runtime_options.batch"
    inference = good()
    inference.runtime_options["batch"] = "8"  # inference sets max_batch instead
    assert field_of(inference) == "function.runtime_options.batch"
    inference = good()
    inference.runtime_options["host-ms"] = "3"
    assert field_of(inference) == "function.runtime_options['host-ms']"


def test_llm_inference_over_several_gpus_is_refused_until_split_instances_exist():
    spec = good(kind=S.FUNCTION_KIND_LLM_INFERENCE, model="llama2-7b")
    spec.resources.memory_mib = 20000
    spec.resources.gpus_per_instance = 2
    with pytest.raises(InvalidArgument) as refused:
        validate_spec(spec)
    assert refused.value.field == "function.resources.gpus_per_instance"
    assert "split instances" in refused.value.problem and "not exist yet" in refused.value.problem
    spec.resources.gpus_per_instance = 1
    validate_spec(spec)


def test_a_validated_spec_validates_again_unchanged():
    once = validate_spec(good())
    assert validate_spec(once) == once

"""What an instance needs, from its spec alone: the torch catalog's parameter counts agree
with the modules torch builds, and memory needs grow with the batch."""

from __future__ import annotations

import warnings

import pytest
from dilu.v1 import types_pb2

warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)

from services.node_agent.worker.requirements import (  # noqa: E402
    MIB,
    checked_batch,
    largest_batch_within,
    memory_need_bytes,
)
from services.node_agent.worker.torch_catalog import parse_config  # noqa: E402

S = types_pb2


@pytest.mark.parametrize(("model", "options"), [
    ("resnet", {}),
    ("resnet", {"image_size": "16", "width": "4", "blocks": "1,1", "classes": "10"}),
    ("resnet", {"width": "3", "blocks": "1,2,3,1", "classes": "7"}),
    ("transformer", {}),
    ("transformer", {"seq_len": "16", "d_model": "32", "layers": "3", "heads": "4",
                     "vocab": "100", "classes": "3"}),
])
def test_parameter_counts_match_the_modules_torch_builds(model: str, options: dict[str, str]):
    config = parse_config(model, options)
    built = config.build()
    assert config.parameter_count() == sum(p.numel() for p in built.parameters())


def _spec(**changes: object) -> types_pb2.FunctionSpec:
    spec = types_pb2.FunctionSpec(name="f", kind=S.FUNCTION_KIND_INFERENCE, runtime=S.RUNTIME_SIM,
                                  model="bert-base")
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


def test_sim_memory_need_is_the_performance_models_and_triples_for_training():
    assert memory_need_bytes(_spec(), 1) == (210 + 16) * MIB
    assert memory_need_bytes(_spec(), 8) == (210 + 8 * 16) * MIB
    training = _spec(kind=S.FUNCTION_KIND_TRAINING)
    assert memory_need_bytes(training, 1) == 3 * (210 + 16 * 16) * MIB  # its step batch, 16
    training.runtime_options["batch"] = "2"
    assert memory_need_bytes(training, 1) == 3 * (210 + 2 * 16) * MIB


def test_torch_memory_grows_with_the_batch_and_training_keeps_more():
    spec = _spec(runtime=S.RUNTIME_TORCH, model="resnet")
    one, eight = memory_need_bytes(spec, 1), memory_need_bytes(spec, 8)
    assert eight > one > 4 * parse_config("resnet", {}).parameter_count()
    training = _spec(runtime=S.RUNTIME_TORCH, model="resnet", kind=S.FUNCTION_KIND_TRAINING)
    weights = 4 * parse_config("resnet", {}).parameter_count()
    # Weights, gradients and momentum, and every layer's outputs of its 16-sample step.
    assert memory_need_bytes(training, 1) - 3 * weights > memory_need_bytes(spec, 16) - weights


def test_the_checked_batch_is_max_batch_or_one_or_the_training_step():
    assert checked_batch(_spec()) == 1
    assert checked_batch(_spec(max_batch=12)) == 12
    assert checked_batch(_spec(kind=S.FUNCTION_KIND_TRAINING)) == 16


def test_a_default_batch_is_cut_to_what_fits_the_memory_quota():
    spec = _spec()
    assert largest_batch_within(spec, 0, 32) == 32  # no limit
    assert largest_batch_within(spec, (210 + 5 * 16) * MIB, 32) == 5
    assert largest_batch_within(spec, 10 * MIB, 32) == 1  # nothing fits: the worker refuses

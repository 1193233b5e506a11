"""The torch worker runtime on CPU with tiny models: decoding, batches, weights, training."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
from dilu.v1 import types_pb2

# torch warns on import when numpy is missing; the runtime never needs numpy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)

import torch  # noqa: E402

from services.common.errors import InvalidArgument  # noqa: E402
from services.node_agent.worker.torch_catalog import TORCH_MODELS  # noqa: E402
from services.node_agent.worker.torch_runtime import (  # noqa: E402
    build_inference,
    build_training,
    pick_device,
)

TINY = {
    "resnet": {"image_size": "32", "width": "8", "blocks": "1,1", "classes": "10"},
    "transformer": {"seq_len": "16", "d_model": "32", "layers": "1", "heads": "4", "vocab": "100",
                    "classes": "3"},
}
JSON = "application/json"


def spec(model: str, weights_uri: str = "", **options: str) -> types_pb2.FunctionSpec:
    return types_pb2.FunctionSpec(model=model, weights_uri=weights_uri,
                                  runtime_options={**TINY.get(model, {}), **options})


def refused(model: str, weights_uri: str = "", **options: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as error:
        build_inference(spec(model, weights_uri, **options), "cpu")
    return error.value


def payload_error(model: str, payload: bytes, content_type: str = JSON) -> InvalidArgument:
    inference = build_inference(spec(model), "cpu")
    with pytest.raises(InvalidArgument) as error:
        inference.decode(payload, content_type)
    assert error.value.field == "payload"
    return error.value


def test_the_catalog_names_the_models_and_the_device_is_cpu_here() -> None:
    assert frozenset({"resnet", "transformer"}) == TORCH_MODELS
    assert pick_device() == ("cuda" if torch.cuda.is_available() else "cpu")


def test_resnet_classifies_random_and_explicit_images() -> None:
    inference = build_inference(spec("resnet"), "cpu")
    assert inference.max_batch_default == 16
    assert inference.content_type == JSON
    flat = [((i % 17) - 8) / 8 for i in range(3 * 32 * 32)]
    nested = [[flat[(c * 32 + y) * 32: (c * 32 + y + 1) * 32] for y in range(32)] for c in range(3)]
    samples = [inference.decode(b"", JSON),
               inference.decode(json.dumps({"image": flat}).encode(), JSON),
               inference.decode(json.dumps({"image": nested}).encode(), "")]
    assert all(s.shape == (3, 32, 32) and s.dtype == torch.float32 for s in samples)
    assert torch.equal(samples[1], samples[2])

    results = [json.loads(r) for r in inference.run_batch(samples)]
    assert len(results) == 3
    for result in results:
        assert set(result) == {"class", "top5"}
        assert 0 <= result["class"] < 10
        assert len(result["top5"]) == 5
        assert result["top5"][0][0] == result["class"]
        probs = [p for _, p in result["top5"]]
        assert probs == sorted(probs, reverse=True)
        assert all(0 <= p <= 1 for p in probs) and sum(probs) <= 1 + 1e-5
    assert results[1] == results[2]
    assert inference.run_batch([]) == []


def test_transformer_classifies_random_and_explicit_tokens() -> None:
    inference = build_inference(spec("transformer"), "cpu")
    assert inference.max_batch_default == 32
    random = inference.decode(b"", JSON)
    explicit = inference.decode(b'{"tokens": [5, 99, 0, 42]}', "application/json; charset=utf-8")
    assert random.shape == explicit.shape == (16,) and explicit.dtype == torch.int64
    assert explicit.tolist() == [5, 99, 0, 42] + [0] * 12
    assert int(random.min()) >= 0 and int(random.max()) < 100

    results = [json.loads(r) for r in inference.run_batch([random, explicit, explicit])]
    assert len(results) == 3
    for result in results:
        assert set(result) == {"class", "probs"}
        assert len(result["probs"]) == 3
        assert math.isclose(sum(result["probs"]), 1, abs_tol=1e-5)
        assert result["class"] == max(range(3), key=result["probs"].__getitem__)
    # The same input in two rows of one batch: CPU kernels may vectorise the rows
    # differently, so the probabilities agree to float32 rounding, not bit for bit.
    assert results[1]["class"] == results[2]["class"]
    assert results[1]["probs"] == pytest.approx(results[2]["probs"], abs=1e-6)


@pytest.mark.parametrize("model", ["resnet", "transformer"])
def test_random_weights_are_deterministic(model: str) -> None:
    first, second = build_inference(spec(model), "cpu"), build_inference(spec(model), "cpu")
    sample = first.decode(b"", JSON)
    assert first.run_batch([sample]) == second.run_batch([sample]) == first.run_batch([sample])
    # A sample's result does not depend on what else is in the batch (eval-mode BatchNorm).
    alone = json.loads(first.run_batch([sample])[0])
    batched = json.loads(first.run_batch([first.decode(b"", JSON), sample])[1])
    assert alone["class"] == batched["class"]


@pytest.mark.parametrize("as_uri", [False, True])
def test_weights_round_trip_through_a_file(tmp_path: Path, as_uri: bool) -> None:
    trained = build_inference(spec("transformer"), "cpu")
    with torch.no_grad():
        for parameter in trained.model.parameters():
            parameter.add_(torch.randn_like(parameter))
    path = tmp_path / "weights.pt"
    torch.save(trained.model.state_dict(), path)

    loaded = build_inference(spec("transformer", path.as_uri() if as_uri else str(path)), "cpu")
    sample = trained.decode(b'{"tokens": [1, 2, 3]}', JSON)
    assert loaded.run_batch([sample]) == trained.run_batch([sample])
    assert loaded.run_batch([sample]) != build_inference(spec("transformer"), "cpu").run_batch([sample])


def test_weights_that_do_not_fit_are_refused(tmp_path: Path) -> None:
    other = build_inference(spec("resnet", width="16"), "cpu")
    path = tmp_path / "wide.pt"
    torch.save(other.model.state_dict(), path)
    error = refused("resnet", str(path))
    assert error.field == "function.weights_uri"
    assert "shape mismatch" in error.problem

    torch.save(build_inference(spec("transformer"), "cpu").model.state_dict(), path)
    error = refused("resnet", path.as_uri())
    assert error.field == "function.weights_uri" and "missing" in error.problem

    not_weights = tmp_path / "junk.pt"
    not_weights.write_bytes(b"not a checkpoint")
    assert refused("resnet", str(not_weights)).field == "function.weights_uri"
    assert refused("resnet", str(tmp_path / "absent.pt")).field == "function.weights_uri"


def test_weights_are_never_downloaded() -> None:
    error = refused("resnet", "http://example.com/resnet.pt")
    assert error.field == "function.weights_uri" and "never downloaded" in error.problem
    assert refused("resnet", "file://elsewhere/resnet.pt").field == "function.weights_uri"


@pytest.mark.parametrize(("model", "payload", "content_type"), [
    ("resnet", b'{"image": [0.5, 0.5]}', JSON),
    ("resnet", json.dumps({"image": [[[0.0] * 32] * 32] * 2 + [[[0.0] * 31] * 32]}).encode(), JSON),
    ("resnet", json.dumps({"image": [True] * (3 * 32 * 32)}).encode(), JSON),
    ("resnet", json.dumps({"image": [1e300] * (3 * 32 * 32)}).encode(), JSON),
    ("resnet", b'{"tokens": [1]}', JSON),
    ("transformer", json.dumps({"tokens": list(range(17))}).encode(), JSON),
    ("transformer", b'{"tokens": [1, 100]}', JSON),
    ("transformer", b'{"tokens": [1, -1]}', JSON),
    ("transformer", b'{"tokens": [1.5]}', JSON),
    ("transformer", b'[1, 2]', JSON),
    ("transformer", b"not json", JSON),
    ("transformer", b"\xff\xfe", JSON),
    ("transformer", b'{"tokens": [1]}', "application/octet-stream"),
])
def test_bad_payloads_are_refused(model: str, payload: bytes, content_type: str) -> None:
    error = payload_error(model, payload, content_type)
    # Every refusal says what shape of payload the model expects.
    assert ('"image"' if model == "resnet" else '"tokens"') in error.problem


def test_payload_errors_say_what_shape_is_expected() -> None:
    assert "3072 numbers" in payload_error("resnet", b'{"image": []}').problem
    assert "up to 16 ints in [0, 100)" in payload_error("transformer", b'{"tokens": [100]}').problem


@pytest.mark.parametrize(("model", "options", "field"), [
    ("resnet", {"image_size": "big"}, "function.runtime_options.image_size"),
    ("resnet", {"width": "0"}, "function.runtime_options.width"),
    ("resnet", {"blocks": "2,,2"}, "function.runtime_options.blocks"),
    ("resnet", {"blocks": "2,-1"}, "function.runtime_options.blocks"),
    ("resnet", {"classes": "-3"}, "function.runtime_options.classes"),
    ("resnet", {"seq_len": "8"}, "function.runtime_options.seq_len"),
    ("transformer", {"heads": "5"}, "function.runtime_options.heads"),
    ("transformer", {"layers": "1.5"}, "function.runtime_options.layers"),
    ("transformer", {"colour": "red"}, "function.runtime_options.colour"),
    ("transformer", {"threads": "0"}, "function.runtime_options.threads"),
    ("transformer", {"batch": "x"}, "function.runtime_options.batch"),
])
def test_bad_runtime_options_are_refused(model: str, options: dict[str, str], field: str) -> None:
    assert refused(model, **options).field == field


def test_an_unknown_model_names_the_known_ones() -> None:
    error = refused("bert")
    assert error.field == "function.model"
    assert "resnet" in error.problem and "transformer" in error.problem


def test_threads_option_sets_torch_threads() -> None:
    threads = torch.get_num_threads()
    build_inference(spec("transformer", threads=str(threads)), "cpu")
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize("model", ["resnet", "transformer"])
def test_training_steps_change_the_parameters(model: str) -> None:
    training = build_training(spec(model, batch="4"), "cpu")
    assert training.batch_size == 4
    before = [p.detach().clone() for p in training.model.parameters()]
    losses = [training.step() for _ in range(20)]
    assert all(math.isfinite(loss) and loss > 0 for loss in losses)
    after = list(training.model.parameters())
    assert any(not torch.equal(old, new) for old, new in zip(before, after, strict=True))


def test_training_batch_defaults_to_16() -> None:
    assert build_training(spec("transformer"), "cpu").batch_size == 16


@pytest.mark.parametrize("payload", [
    b'{"image": ' + b"9" * 5000 + b"}",  # found by the fuzz suite: int() refuses > 4300 digits
    b"[" * 100_000 + b"]" * 100_000,
    b'{"tokens": [1e999]}',
])
def test_absurd_json_is_an_invalid_payload_not_a_crash(payload: bytes):
    runtime = build_inference(spec("resnet"), "cpu")
    with pytest.raises(InvalidArgument) as refused:
        runtime.decode(payload, JSON)
    assert refused.value.field == "payload"

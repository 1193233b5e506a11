"""The `torch` worker runtime: real PyTorch models serving JSON requests or training steps.

Models are defined in code (`torch_models`); their weights are random from a fixed seed, or
a state_dict loaded from a local file named by `FunctionSpec.weights_uri`. Nothing is
downloaded. The worker drives an instance through two small objects:

- `TorchInference`: `decode` turns one request payload into a sample tensor, `run_batch`
  runs a batch of samples and returns one JSON result per sample.
- `TorchTraining`: `step` runs one optimizer step on random data and returns the loss.
"""

from __future__ import annotations

import json
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

# torch warns on import when numpy is missing; nothing here needs numpy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from dilu.v1 import types_pb2  # noqa: E402
from torch import nn  # noqa: E402

from services.common.errors import InvalidArgument  # noqa: E402
from services.node_agent.worker.torch_catalog import (  # noqa: E402
    DEFAULT_MAX_BATCH,
    RUNTIME_OPTIONS,
    ModelConfig,
    ResNetConfig,
    TransformerConfig,
    check_runtime_options,
    parse_config,
    training_batch,
)

_WEIGHTS_FIELD = "function.weights_uri"
_JSON = "application/json"


def pick_device() -> str:
    """The device models run on: "cuda" when a GPU is visible, else "cpu"."""
    return "cuda" if torch.cuda.is_available() else "cpu"


class TorchInference:
    """One model instance serving requests; not thread-safe for concurrent `run_batch`."""

    content_type: str = _JSON

    def __init__(self, config: ModelConfig, model: nn.Module, device: str) -> None:
        self.config = config
        self.model = model.eval()
        self.device = device
        # Batch size to use when the spec leaves max_batch unset (memory permitting).
        self.max_batch_default: int = DEFAULT_MAX_BATCH[
            "resnet" if isinstance(config, ResNetConfig) else "transformer"]
        # Random samples come from their own generator so that a load generator's requests
        # neither depend on nor disturb the global RNG.
        self._rng = torch.Generator().manual_seed(0)

    def decode(self, payload: bytes, content_type: str) -> torch.Tensor:
        """One request payload as a single sample (no batch dimension) on the device.

        An empty payload gives a random sample of the right shape. Otherwise the payload is
        JSON: {"image": [...]} for resnet, {"tokens": [...]} for transformer (see
        torch_catalog). Anything malformed raises InvalidArgument("payload", ...).
        """
        if not payload:
            return self.config.random_inputs(1, "cpu", self._rng)[0].to(self.device)
        expected = self._expected()
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type not in ("", _JSON):
            raise InvalidArgument("payload", f"content type {content_type!r} is not supported; send {_JSON} "
                                             f"({expected}) or an empty payload for a random sample")
        try:
            body = json.loads(payload)
        except ValueError as error:  # bad UTF-8 or JSON, or an integer of over 4300 digits
            raise InvalidArgument("payload", f"is not valid JSON ({str(error)[:200]}); "
                                             f"expected {expected}") from None
        except RecursionError:
            raise InvalidArgument("payload", f"is nested too deeply; expected {expected}") from None
        if isinstance(self.config, ResNetConfig):
            sample = _decode_image(body, self.config, expected)
        else:
            sample = _decode_tokens(body, self.config, expected)
        return sample.to(self.device)

    def run_batch(self, samples: list[torch.Tensor]) -> list[bytes]:
        """Run `samples` (from `decode`) as one batch; one JSON result per sample, in order."""
        if not samples:
            return []
        self.model.eval()
        with torch.inference_mode():
            probs = F.softmax(self.model(torch.stack(samples)).float(), dim=1)
            if isinstance(self.config, ResNetConfig):
                top = torch.topk(probs, min(5, self.config.classes), dim=1)
                # topk sorts descending, so the first of the top 5 is the predicted class.
                rows = [{"class": classes[0], "top5": [[c, p] for c, p in zip(classes, values, strict=True)]}
                        for classes, values in zip(top.indices.tolist(), top.values.tolist(), strict=True)]
            else:
                rows = [{"class": best, "probs": row}
                        for best, row in zip(probs.argmax(dim=1).tolist(), probs.tolist(), strict=True)]
        _synchronize(self.device)
        return [json.dumps(row, separators=(",", ":")).encode() for row in rows]

    def _expected(self) -> str:
        if isinstance(self.config, ResNetConfig):
            size = self.config.image_size
            return (f'{{"image": [...]}} with {3 * size * size} numbers (3*{size}*{size}, channels first) '
                    f"or a nested [3][{size}][{size}] list")
        return f'{{"tokens": [...]}} with up to {self.config.seq_len} ints in [0, {self.config.vocab})'


class TorchTraining:
    """One model instance training on random data with SGD (lr 0.01, momentum 0.9)."""

    def __init__(self, config: ModelConfig, model: nn.Module, device: str, batch_size: int) -> None:
        self.config = config
        self.model = model.train()
        self.device = device
        self.batch_size: int = batch_size
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(self) -> float:
        """One forward/backward/optimizer step on a fresh random batch; returns the loss."""
        self.model.train()
        inputs = self.config.random_inputs(self.batch_size, self.device)
        labels = torch.randint(0, self.config.classes, (self.batch_size,), device=self.device)
        self.optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(self.model(inputs), labels)
        loss.backward()
        self.optimizer.step()
        _synchronize(self.device)
        return float(loss.item())


def build_inference(spec: types_pb2.FunctionSpec, device: str) -> TorchInference:
    """The model of `spec` on `device`, ready to serve; InvalidArgument names a bad field."""
    config, model = _build(spec, device)
    return TorchInference(config, model, device)


def build_training(spec: types_pb2.FunctionSpec, device: str) -> TorchTraining:
    """The model of `spec` on `device`, ready to train; InvalidArgument names a bad field."""
    config, model = _build(spec, device)
    return TorchTraining(config, model, device, training_batch(spec.runtime_options))


def _build(spec: types_pb2.FunctionSpec, device: str) -> tuple[ModelConfig, nn.Module]:
    options = dict(spec.runtime_options)
    # Validate every option before the (slow) model construction.
    config = parse_config(spec.model, options, RUNTIME_OPTIONS)
    threads = check_runtime_options(options).get("threads")
    path = _weights_path(spec.weights_uri) if spec.weights_uri else None
    if threads is not None:
        torch.set_num_threads(threads)
    # A fixed seed makes random-weight instances identical, so their results are comparable.
    torch.manual_seed(0)
    model = config.build().to(device)
    if path is not None:
        _load_weights(model, path, device)
    return config, model


def _weights_path(uri: str) -> Path:
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidArgument(_WEIGHTS_FIELD, f"file URI {uri!r} names host {parts.netloc!r}; "
                                                  "only files on this node can be read")
        return Path(url2pathname(unquote(parts.path)))
    if parts.scheme:
        raise InvalidArgument(_WEIGHTS_FIELD, f"URI scheme {parts.scheme!r} is not supported: weights are "
                                              "never downloaded; give a local path or a file:// URI")
    return Path(uri).expanduser()


def _load_weights(model: nn.Module, path: Path, device: str) -> None:
    where = repr(str(path))
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except OSError as error:
        raise InvalidArgument(_WEIGHTS_FIELD, f"cannot read {where}: {error.strerror or error}") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise InvalidArgument(_WEIGHTS_FIELD, f"{where} is not a state_dict saved with torch.save: "
                                              f"{_first_line(error)}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InvalidArgument(_WEIGHTS_FIELD, f"{where} does not hold a state_dict (a dict of tensors)")
    problem = _state_mismatch(model.state_dict(), state)
    if problem:
        raise InvalidArgument(_WEIGHTS_FIELD, f"{where} does not fit the model built from the spec (are "
                                              f"runtime_options the ones it was trained with?): {problem}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # e.g. a dtype that cannot be copied; the checks above catch the rest
        problem = _first_line(error)
        raise InvalidArgument(_WEIGHTS_FIELD, f"{where} does not fit the model: {problem}") from None


def _state_mismatch(expected: Mapping[str, torch.Tensor], given: Mapping[str, torch.Tensor]) -> str:
    """What differs between two state_dicts, briefly; empty when they fit."""

    def few(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")

    problems = []
    if missing := sorted(expected.keys() - given.keys()):
        problems.append(f"missing {few(missing)}")
    if unexpected := sorted(given.keys() - expected.keys()):
        problems.append(f"unexpected {few(unexpected)}")
    shared = sorted(expected.keys() & given.keys())
    if wrong := [f"{key} is {tuple(given[key].shape)}, model wants {tuple(expected[key].shape)}"
                 for key in shared if given[key].shape != expected[key].shape]:
        problems.append(f"shape mismatch: {few(wrong)}")
    return "; ".join(problems)


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _decode_image(body: Any, config: ResNetConfig, expected: str) -> torch.Tensor:
    size = config.image_size
    image = body.get("image") if isinstance(body, dict) else None
    if not isinstance(image, list):
        raise InvalidArgument("payload", f"needs an \"image\" list; expected {expected}")
    if len(image) == 3 and all(isinstance(channel, list) for channel in image):
        # Nested [3][H][W]: every channel must have H rows of W values.
        if not all(len(channel) == size and all(isinstance(row, list) and len(row) == size for row in channel)
                   for channel in image):
            raise InvalidArgument("payload", f"nested image is not [3][{size}][{size}]; expected {expected}")
        flat = [value for channel in image for row in channel for value in row]
    elif len(image) == 3 * size * size:
        flat = image
    else:
        raise InvalidArgument("payload", f"image has {len(image)} items; expected {expected}")
    # bool is an int subclass, but true/false in an image is a client bug, not a pixel.
    if not all(type(value) in (int, float) for value in flat):
        raise InvalidArgument("payload", f"image values must be numbers; expected {expected}")
    pixels: torch.Tensor | None
    try:
        pixels = torch.tensor(flat, dtype=torch.float32)
    except (OverflowError, RuntimeError):  # an int too large for any float
        pixels = None
    if pixels is None or not bool(torch.isfinite(pixels).all()):
        raise InvalidArgument("payload", f"image values must be finite float32 numbers; expected {expected}")
    return pixels.reshape(config.input_shape)


def _decode_tokens(body: Any, config: TransformerConfig, expected: str) -> torch.Tensor:
    tokens = body.get("tokens") if isinstance(body, dict) else None
    if not isinstance(tokens, list):
        raise InvalidArgument("payload", f"needs a \"tokens\" list; expected {expected}")
    if len(tokens) > config.seq_len:
        raise InvalidArgument("payload", f"has {len(tokens)} tokens, more than seq_len; expected {expected}")
    for position, token in enumerate(tokens):
        if type(token) is not int or not 0 <= token < config.vocab:
            raise InvalidArgument("payload", f"token {position} is {token!r}; expected {expected}")
    # Shorter sequences are padded with token 0 so every sample in a batch stacks.
    return torch.tensor(tokens + [0] * (config.seq_len - len(tokens)), dtype=torch.int64)


def _synchronize(device: str) -> None:
    # CUDA runs asynchronously; wait so the caller's timing covers the GPU work.
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)

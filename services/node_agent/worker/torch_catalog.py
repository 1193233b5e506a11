"""The models the `torch` runtime can build, their options and their memory need, all
importable without torch (the scheduler checks a Deploy with them, and a worker checks its
memory quota with them before it builds anything).

Every option value is a string holding a positive integer within the bounds shown, unless
said otherwise; an unknown key is refused, so that a typo does not silently run a model of
another shape.

`resnet` — a ResNet-style CNN classifying 3-channel square images:
    image_size  side of the input image in pixels, 1-1024 (default 64)
    width       channels of the first stage, doubled at each later stage, 1-1024 (default 32)
    blocks      residual blocks per stage, comma-separated, 1-8 stages of 1-64 blocks,
                e.g. "2,2,2" (the default)
    classes     output classes, 1-100000 (default 1000)
    Payload: {"image": [3*image_size*image_size floats, channels first]} or a nested
    [3][image_size][image_size] list. Result: {"class": int, "top5": [[class, prob], ...]}.

`transformer` — a Transformer encoder classifying token sequences:
    seq_len     tokens per sequence, 1-8192; shorter inputs are padded with token 0 (default 64)
    d_model     embedding width, 1-16384, divisible by `heads` (default 128)
    layers      encoder layers, 1-128 (default 2)
    heads       attention heads, 1-256 (default 4)
    vocab       vocabulary size, 1-1000000; tokens must lie in [0, vocab) (default 30522)
    classes     output classes, 1-100000 (default 2)
    Payload: {"tokens": [up to seq_len ints]}. Result: {"class": int, "probs": [...]}.

Options every torch model takes:
    threads     CPU threads torch may use, 1-256 (default: torch's own choice)
    batch       samples per training step, 1-4096 (default 16); inference functions ignore
                it and use `FunctionSpec.max_batch` instead

An empty payload asks for a random input of the right shape (for load generators).
`weights_uri` is a local path or file:// URI to a `torch.save`d state_dict of a model built
with the same options; empty means random weights from a fixed seed. Nothing is downloaded.

**Memory need** (`memory_need_bytes`): float32 parameters (weights; for training also their
gradients and SGD momentum, 3×) plus an activation allowance per sample of the batch,
computed from the options alone. The activation allowance is an estimate, not a
measurement: for inference the few feature maps alive at once, for training every layer's
outputs (kept for the backward pass). CUDA context and allocator slack are not included.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.common.errors import InvalidArgument

if TYPE_CHECKING:  # torch is imported only where a model is really built
    import torch
    from torch import nn

TORCH_MODELS: frozenset[str] = frozenset({"resnet", "transformer"})

_FLOAT32 = 4


@dataclass(frozen=True, slots=True)
class IntOption:
    """One integer option: its default (None: none) and inclusive bounds."""

    default: int | None
    low: int
    high: int
    help: str


RESNET_OPTIONS: dict[str, IntOption] = {
    "image_size": IntOption(64, 1, 1024, "side of the input image in pixels"),
    "width": IntOption(32, 1, 1024, "channels of the first stage"),
    "classes": IntOption(1000, 1, 100_000, "output classes"),
}
# `blocks` is a list, parsed on its own.
RESNET_BLOCKS_DEFAULT = (2, 2, 2)
RESNET_MAX_STAGES = 8
RESNET_MAX_BLOCKS = 64
TRANSFORMER_OPTIONS: dict[str, IntOption] = {
    "seq_len": IntOption(64, 1, 8192, "tokens per sequence"),
    "d_model": IntOption(128, 1, 16_384, "embedding width"),
    "layers": IntOption(2, 1, 128, "encoder layers"),
    "heads": IntOption(4, 1, 256, "attention heads"),
    "vocab": IntOption(30522, 1, 1_000_000, "vocabulary size"),
    "classes": IntOption(2, 1, 100_000, "output classes"),
}
# Options the runtime handles itself rather than the model.
RUNTIME_OPTIONS: dict[str, IntOption] = {
    "threads": IntOption(None, 1, 256, "CPU threads torch may use"),
    "batch": IntOption(16, 1, 4096, "samples per training step"),
}
# Largest batch an inference worker forms when the spec leaves it open (and its memory
# quota allows): small images are cheap per sample, short sequences cheaper still.
DEFAULT_MAX_BATCH: dict[str, int] = {"resnet": 16, "transformer": 32}
MODEL_OPTION_KEYS: dict[str, frozenset[str]] = {
    "resnet": frozenset({*RESNET_OPTIONS, "blocks"}),
    "transformer": frozenset(TRANSFORMER_OPTIONS),
}


def option_field(key: str) -> str:
    """The request field path of one runtime option, as InvalidArgument names it."""
    return f"function.runtime_options.{key}"


def parse_positive_int(key: str, value: str, high: int | None = None) -> int:
    """`value` as an integer in [1, high], or InvalidArgument naming the option `key`."""
    try:
        number = int(value.strip())
    except ValueError:
        raise InvalidArgument(option_field(key), f"must be a positive integer, got {value[:40]!r}") from None
    if number <= 0:
        raise InvalidArgument(option_field(key), f"must be a positive integer, got {number}")
    if high is not None and number > high:
        raise InvalidArgument(option_field(key), f"must be at most {high}, got {number}")
    return number


def parse_option(key: str, value: str, option: IntOption) -> int:
    return parse_positive_int(key, value, option.high)


@dataclass(frozen=True)
class ResNetConfig:
    """Shape of a `resnet` model; inputs are float images [3, image_size, image_size]."""

    image_size: int
    width: int
    blocks: tuple[int, ...]
    classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (3, self.image_size, self.image_size)

    def random_inputs(self, batch: int, device: str | torch.device,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """A batch of random images, normally distributed like normalized pixels."""
        import torch

        return torch.randn((batch, *self.input_shape), generator=generator, device=device)

    def build(self) -> nn.Module:
        from services.node_agent.worker.torch_models import ResNet

        return ResNet(self)

    def parameter_count(self) -> int:
        """Parameters of the module `build` returns (BatchNorm running statistics are
        buffers, not parameters)."""
        width = self.width
        count = 3 * width * 9 + 2 * width  # stem conv (no bias) + BatchNorm
        channels = width
        for index, blocks in enumerate(self.blocks):
            out = width * 2**index
            for block in range(blocks):
                inputs = channels if block == 0 else out
                count += inputs * out * 9 + 2 * out + out * out * 9 + 2 * out
                if block == 0 and (index > 0 or inputs != out):  # projecting shortcut
                    count += inputs * out + 2 * out
            channels = out
        return count + channels * self.classes + self.classes

    def _feature_maps(self) -> list[int]:
        """Elements per sample of each stage's output (the stem's first)."""
        side = math.ceil(self.image_size / 2)
        maps = [self.width * side * side]
        for index in range(len(self.blocks)):
            if index > 0:
                side = math.ceil(side / 2)
            maps.append(self.width * 2**index * side * side)
        return maps

    def activation_bytes(self, training: bool) -> int:
        """Activation allowance per sample: inference keeps about four feature maps of the
        largest size alive at once; training keeps every layer's outputs (six per block)."""
        inputs = 3 * self.image_size**2
        maps = self._feature_maps()
        if not training:
            return _FLOAT32 * (inputs + 4 * max(maps))
        kept = 3 * maps[0] + sum(6 * blocks * size
                                 for blocks, size in zip(self.blocks, maps[1:], strict=True))
        return _FLOAT32 * (inputs + kept)


@dataclass(frozen=True)
class TransformerConfig:
    """Shape of a `transformer` model; inputs are int64 token ids [seq_len]."""

    seq_len: int
    d_model: int
    layers: int
    heads: int
    vocab: int
    classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (self.seq_len,)

    def random_inputs(self, batch: int, device: str | torch.device,
                      generator: torch.Generator | None = None) -> torch.Tensor:
        """A batch of random token sequences, every position filled."""
        import torch

        return torch.randint(0, self.vocab, (batch, self.seq_len), generator=generator, device=device)

    def build(self) -> nn.Module:
        from services.node_agent.worker.torch_models import TransformerClassifier

        return TransformerClassifier(self)

    def parameter_count(self) -> int:
        """Parameters of the module `build` returns: embeddings, `layers` encoder layers
        (attention 4d²+4d, feed-forward of width 4d 8d²+5d, two LayerNorms 4d), the final
        LayerNorm and the head."""
        d = self.d_model
        per_layer = 12 * d * d + 13 * d
        return (self.vocab * d + self.seq_len * d + self.layers * per_layer + 2 * d
                + d * self.classes + self.classes)

    def activation_bytes(self, training: bool) -> int:
        """Activation allowance per sample: one layer's hidden states, feed-forward
        intermediate and attention scores for inference; every layer's for training."""
        seq, d = self.seq_len, self.d_model
        one_layer = 3 * seq * d + 4 * seq * d + self.heads * seq * seq
        if not training:
            return _FLOAT32 * one_layer
        return _FLOAT32 * (seq * d + self.layers * 2 * one_layer)


ModelConfig = ResNetConfig | TransformerConfig


def parse_config(model: str, options: Mapping[str, str],
                 runtime_keys: Collection[str] = ()) -> ModelConfig:
    """Validate `options` for `model` and return its config.

    `runtime_keys` are options the caller handles itself (e.g. `threads`); they are
    accepted here but otherwise ignored. Any other unknown key is refused.
    """
    if model not in TORCH_MODELS:
        known_models = ", ".join(sorted(TORCH_MODELS))
        raise InvalidArgument("function.model", f"unknown torch model {model[:40]!r}; known: {known_models}")
    known = MODEL_OPTION_KEYS[model] | set(runtime_keys)
    for key in sorted(options):
        if key not in known:
            raise InvalidArgument(option_field(key), f"unknown option for model {model!r}; "
                                                     f"known options: {', '.join(sorted(known))}")
    if model == "resnet":
        values = _ints(RESNET_OPTIONS, options)
        blocks = _parse_blocks(options["blocks"]) if "blocks" in options else RESNET_BLOCKS_DEFAULT
        return ResNetConfig(image_size=values["image_size"], width=values["width"],
                            blocks=blocks, classes=values["classes"])
    ints = _ints(TRANSFORMER_OPTIONS, options)
    if ints["d_model"] % ints["heads"]:
        raise InvalidArgument(option_field("heads"),
                              f"d_model {ints['d_model']} is not divisible by heads {ints['heads']}")
    return TransformerConfig(**ints)


def _ints(table: Mapping[str, IntOption], options: Mapping[str, str]) -> dict[str, int]:
    values = {}
    for key, option in table.items():
        raw = options.get(key)
        if raw is None:
            assert option.default is not None
            values[key] = option.default
        else:
            values[key] = parse_option(key, raw, option)
    return values


def _parse_blocks(value: str) -> tuple[int, ...]:
    try:
        blocks = tuple(int(part) for part in value.split(","))
    except ValueError:
        blocks = ()
    if (not blocks or min(blocks) <= 0 or max(blocks) > RESNET_MAX_BLOCKS
            or len(blocks) > RESNET_MAX_STAGES):
        raise InvalidArgument(option_field("blocks"),
                              f"must be 1-{RESNET_MAX_STAGES} comma-separated integers in "
                              f"[1, {RESNET_MAX_BLOCKS}] (blocks per stage), e.g. '2,2,2'; "
                              f"got {value[:40]!r}")
    return blocks


def check_runtime_options(options: Mapping[str, str]) -> dict[str, int]:
    """The runtime's own options (`threads`, `batch`) parsed; the model's are left alone."""
    return {key: parse_option(key, options[key], option)
            for key, option in RUNTIME_OPTIONS.items() if key in options}


def training_batch(options: Mapping[str, str]) -> int:
    """Samples per training step."""
    default = RUNTIME_OPTIONS["batch"].default
    assert default is not None
    return check_runtime_options(options).get("batch", default)


def memory_need_bytes(config: ModelConfig, batch: int, training: bool) -> int:
    """Estimated GPU memory of one instance at `batch` (see the module docstring)."""
    weights = _FLOAT32 * config.parameter_count()
    return (3 if training else 1) * weights + batch * config.activation_bytes(training)


"""The PyTorch models of the `torch` runtime, built from a function's `runtime_options`.

Each model has a frozen config parsed (and validated) from the options; the config knows its
input shape, makes random inputs of that shape and builds the `nn.Module`. The options are
described in `torch_catalog`, which the scheduler can import without torch.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass

# torch warns on import when numpy is missing; nothing here needs numpy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from services.common.errors import InvalidArgument  # noqa: E402
from services.node_agent.worker.torch_catalog import TORCH_MODELS  # noqa: E402

_RESNET_DEFAULTS = {"image_size": "64", "width": "32", "blocks": "2,2,2", "classes": "1000"}
_TRANSFORMER_DEFAULTS = {"seq_len": "64", "d_model": "128", "layers": "2", "heads": "4",
                         "vocab": "30522", "classes": "2"}


def option_field(key: str) -> str:
    """The request field path of one runtime option, as InvalidArgument names it."""
    return f"function.runtime_options.{key}"


def parse_positive_int(key: str, value: str) -> int:
    """`value` as an integer > 0, or InvalidArgument naming the option `key`."""
    try:
        number = int(value.strip())
    except ValueError:
        raise InvalidArgument(option_field(key), f"must be a positive integer, got {value!r}") from None
    if number <= 0:
        raise InvalidArgument(option_field(key), f"must be a positive integer, got {number}")
    return number


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
        return torch.randn((batch, *self.input_shape), generator=generator, device=device)

    def build(self) -> nn.Module:
        return ResNet(self)


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
        return torch.randint(0, self.vocab, (batch, self.seq_len), generator=generator, device=device)

    def build(self) -> nn.Module:
        return TransformerClassifier(self)


ModelConfig = ResNetConfig | TransformerConfig


def parse_config(model: str, options: Mapping[str, str],
                 runtime_keys: Collection[str] = ()) -> ModelConfig:
    """Validate `options` for `model` and return its config.

    `runtime_keys` are options the caller handles itself (e.g. `threads`); they are
    accepted here but otherwise ignored. Any other unknown key is refused, so that a typo
    does not silently run a model of another shape.
    """
    if model not in TORCH_MODELS:
        known_models = ", ".join(sorted(TORCH_MODELS))
        raise InvalidArgument("function.model", f"unknown torch model {model!r}; known: {known_models}")
    defaults = _RESNET_DEFAULTS if model == "resnet" else _TRANSFORMER_DEFAULTS
    known = set(defaults) | set(runtime_keys)
    for key in sorted(options):
        if key not in known:
            raise InvalidArgument(option_field(key), f"unknown option for model {model!r}; "
                                                     f"known options: {', '.join(sorted(known))}")
    values = {**defaults, **{key: options[key] for key in defaults if key in options}}
    if model == "resnet":
        return ResNetConfig(image_size=parse_positive_int("image_size", values["image_size"]),
                            width=parse_positive_int("width", values["width"]),
                            blocks=_parse_blocks(values["blocks"]),
                            classes=parse_positive_int("classes", values["classes"]))
    ints = {key: parse_positive_int(key, values[key]) for key in _TRANSFORMER_DEFAULTS}
    if ints["d_model"] % ints["heads"]:
        raise InvalidArgument(option_field("heads"),
                              f"d_model {ints['d_model']} is not divisible by heads {ints['heads']}")
    return TransformerConfig(**ints)


def _parse_blocks(value: str) -> tuple[int, ...]:
    try:
        blocks = tuple(int(part) for part in value.split(","))
    except ValueError:
        blocks = ()
    if not blocks or min(blocks) <= 0:
        raise InvalidArgument(option_field("blocks"),
                              f"must be comma-separated positive integers (blocks per stage), "
                              f"e.g. '2,2,2'; got {value!r}")
    return blocks


class BasicBlock(nn.Module):
    """Two 3x3 conv/BatchNorm layers plus a shortcut; the shortcut projects with a 1x1 conv
    when the block changes resolution or channel count, so the sum has matching shapes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        # Convs feeding a BatchNorm need no bias: the norm's shift replaces it.
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """Stem conv → stages of basic blocks (each later stage halves the resolution and doubles
    the channels) → global average pool → linear classifier. Returns logits [batch, classes]."""

    def __init__(self, config: ResNetConfig) -> None:
        super().__init__()
        # A stride-2 stem, as ImageNet ResNets do, keeps the first stage affordable.
        self.stem = nn.Sequential(
            nn.Conv2d(3, config.width, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(config.width),
            nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        channels = config.width
        for index, count in enumerate(config.blocks):
            out_channels = config.width * 2**index
            blocks = [BasicBlock(channels, out_channels, stride=1 if index == 0 else 2)]
            blocks += [BasicBlock(out_channels, out_channels, stride=1) for _ in range(count - 1)]
            stages.append(nn.Sequential(*blocks))
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, config.classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.stages(self.stem(images)))
        return self.head(torch.flatten(features, 1))


class TransformerClassifier(nn.Module):
    """Token + learned position embeddings → Transformer encoder layers → mean over positions
    → linear head. Returns logits [batch, classes].

    Padding (token 0) is not masked: it is an ordinary token, which keeps every sequence in
    a batch the same cost, as a serving benchmark wants.
    """

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(config.vocab, config.d_model)
        self.position = nn.Parameter(torch.randn(1, config.seq_len, config.d_model) * 0.02)
        layer = nn.TransformerEncoderLayer(config.d_model, config.heads, dim_feedforward=4 * config.d_model,
                                           batch_first=True, norm_first=True)
        # Nested tensors only help with padding masks, which this model does not use.
        self.encoder = nn.TransformerEncoder(layer, config.layers, norm=nn.LayerNorm(config.d_model),
                                             enable_nested_tensor=False)
        self.head = nn.Linear(config.d_model, config.classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.position[:, : tokens.shape[1]]
        return self.head(self.encoder(x).mean(dim=1))

"""The PyTorch models of the `torch` runtime, built from a function's `runtime_options`.

Each model has a frozen config parsed (and validated) from the options; the config knows its
input shape, makes random inputs of that shape and builds the `nn.Module`. The configs and
options live in `torch_catalog`, which the scheduler and the worker's memory check import
without torch; the modules are here.
"""

from __future__ import annotations

import warnings

# torch warns on import when numpy is missing; nothing here needs numpy.
warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)

import torch  # noqa: E402
from torch import nn  # noqa: E402

from services.node_agent.worker.torch_catalog import (  # noqa: E402
    ModelConfig,
    ResNetConfig,
    TransformerConfig,
    option_field,
    parse_config,
    parse_positive_int,
)

__all__ = [
    "ModelConfig",
    "ResNet",
    "ResNetConfig",
    "TransformerClassifier",
    "TransformerConfig",
    "option_field",
    "parse_config",
    "parse_positive_int",
]


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

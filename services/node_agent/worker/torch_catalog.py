"""The models the `torch` runtime can build, importable without torch.

The scheduler checks `FunctionSpec.model` against `TORCH_MODELS` when a function uses
RUNTIME_TORCH; the worker (`torch_runtime`) does the full check of `runtime_options` when it
builds the model. Every option value is a string holding a positive integer unless said
otherwise; an unknown key is refused.

`resnet` — a ResNet-style CNN classifying 3-channel square images:
    image_size  side of the input image in pixels (default 64)
    width       channels of the first stage, doubled at each later stage (default 32)
    blocks      residual blocks per stage, comma-separated, e.g. "2,2,2" (the default)
    classes     output classes (default 1000)
    Payload: {"image": [3*image_size*image_size floats, channels first]} or a nested
    [3][image_size][image_size] list. Result: {"class": int, "top5": [[class, prob], ...]}.

`transformer` — a Transformer encoder classifying token sequences:
    seq_len     tokens per sequence; shorter inputs are padded with token 0 (default 64)
    d_model     embedding width, divisible by `heads` (default 128)
    layers      encoder layers (default 2)
    heads       attention heads (default 4)
    vocab       vocabulary size; tokens must lie in [0, vocab) (default 30522)
    classes     output classes (default 2)
    Payload: {"tokens": [up to seq_len ints]}. Result: {"class": int, "probs": [...]}.

Options every torch model takes:
    threads     CPU threads torch may use (default: torch's own choice)
    batch       samples per training step (default 16); inference functions ignore it and
                use `FunctionSpec.max_batch` instead

An empty payload asks for a random input of the right shape (for load generators).
`weights_uri` is a local path or file:// URI to a `torch.save`d state_dict of a model built
with the same options; empty means random weights from a fixed seed. Nothing is downloaded.
"""

from __future__ import annotations

TORCH_MODELS: frozenset[str] = frozenset({"resnet", "transformer"})

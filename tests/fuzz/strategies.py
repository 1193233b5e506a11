"""Hypothesis strategies for request fields: values in range (sized to keep the stack
small), the edges of each range in `services.common.limits` and just past them, hostile
strings, and anything at all.

Names and ids the fuzzer draws never start with `seed`: the functions and instances seeded
before fuzzing are out of its reach, so that they can be checked unchanged afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from dilu.v1 import types_pb2
from google.protobuf.message import Message
from hypothesis import strategies as st

from services.common import limits
from services.common.limits import Range
from services.perf import SIM_MODELS

S = types_pb2
SEEDED_PREFIX = "seed"
# Valid names and ids the fuzzer keeps coming back to, so that deploys, scale calls,
# deletes, starts, quota changes and stops meet each other.
FUZZ_NAMES = ("fz-a", "fz-b", "fz-c")
FUZZ_INSTANCE_IDS = ("fz-0", "fz-1", "fz-2")
HOSTILE_STRINGS = (
    "", " ", "A", "-x", "x-", "9x", ".", "..", "../x", "../../etc/passwd", "/etc/passwd",
    "/tmp/dilu-fuzz", "a/b", "a.b", "*", ">", "a b", "x\x00y", "x\ny", "\u00e9", "\u202ex",
    "x" * 63, "x" * 64, "x" * 80, "x" * 81, "x" * 300, "x" * 5000, "nope", "fz-zz",
)
_BIG_TEXT = "\u00e9" * 20_000


def _not_seeded(value: str) -> bool:
    return not value.startswith(SEEDED_PREFIX)


def names() -> st.SearchStrategy[str]:
    """Function names: the fuzz pool, hostile strings, valid-looking and arbitrary."""
    return st.one_of(
        st.sampled_from(FUZZ_NAMES), st.sampled_from(HOSTILE_STRINGS),
        st.from_regex(limits.NAME_PATTERN, fullmatch=True), st.text(max_size=100),
        st.just(_BIG_TEXT),
    ).filter(_not_seeded)


def ids() -> st.SearchStrategy[str]:
    """Instance ids, likewise."""
    return st.one_of(
        st.sampled_from(FUZZ_INSTANCE_IDS), st.sampled_from(HOSTILE_STRINGS),
        st.from_regex(limits.SAFE_ID_PATTERN, fullmatch=True), st.text(max_size=100),
    ).filter(_not_seeded)


# Valid values the fuzzer uses are drawn from pools and ranges sized so that what passes
# validation stays a few small sim instances: names and ids from the fuzz pools, shares of
# at least 0.25, 8 GiB or more, at most 2 replicas (3 at most when scaled).
VALID_NAMES = st.sampled_from(FUZZ_NAMES)
VALID_IDS = st.sampled_from(FUZZ_INSTANCE_IDS)
UNSET = st.none()


def texts(max_bytes: int) -> st.SearchStrategy[str]:
    """Free text up to and past `max_bytes`."""
    return st.one_of(st.just(""), st.text(max_size=60), st.sampled_from(HOSTILE_STRINGS),
                     st.just("r" * max_bytes), st.just("r" * (max_bytes + 1)),
                     st.just("\u00e9" * (max_bytes // 2 + 1)))


def _float_edges(bounds: Range) -> list[float]:
    return [0.0, -0.0, bounds.low, bounds.high, math.nextafter(bounds.low, -math.inf),
            math.nextafter(bounds.high, math.inf), 5e-324, -5e-324, -1.0, 1e300, -1e300,
            math.inf, -math.inf, math.nan]


def floats(bounds: Range) -> st.SearchStrategy[float]:
    """Doubles off the beaten track: the range's edges and just past them, and anything."""
    return st.one_of(st.sampled_from(_float_edges(bounds)), st.floats(),
                     st.floats(bounds.low, bounds.high))


def ints(bounds: Range, bits: int = 32) -> st.SearchStrategy[int]:
    """Integers of a `bits`-wide field: the range's edges and just past them, and anything."""
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    edges = [v for v in (0, -1, 1, int(bounds.low), int(bounds.high), int(bounds.low) - 1,
                         int(bounds.high) + 1, high, low) if low <= v <= high]
    return st.one_of(st.sampled_from(edges), st.integers(low, high),
                     st.integers(int(bounds.low), int(bounds.high)))


def enums(valid: Sequence[int]) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(list(valid)), st.sampled_from([0, 99, -1, 2**31 - 1]))


def string_maps(keys: Sequence[str], values: Sequence[str]) -> st.SearchStrategy[dict[str, str]]:
    key = st.one_of(st.sampled_from(list(keys)), st.text(max_size=70))
    value = st.one_of(st.sampled_from(list(values)), st.text(max_size=300))
    return st.one_of(st.dictionaries(key, value, max_size=4),
                     st.just({f"k{i}": "v" for i in range(40)}))


Field = tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]  # (valid, wild)


@st.composite
def _wild_fields(draw: st.DrawFn, names: Sequence[str]) -> frozenset[str]:
    """Which fields to draw wild: none (a valid request), one, or all of them."""
    mode = draw(st.sampled_from(["valid", "valid", "one", "one", "one", "all"]))
    if mode == "valid":
        return frozenset()
    if mode == "all":
        return frozenset(names)
    return frozenset({draw(st.sampled_from(list(names)))})


@st.composite
def messages(draw: st.DrawFn, factory: Callable[..., Message], fields: Mapping[str, Field]) -> Message:
    """A message whose fields are all valid, or all but one, or all wild; a field drawn
    as None is left unset."""
    wild = draw(_wild_fields(list(fields)))
    values = {name: draw(strategies[1] if name in wild else strategies[0])
              for name, strategies in fields.items()}
    return factory(**{name: value for name, value in values.items() if value is not None})


def _runtime_options(kind_and_runtime: tuple[int, int]) -> st.SearchStrategy[dict[str, str]]:
    return st.sampled_from([{}, {"batch": "4"}]) if kind_and_runtime == (
        S.FUNCTION_KIND_TRAINING, S.RUNTIME_SIM) else st.just({})


@st.composite
def function_specs(draw: st.DrawFn, *, startable: bool = True) -> types_pb2.FunctionSpec:
    """Valid-shaped FunctionSpecs: valid, valid but for one field, or wild throughout.
    With `startable`, torch specs never pass (their memory is left unset): building real
    models is not what this suite measures, and the stack stays a few sim processes."""
    fields: dict[str, Field] = {
        "name": (VALID_NAMES, names()),
        "kind": (st.sampled_from([S.FUNCTION_KIND_INFERENCE, S.FUNCTION_KIND_INFERENCE,
                                  S.FUNCTION_KIND_TRAINING, S.FUNCTION_KIND_LLM_INFERENCE]),
                 enums([S.FUNCTION_KIND_INFERENCE, S.FUNCTION_KIND_LLM_INFERENCE,
                        S.FUNCTION_KIND_TRAINING])),
        "runtime": (st.just(S.RUNTIME_SIM), st.sampled_from([S.RUNTIME_TORCH, 0, 9, S.RUNTIME_SIM])),
        "model": (st.sampled_from(["resnet152", "bert-base"]),
                  st.one_of(st.sampled_from(sorted(SIM_MODELS)),
                            st.sampled_from(["resnet", "transformer", "alexnet", ""]),
                            st.text(max_size=80))),
        "slo.latency_ms": (st.floats(20, 10_000), floats(limits.LATENCY_MS)),
        "slo.percentile": (st.sampled_from([0.0, 90.0, 99.0]), floats(limits.PERCENTILE)),
        "resources.sm_request": (st.floats(0.25, 1.0), st.one_of(UNSET, floats(limits.SHARE))),
        "resources.sm_limit": (st.one_of(UNSET, st.just(1.0)), floats(limits.SHARE)),
        "resources.memory_mib": (st.integers(8192, 40960),
                                 st.one_of(UNSET, ints(limits.MEMORY_MIB, bits=64))),
        "resources.gpus_per_instance": (st.sampled_from([0, 1]), ints(limits.GPUS_PER_INSTANCE)),
        "replicas.min": (st.one_of(UNSET, st.integers(0, 2)), ints(limits.REPLICAS)),
        "replicas.max": (st.sampled_from([0, 2, 3]), ints(limits.MAX_REPLICAS)),
        "max_batch": (st.one_of(UNSET, st.sampled_from([1, 4, 8])), ints(limits.BATCH)),
        "labels": (st.sampled_from([{}, {"team": "fuzz"}]),
                   string_maps(["team", "bad key", "a/b.c"], ["x", "x" * 257])),
        "weights_uri": (st.just(""), texts(limits.WEIGHTS_URI_MAX)),
        "runtime_options": (st.just(None), string_maps(
            ["batch", "host_ms", "slowdown", "widht", "image_size", "width", "blocks", "threads",
             "vocab", "d_model", "heads", "seq_len"],
            ["1", "2", "16", "0", "-1", "1e3", "abc", "", "1,1", "9" * 5000, "1000000"])),
    }
    wild = draw(_wild_fields(list(fields)))
    values = {name: draw(pair[1] if name in wild else pair[0]) for name, pair in fields.items()}
    spec = types_pb2.FunctionSpec()
    for path, value in values.items():
        if value is None:
            continue
        owner: Message = spec
        *parents, leaf = path.split(".")
        for parent in parents:
            owner = getattr(owner, parent)
        if isinstance(value, dict):
            getattr(owner, leaf).update(value)
        else:
            setattr(owner, leaf, value)
    if values["runtime_options"] is None:
        spec.runtime_options.update(draw(_runtime_options((spec.kind, spec.runtime))))
    if startable and spec.runtime == S.RUNTIME_TORCH:
        spec.resources.ClearField("memory_mib")
    return spec


def quotas(gpu_memory_mib: int = 40960) -> st.SearchStrategy[Message]:
    return messages(types_pb2.Quota, {
        "sm_request": (st.floats(0.25, 1.0), floats(limits.SHARE)),
        "sm_limit": (st.just(1.0), floats(limits.SHARE)),
        "effective_share": (st.just(0.0), st.floats()),
        "memory_limit_mib": (st.integers(8192, gpu_memory_mib),
                             ints(limits.MEMORY_LIMIT_MIB, bits=64)),
    })


def gpu_lists(gpu_uuids: Sequence[str]) -> Field:
    """(valid, wild) GPU lists of a node with these GPUs."""
    real = st.sampled_from(list(gpu_uuids))
    return (st.lists(real, min_size=1, max_size=1),
            st.lists(st.one_of(real, st.sampled_from(HOSTILE_STRINGS), st.text(max_size=100)),
                     max_size=10))


def _image(side: int) -> st.SearchStrategy[object]:
    return st.one_of(
        st.lists(st.floats(-3, 3), min_size=3 * side * side, max_size=3 * side * side),
        st.lists(st.one_of(st.floats(), st.integers(), st.booleans(), st.text(max_size=3)),
                 max_size=3 * side * side + 2))


@st.composite
def infer_payloads(draw: st.DrawFn) -> bytes:
    """Bodies a worker decodes: empty, JSON images and token lists of right and wrong
    shapes, absurd numbers, deep nesting, and arbitrary bytes."""
    import json

    choice = draw(st.integers(0, 7))
    if choice in (0, 5):
        return draw(st.sampled_from([b"", b"{}"]))
    if choice == 1:
        return json.dumps({"image": draw(_image(16))}).encode()
    if choice == 2:
        tokens = draw(st.lists(st.one_of(st.integers(-5, 50), st.integers(), st.floats()), max_size=70))
        return json.dumps({"tokens": tokens}).encode()
    if choice == 3:
        depth = draw(st.sampled_from([10, 1000, 100_000]))
        return ("[" * depth + "]" * depth).encode()
    if choice == 4:
        return draw(st.sampled_from([b'{"image": [1e999]}', b'{"image": ' + b"9" * 5000 + b"}",
                                     b'{"tokens": [' + b"9" * 400 + b"]}", b"\xff\xfe", b"null",
                                     b"x" * (limits.PAYLOAD_MAX_BYTES + 1)]))
    return draw(st.binary(max_size=512))


def content_types() -> Field:
    return (st.sampled_from(["", "application/json"]),
            st.one_of(st.sampled_from(["application/json; charset=utf-8", "text/plain", "x" * 129,
                                       "a\nb"]), st.text(max_size=40)))


@st.composite
def garbage(draw: st.DrawFn, valid: st.SearchStrategy[Message]) -> bytes:
    """Bytes that are not a valid request: random, or a valid request with a slice of it
    replaced by random bytes (which reaches deeper into the decoder)."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=draw(st.sampled_from([16, 256, 4096]))))
    data = draw(valid).SerializeToString()
    start = draw(st.integers(0, len(data)))
    end = draw(st.integers(start, len(data)))
    return data[:start] + draw(st.binary(min_size=1, max_size=32)) + data[end:]


@st.composite
def _with_unknown_field(draw: st.DrawFn, valid: st.SearchStrategy[Message]) -> bytes:
    """A valid request followed by a field this version does not know (a newer client's):
    it must be ignored."""
    number = draw(st.integers(100, 2**29 - 1))
    value = draw(st.integers(0, 2**63 - 1))
    return draw(valid).SerializeToString() + _varint(number << 3) + _varint(value)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def requests(valid: st.SearchStrategy[Message]) -> st.SearchStrategy[bytes]:
    """Serialized requests: valid-shaped three times as often as garbage."""
    encoded = valid.map(lambda message: message.SerializeToString())
    return st.one_of(encoded, encoded, _with_unknown_field(valid), garbage(valid))

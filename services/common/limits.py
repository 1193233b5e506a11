"""The finite range of every request field, written down once, and the checks that hold
requests to them.

Every RPC of every service checks what it receives against this table before anything
else looks at it (DESIGN.md, "Errors: out of range versus out of room"): a value outside
what any GPU or function could ever have is `INVALID_ARGUMENT` naming the field, whatever
the reason — 0 or negative where a positive value is needed, subnormal, huge, infinite or
NaN numbers, strings and bytes beyond their length, unknown enum values, ids that are not
safe as a file name, a NATS subject token and a KV key. Values in range that do not fit
the room left now are the caller's business (`RESOURCE_EXHAUSTED`, `FAILED_PRECONDITION`).

The bounds also size what a node publishes: a heartbeat carries at most
`MAX_INSTANCES_PER_NODE` instance reports, each of bounded fields, so it always fits
NATS's default payload limit (`HEARTBEAT_BUDGET_BYTES`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from services.common.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class Range:
    """The closed range [low, high] a numeric field must lie in. When `zero_means` is set,
    0 is accepted too and stands for that default."""

    low: float
    high: float
    unit: str = ""
    zero_means: str = ""

    def describe(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        zero = f" (or 0: {self.zero_means})" if self.zero_means else ""
        return f"[{self.low:g}, {self.high:g}]{unit}{zero}"


# ---- numbers ------------------------------------------------------------------------------

# A share below 1 % of a GPU cannot be enforced within one 10 ms period (100 µs slices).
SHARE = Range(0.01, 1.0, "of one GPU")
# Per GPU. 1 TiB is far beyond any GPU built; it keeps every product and sum finite and
# every byte count within the control page's u64.
MEMORY_MIB = Range(1, 1 << 20, "MiB")
# A quota's memory limit is required: the node's budget counts memory.
MEMORY_LIMIT_MIB = Range(1, 1 << 20, "MiB")
# An SLO under 0.1 ms or over 10 minutes is not one any function could have.
LATENCY_MS = Range(0.1, 600_000, "ms")
PERCENTILE = Range(1, 100, "%", zero_means="99")
GPUS_PER_INSTANCE = Range(1, 8, "GPUs", zero_means="1")
REPLICAS = Range(0, 1000, "instances")
MAX_REPLICAS = Range(1, 1000, "instances", zero_means="inference: max(2 × min, 4); training: max(min, 1)")
BATCH = Range(1, 4096, "samples")
SCALE_COUNT = Range(1, 1000, "instances", zero_means="1")
INVOKE_TIMEOUT_MS = Range(1, 600_000, "ms", zero_means="10 × the function's SLO")
DRAIN_TIMEOUT_MS = Range(1, 600_000, "ms", zero_means="the agent's default")
DECISIONS_LIMIT = Range(1, 10_000, "decisions", zero_means="100")
# The co-scaling policy's parameters (ScalerService.SetPolicy, `CoscaleSettings`); a field
# left unset keeps its default. Cross-field rules (a scale-in margin above the scale-out
# one, limit floor above request floor) are `CoscaleSettings.validated`'s.
POLICY: Mapping[str, Range] = {
    "interval_s": Range(0.1, 3_600, "s"),
    "rate_window_s": Range(1, 3_600, "s"),
    "trend_window_s": Range(1, 3_600, "s"),
    "noise_sigmas": Range(0, 10, "standard deviations"),
    "slo_target": Range(0.5, 0.9999, "of requests"),
    "capacity_headroom": Range(0, 4, "of the rate"),
    "burst_headroom": Range(0, 8, "of the rate"),
    "scale_in_headroom": Range(0, 8, "of the rate"),
    "scale_in_after_s": Range(1, 86_400, "s"),
    "scale_down_after_s": Range(1, 86_400, "s"),
    "min_change": Range(0.01, 0.5, "of one GPU"),
    "training_request_floor": Range(0, 1, "of the deployed request"),
    "training_limit_floor": Range(0, 1, "of the deployed request"),
    "start_share_max": Range(0.01, 1, "of one GPU"),
    "scale_out_patience_s": Range(0, 3_600, "s"),
    "keep_alive_s": Range(1, 86_400, "s"),
}
# ProfileFunction's design rate: requests per second one instance is sized for.
DESIGN_RATE_RPS = Range(0.01, 1_000_000, "requests/s", zero_means="70 % of the capacity at the limit")

# ---- strings, bytes and collections -------------------------------------------------------

NAME_MAX = 63
NAME_PATTERN = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
# Instance and node ids: safe as a file name, a NATS subject token and a JetStream KV key
# (no '/', '.', '*', '>', whitespace; never '..' nor absolute). Function names are a subset.
ID_MAX = 80
SAFE_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,79}$")
MODEL_MAX = 64
GPU_UUID_MAX = 96
# A GPU's product name as NVML reports it (Gpu.model), e.g. "NVIDIA A100-SXM4-40GB".
GPU_MODEL_MAX = 128
REASON_MAX_BYTES = 256
CONTENT_TYPE_MAX = 128
# Below gRPC's default 4 MiB message limit, leaving room for the other fields.
PAYLOAD_MAX_BYTES = 3 * 1024 * 1024
WEIGHTS_URI_MAX = 1024
LABELS_MAX = 32
LABEL_KEY_PATTERN = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_./-]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE_MAX_BYTES = 256
OPTIONS_MAX = 32
OPTION_KEY_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
OPTION_VALUE_MAX_BYTES = 256
INSTANCE_IDS_MAX = 1000

# ---- what a node publishes ----------------------------------------------------------------

# The minimum share bounds how many instances one GPU can guarantee a share to.
MAX_INSTANCES_PER_GPU = math.floor(1 / SHARE.low)
MAX_INSTANCES_PER_NODE = 1000
# Why an instance is in its state; longer messages (a worker's last log line) are cut.
MESSAGE_MAX_BYTES = 256
# host:port a worker or agent is dialled on: a DNS name (253) plus ':65535'.
ADDRESS_MAX = 253 + 6
# NATS's default max_payload is 1 MiB; a heartbeat stays well below it.
NATS_DEFAULT_MAX_PAYLOAD = 1024 * 1024
HEARTBEAT_BUDGET_BYTES = NATS_DEFAULT_MAX_PAYLOAD - 128 * 1024


# ---- checks -------------------------------------------------------------------------------


def check_number(field: str, value: float, limits: Range) -> float:
    """`value` if it is finite and in `limits` (or 0 where 0 means a default)."""
    if limits.zero_means and value == 0:
        return value
    if not math.isfinite(value) or not limits.low <= value <= limits.high:
        raise InvalidArgument(field, f"must be in {limits.describe()}, got {value!r}")
    return value


def check_int(field: str, value: int, limits: Range) -> int:
    """`value` if it is in `limits` (or 0 where 0 means a default)."""
    if limits.zero_means and value == 0:
        return value
    if not limits.low <= value <= limits.high:
        raise InvalidArgument(field, f"must be in {limits.describe()}, got {value}")
    return value


def _printable(field: str, value: str) -> None:
    bad = next((c for c in value if ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0), None)
    if bad is not None:
        raise InvalidArgument(field, f"must not contain control characters (found {ord(bad):#04x})")


def check_text(field: str, value: str, max_bytes: int, *, required: bool = False) -> str:
    """Free text (a reason, a label value): at most `max_bytes` of UTF-8, no control
    characters; empty only when not `required`."""
    if required and not value:
        raise InvalidArgument(field, "must not be empty")
    size = len(value.encode("utf-8", errors="surrogatepass"))
    if size > max_bytes:
        raise InvalidArgument(field, f"must be at most {max_bytes} bytes of UTF-8, got {size}")
    _printable(field, value)
    return value


def check_bytes(field: str, value: bytes, max_bytes: int) -> bytes:
    if len(value) > max_bytes:
        raise InvalidArgument(field, f"must be at most {max_bytes} bytes, got {len(value)}")
    return value


def _shown(value: str, limit: int = 40) -> str:
    """A value quoted in an error message, cut so that the message stays short."""
    return repr(value if len(value) <= limit else value[:limit] + "…")


def check_name(field: str, value: str) -> str:
    """A function name: lowercase letters, digits and '-', starting with a letter, not
    ending with '-', 1 to 63 characters."""
    if not value:
        raise InvalidArgument(field, "must not be empty")
    if not NAME_PATTERN.match(value):
        raise InvalidArgument(
            field, f"{_shown(value)} must be 1-{NAME_MAX} lowercase letters, digits or '-', "
                   "starting with a letter and not ending with '-'")
    return value


def check_optional_name(field: str, value: str) -> str:
    """A function name, or empty (meaning all functions)."""
    return check_name(field, value) if value else value


def check_id(field: str, value: str) -> str:
    """An id that is safe as a file name, a NATS subject token and a KV key."""
    if not value:
        raise InvalidArgument(field, "must not be empty")
    if not SAFE_ID_PATTERN.match(value):
        raise InvalidArgument(
            field, f"{_shown(value)} must be 1-{ID_MAX} letters, digits, '_' or '-', "
                   "starting with a letter or digit")
    return value


def check_enum(field: str, value: int, allowed: Mapping[int, str]) -> int:
    """`value` if it is one of `allowed` (number -> name); unknown and unspecified
    values are refused."""
    if value not in allowed:
        raise InvalidArgument(field, f"must be one of {', '.join(allowed.values())}, got {value}")
    return value


def check_map(field: str, entries: Mapping[str, str], *, max_entries: int,
              key_pattern: re.Pattern[str], value_max_bytes: int) -> None:
    """A string map (labels, runtime options): bounded size, safe keys, bounded values."""
    if len(entries) > max_entries:
        raise InvalidArgument(field, f"must have at most {max_entries} entries, got {len(entries)}")
    for key in sorted(entries):
        if not key_pattern.match(key):
            raise InvalidArgument(f"{field}[{_shown(key)}]",
                                  f"key must match {key_pattern.pattern}")
        check_text(f"{field}.{key}", entries[key], value_max_bytes)


def check_content_type(field: str, value: str) -> str:
    """A MIME type: printable ASCII, at most CONTENT_TYPE_MAX characters."""
    if len(value) > CONTENT_TYPE_MAX or not all(0x20 <= ord(c) < 0x7F for c in value):
        raise InvalidArgument(field, f"must be at most {CONTENT_TYPE_MAX} printable ASCII "
                                     f"characters, e.g. application/json; got {_shown(value)}")
    return value


def check_invoke_body(payload: bytes, content_type: str) -> None:
    """The body of an Invoke (and of the worker's Infer it becomes)."""
    check_bytes("payload", payload, PAYLOAD_MAX_BYTES)
    check_content_type("content_type", content_type)


def bounded_message(text: str, max_bytes: int = MESSAGE_MAX_BYTES) -> str:
    """`text` cut to at most `max_bytes` of UTF-8 (on a character boundary), with control
    characters replaced: what a node publishes about an instance stays small."""
    clean = "".join(c if ord(c) >= 0x20 and not 0x7F <= ord(c) < 0xA0 else " " for c in text)
    encoded = clean.encode("utf-8", errors="replace")
    if len(encoded) <= max_bytes:
        return clean
    return encoded[: max_bytes - 3].decode("utf-8", errors="ignore") + "..."

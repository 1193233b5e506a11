"""Function spec files (YAML or JSON) to `dilu.v1.FunctionSpec`.

Files use the proto's JSON field names; enums may be written short (`kind: inference`,
`runtime: sim`) as well as in full (`FUNCTION_KIND_INFERENCE`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from dilu.v1 import types_pb2
from google.protobuf import json_format

_ENUM_PREFIXES = {"kind": "FUNCTION_KIND_", "runtime": "RUNTIME_"}


class SpecError(ValueError):
    """A spec file that cannot be read as a FunctionSpec."""


def spec_from_dict(data: dict[str, Any]) -> types_pb2.FunctionSpec:
    if "function" in data and isinstance(data["function"], dict):
        data = data["function"]  # accept a whole DeployRequest too
    data = dict(data)
    for field, prefix in _ENUM_PREFIXES.items():
        value = data.get(field)
        if isinstance(value, str) and not value.startswith(prefix):
            data[field] = prefix + value.upper().replace("-", "_")
    try:
        return json_format.ParseDict(data, types_pb2.FunctionSpec())
    except json_format.ParseError as error:
        raise SpecError(str(error)) from error


def load_spec(path: Path) -> types_pb2.FunctionSpec:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise SpecError(f"cannot read {path}: {error}") from error
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of FunctionSpec fields")
    return spec_from_dict(data)

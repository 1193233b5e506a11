from __future__ import annotations

from pathlib import Path

import pytest
from dilu.v1 import types_pb2

from services.cli.main import build_parser
from services.cli.specs import SpecError, load_spec, spec_from_dict
from services.cli.tables import status_report
from services.common.tables import render
from services.scheduler.validation import validate_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_spec_loads_and_validates(path: Path):
    validate_spec(load_spec(path))


def test_short_and_full_enum_names_both_work():
    short = spec_from_dict({"name": "x", "kind": "llm-inference", "runtime": "torch"})
    full = spec_from_dict({"function": {"name": "x", "kind": "FUNCTION_KIND_LLM_INFERENCE",
                                        "runtime": "RUNTIME_TORCH"}})
    assert short == full
    assert short.kind == types_pb2.FUNCTION_KIND_LLM_INFERENCE


def test_unknown_fields_are_reported(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsm_share: 0.5\n")
    with pytest.raises(SpecError, match="sm_share"):
        load_spec(bad)


def test_render_aligns_columns():
    assert render(("A", "LONG"), [("xxx", 1)]).splitlines() == ["A    LONG", "xxx  1"]


def test_status_report_names_gpus_by_node_and_index():
    node = types_pb2.Node(id="n1", gpus=[types_pb2.Gpu(uuid="GPU-1", index=0, model="A100",
                                                        memory_total_mib=40960)])
    view = types_pb2.NodeView(node=node, state=types_pb2.NODE_STATE_READY, allocations=[
        types_pb2.GpuAllocation(gpu_uuid="GPU-1", sm_requested=0.3, instance_ids=["f-1"])])
    function = types_pb2.Function(spec=types_pb2.FunctionSpec(name="f", model="m"))
    function.status.instances.add(id="f-1", state=types_pb2.INSTANCE_STATE_READY,
                                  gpu_uuids=["GPU-1"])
    report = status_report([function], [view])
    assert "n1/gpu0" in report and "ready" in report and "0.30" in report


def test_scale_needs_exactly_one_direction():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["scale", "f"])
    args = build_parser().parse_args(["scale", "f", "--in", "2"])
    assert args.into == 2

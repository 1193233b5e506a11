"""How `dilu status` shows a function's back-off, and its JSON field names."""

from __future__ import annotations

import json

from dilu.v1 import types_pb2

from services.cli.tables import status_json, status_report
from services.common.timestamps import now_timestamp

S = types_pb2


def degraded() -> types_pb2.Function:
    function = types_pb2.Function(spec=types_pb2.FunctionSpec(name="oom", model="resnet152"))
    status = function.status
    status.desired_replicas = 1
    status.state = S.FUNCTION_STATE_DEGRADED
    status.consecutive_failures = 6
    status.last_error = "worker exited with status 1:\n  " + "x" * 100 + " CUDA out of memory"
    status.next_retry_at.CopyFrom(now_timestamp(1012.2))
    return function


def test_the_functions_table_shows_state_failures_next_retry_and_the_last_error():
    report = status_report([degraded()], [], now_s=1000.0)
    header, row = report.split("\n\n")[0].splitlines()[1:3]
    assert header.split() == ["NAME", "KIND", "MODEL", "READY", "SLO", "STATE", "FAILURES",
                              "NEXT", "RETRY", "LAST", "ERROR"]
    assert "degraded" in row and " 6 " in row and "in 12 s" in row
    assert "worker exited with status" in row and row.endswith("xxx CUDA out of memory")
    assert "x" * 60 not in row  # the middle of a long error is cut


def test_status_json_uses_the_api_field_names():
    printed = json.loads(status_json([degraded()]))
    status = printed["functions"][0]["status"]
    assert status["desired_replicas"] == 1
    assert status["state"] == "FUNCTION_STATE_DEGRADED"
    assert status["consecutive_failures"] == 6
    assert "next_retry_at" in status and "nextRetryAt" not in status

"""Protobuf timestamps from and to epoch seconds."""

from __future__ import annotations

import time

from google.protobuf.timestamp_pb2 import Timestamp


def now_timestamp(now_s: float | None = None) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int((time.time() if now_s is None else now_s) * 1e9))
    return stamp

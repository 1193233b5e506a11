"""The standing fuzz suite: every public RPC of every service, the worker's Infer included,
driven with hypothesis-generated requests (valid-shaped and garbage) against one real stack
started for the module. Asserts no crash, no hang, no INTERNAL or UNKNOWN, no traceback in
any log, and the functions and instances seeded before fuzzing unchanged afterwards.

Deterministic in CI (`derandomize`); `bench/fuzz.py --minutes N` runs it longer with random
seeds. To cover a new RPC, add a row to `tests/fuzz/rpcs.py`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dilu.v1 import node_agent_pb2, profiler_pb2, scaler_pb2, scheduler_pb2, worker_pb2

from tests.fuzz.harness import FuzzStack, fuzz_rounds
from tests.fuzz.rpcs import RPCS

pytestmark = pytest.mark.integration

ROUNDS = 5
EXAMPLES_PER_ROUND = 16  # 80 requests per RPC
MIN_CALLS_PER_RPC = 50


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzStack]:
    root: Path = tmp_path_factory.mktemp("fuzz")
    fuzzed = FuzzStack(root)
    try:
        yield fuzzed.start()
    finally:
        fuzzed.close()
        for log in sorted((root / "logs").glob("*.log")):
            print(f"----- {log.name}\n{log.read_text(errors='replace')[-3000:]}")


def test_every_rpc_of_every_service_has_a_row_in_the_fuzz_table():
    services = [scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"],
                node_agent_pb2.DESCRIPTOR.services_by_name["NodeAgentService"],
                profiler_pb2.DESCRIPTOR.services_by_name["ProfilerService"],
                scaler_pb2.DESCRIPTOR.services_by_name["ScalerService"],
                worker_pb2.DESCRIPTOR.services_by_name["WorkerService"]]
    declared = {f"/{s.full_name}/{m.name}" for s in services for m in s.methods}
    assert declared == {rpc.path for rpc in RPCS}


@pytest.mark.timeout(240)
def test_fuzzing_every_rpc_breaks_nothing(stack: FuzzStack):
    results = fuzz_rounds(stack, RPCS, ROUNDS, EXAMPLES_PER_ROUND)
    print("\ncalls per RPC:")
    for name, result in results.items():
        print(f"  {name:<32} {result.calls:>4} calls, {len(result.failures)} failures "
              f"({result.summary()})")
    failures = [f for r in results.values() for f in r.failures] + stack.check()
    assert not failures, "\n".join(failures[:20])
    short = {name: r.calls for name, r in results.items() if r.calls < MIN_CALLS_PER_RPC}
    assert not short, f"RPCs reached fewer than {MIN_CALLS_PER_RPC} times: {short}"

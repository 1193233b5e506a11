"""The standing fuzz suite against a stack in secure mode: every RPC of every service, the
workers' Infer included, first with valid credentials (the operator's token; the scheduler's
certificate for workers), then with none, when every answer must be a refusal
(UNAUTHENTICATED; a worker refuses the handshake). Either way: no crash, no hang, no
INTERNAL or UNKNOWN, no traceback in any log, and the seeded functions unchanged.

Fewer cases per RPC than `test_fuzz` (which fuzzes the same requests in insecure mode):
what this adds is the authorization layer in front of them. `bench/fuzz.py --secure` runs
it longer.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz.harness import FuzzStack, fuzz_rounds
from tests.fuzz.rpcs import RPCS

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzStack]:
    root: Path = tmp_path_factory.mktemp("fuzz-secure")
    fuzzed = FuzzStack(root, secure=True)
    try:
        yield fuzzed.start()
    finally:
        fuzzed.close()
        for log in sorted((root / "logs").glob("*.log")):
            print(f"----- {log.name}\n{log.read_text(errors='replace')[-3000:]}")


def _report(results: dict) -> list[str]:  # type: ignore[type-arg]
    for name, result in results.items():
        print(f"  {name:<32} {result.calls:>4} calls, {len(result.failures)} failures "
              f"({result.summary()})")
    return [f for r in results.values() for f in r.failures]


@pytest.mark.timeout(240)
def test_fuzzing_a_secure_stack_with_valid_credentials_breaks_nothing(stack: FuzzStack):
    stack.authenticated = True
    failures = _report(fuzz_rounds(stack, RPCS, rounds=3, examples=10)) + stack.check()
    assert not failures, "\n".join(failures[:20])


@pytest.mark.timeout(240)
def test_fuzzing_a_secure_stack_without_credentials_is_refused_every_time(stack: FuzzStack):
    stack.authenticated = False
    results = fuzz_rounds(stack, RPCS, rounds=1, examples=8, first_seed=100)
    failures = _report(results) + stack.check()
    assert not failures, "\n".join(failures[:20])
    assert all(r.calls > 0 and set(r.codes) <= {"UNAUTHENTICATED", "UNAVAILABLE"}
               for r in results.values())
    audit = (stack.root / "logs" / "scheduler.log").read_text()
    assert "refused UNAUTHENTICATED /dilu.v1.SchedulerService/Deploy caller=anonymous" in audit

"""A longer run of the standing fuzz suite: every public RPC of every service, the worker's
Infer included, driven with generated requests (valid-shaped and garbage) against one real
stack for N minutes, with fresh random seeds each round. Prints and writes the cases tried
per RPC (with the status codes they got) and the failures found: an INTERNAL or UNKNOWN
answer, a call with no answer within its deadline, a process of the stack that died, a
traceback in any service's or worker's log, or a seeded function or instance that changed.
The target is 0 failures.

    .venv/bin/python bench/fuzz.py --minutes 10 [--json FILE] [--seed N] [--logs DIR]
    .venv/bin/python bench/fuzz.py --secure valid   # a stack in secure mode, the operator's token
    .venv/bin/python bench/fuzz.py --secure none    # ... and no credentials: every call refused
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]),
                str(Path(__file__).resolve().parents[1] / "gen" / "python")]

from tests.fuzz.harness import FuzzStack, RpcResult, fuzz_rounds  # noqa: E402
from tests.fuzz.rpcs import RPCS  # noqa: E402

EXAMPLES_PER_ROUND = 25


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to fuzz")
    parser.add_argument("--json", help="write the figures here as JSON too")
    parser.add_argument("--logs", help="copy the stack's logs here when something failed")
    parser.add_argument("--secure", choices=("valid", "none"), default=None,
                        help="fuzz a stack in secure mode, with valid credentials or none "
                             "(then every answer must be UNAUTHENTICATED, or UNAVAILABLE from a "
                             "worker's handshake)")
    parser.add_argument("--seed", type=int, default=None,
                        help="first round's seed (default: random); rounds use seed, seed+1, ...")
    args = parser.parse_args()
    first_seed = args.seed if args.seed is not None else random.randrange(2**32)
    started = time.monotonic()
    results: dict[str, RpcResult] = {rpc.name: RpcResult() for rpc in RPCS}
    invariants: list[str] = []
    round_index = 0
    with tempfile.TemporaryDirectory(prefix="dilu-fuzz-") as tmp:
        stack = FuzzStack(Path(tmp), secure=args.secure is not None,
                          authenticated=args.secure != "none")
        try:
            stack.start()
            print(f"fuzzing {len(RPCS)} RPCs for {args.minutes:g} min (first seed {first_seed})",
                  flush=True)
            until = started + args.minutes * 60
            while time.monotonic() < until:
                fuzz_rounds(stack, RPCS, 1, EXAMPLES_PER_ROUND, first_seed=first_seed + round_index,
                            results=results)
                round_index += 1
                tried = sum(r.calls for r in results.values())
                found = sum(len(r.failures) for r in results.values())
                print(f"  round {round_index}: {tried} cases, {found} failures, "
                      f"{(time.monotonic() - started) / 60:.1f} min", flush=True)
            invariants = stack.check()
        finally:
            stack.close()
            failed = invariants or any(r.failures for r in results.values())
            if args.logs and failed:
                shutil.copytree(tmp, args.logs, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("jetstream", "*.ctl", "*.stats"))
    elapsed_s = time.monotonic() - started
    failures = [f for r in results.values() for f in r.failures] + invariants
    print(f"\n{'RPC':<34} {'cases':>7} {'failures':>8}  answers")
    for name, result in results.items():
        print(f"{name:<34} {result.calls:>7} {len(result.failures):>8}  {result.summary()}")
    total = sum(r.calls for r in results.values())
    print(f"{'total':<34} {total:>7} {len(failures):>8}  in {elapsed_s / 60:.1f} min, "
          f"{round_index} rounds from seed {first_seed}")
    for failure in failures[:50]:
        print(f"FAILURE: {failure[:2000]}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "minutes": round(elapsed_s / 60, 2), "first_seed": first_seed, "rounds": round_index,
            "secure": args.secure or "off",
            "cases": total, "failures": len(failures),
            "per_rpc": {name: {"cases": r.calls, "failures": len(r.failures), "answers": dict(r.codes)}
                        for name, r in results.items()},
            "failure_details": failures[:200],
            "invariant_failures": invariants}, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The Python token bucket and the shim's `limiter.c` are one algorithm: the same random
sequences of admissions and completions get the same answers and leave the same state."""

from __future__ import annotations

import ctypes
import random

import pytest

from services.node_agent.token_bucket import BucketParams, TokenBucket
from tests.shim import cbuild

LIMITER = cbuild.SHIM_INCLUDE / "limiter.c"


class _Limiter(ctypes.Structure):
    _fields_ = [("tat_ns", ctypes.c_uint64), ("inflight_ns", ctypes.c_int64),
                ("priority", ctypes.c_uint64)]


class _Quota(ctypes.Structure):
    _fields_ = [("share_ppm", ctypes.c_uint32), ("paused", ctypes.c_uint32),
                ("burst_ns", ctypes.c_uint64), ("inflight_cap_ns", ctypes.c_uint64)]


@pytest.fixture(scope="module")
def limiter_c(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    if cbuild.find_compiler() is None:
        pytest.skip("no C compiler ($CC or cc) on PATH")
    library = cbuild.build_shared_object(LIMITER, tmp_path_factory.mktemp("limiter") / "limiter.so")
    lib = ctypes.CDLL(str(library))
    lib.dilu_limiter_admit.restype = ctypes.c_uint64
    lib.dilu_limiter_admit.argtypes = [ctypes.POINTER(_Limiter), ctypes.POINTER(_Quota),
                                       ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64]
    lib.dilu_limiter_complete.restype = None
    lib.dilu_limiter_complete.argtypes = [ctypes.POINTER(_Limiter), ctypes.POINTER(_Quota),
                                          ctypes.c_uint64, ctypes.c_uint64]
    return lib


def _random_params(rng: random.Random) -> BucketParams:
    share = rng.choice([0, 1, 999, 10_000, 123_457, 300_000, 500_000, 999_999, 1_000_000, 1_500_000])
    return BucketParams(share_ppm=share, burst_ns=rng.choice([0, 1, 100_000, 3_000_000, 10_000_000]),
                        inflight_cap_ns=rng.choice([1_000, 5_000_000, 10**12]),
                        paused=rng.random() < 0.05)


@pytest.mark.parametrize("seed", range(20))
def test_python_and_c_give_the_same_answers(limiter_c: ctypes.CDLL, seed: int) -> None:
    rng = random.Random(seed)
    python = TokenBucket()
    c_state = _Limiter(0, 0, 0)
    now = rng.randrange(10**12)
    pending: list[int] = []
    params = _random_params(rng)
    for _ in range(3000):
        if rng.random() < 0.05:
            params = _random_params(rng)
        quota = _Quota(params.share_ppm, int(params.paused), params.burst_ns, params.inflight_cap_ns)
        now += rng.choice([0, 1, 1_000, 50_000, 2_000_000, 10_000_000, 3 * 10**9])
        if pending and rng.random() < 0.4:
            estimate = pending.pop(rng.randrange(len(pending)))
            actual = max(0, estimate + rng.choice([0, 0, -estimate, 1_000, -1_000, 5_000_000]))
            python.complete(estimate, actual, params)
            limiter_c.dilu_limiter_complete(ctypes.byref(c_state), ctypes.byref(quota), estimate,
                                            actual)
        else:
            cost = rng.choice([1, 100_000, 2_999_999, 3_000_000, 10_000_000, 40_000_000])
            answer = python.admit(now, cost, params)
            assert answer == limiter_c.dilu_limiter_admit(ctypes.byref(c_state), ctypes.byref(quota),
                                                          now, cost, 0)
            if answer == 0:
                pending.append(cost)
        assert (python.tat_ns, python.inflight_ns) == (c_state.tat_ns, c_state.inflight_ns)

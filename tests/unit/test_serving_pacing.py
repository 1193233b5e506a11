"""The closed-form pacing of the serving simulator against the gate stepped launch by launch."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.node_agent.pages import control_for
from services.node_agent.token_bucket import PPM, BucketParams, TokenBucket
from services.node_agent.worker.gate import bucket_params
from services.simulator.serving.pacing import PacedRun, step_through

MS = 1_000_000


def params(share: float) -> BucketParams:
    return bucket_params(control_for(share, share, share, 0))


shares = st.sampled_from([0.01, 0.05, 0.1, 0.2, 0.25, 0.3, 0.333, 0.45, 0.5, 0.6, 0.75, 0.9,
                          0.999, 1.0])


@st.composite
def runs(draw: st.DrawFn) -> tuple[int, int, int, BucketParams]:
    share = draw(shares)
    start = draw(st.integers(min_value=0, max_value=10_000 * MS))
    # The bucket as a previous run left it: full (tat in the past) or owing up to 50 ms.
    tat = max(0, start + draw(st.integers(min_value=-200 * MS, max_value=50 * MS)))
    work = draw(st.integers(min_value=1, max_value=400 * MS))
    return tat, start, work, params(share)


def _all_wait_ends(run: PacedRun) -> list[int]:
    return run.wait_ends()


def _check_queries(run: PacedRun, wait_ends: list[int], probes: list[int]) -> None:
    for t in probes:
        before = [e for e in wait_ends if e <= t]
        after = [e for e in wait_ends if e > t]
        assert run.last_wait_end(t) == (before[-1] if before else None), t
        assert run.next_wait_end(t) == (after[0] if after else None), t


@settings(max_examples=400, deadline=None)
@given(runs(), st.lists(st.integers(min_value=-5 * MS, max_value=2_000 * MS), max_size=8))
def test_a_run_matches_the_gate_stepped_launch_by_launch(
        run_args: tuple[int, int, int, BucketParams], offsets: list[int]) -> None:
    tat, start, work, page = run_args
    bucket = TokenBucket(tat)
    launches, wait_ends = step_through(bucket, start, work, page)
    run = PacedRun(tat, start, work, page)
    assert [run.launch(k) for k in range(run.launches)] == launches
    assert run.end_ns == launches[-1].end_ns
    assert run.tat_ns == bucket.tat_ns
    assert run.throttled_ns == sum(one.admitted_ns - one.asked_ns for one in launches)
    assert _all_wait_ends(run) == wait_ends
    _check_queries(run, wait_ends, [start + o for o in offsets] + [run.end_ns, *wait_ends])


@settings(max_examples=400, deadline=None)
@given(runs(), shares, st.integers(min_value=0, max_value=600 * MS),
       st.lists(st.integers(min_value=-5 * MS, max_value=2_000 * MS), max_size=8))
def test_a_new_share_mid_run_matches_the_gate_that_rereads_its_page(
        run_args: tuple[int, int, int, BucketParams], new_share: float, change_after: int,
        offsets: list[int]) -> None:
    tat, start, work, page = run_args
    change = start + change_after
    new_page = params(new_share)
    bucket = TokenBucket(tat)
    launches, wait_ends = step_through(bucket, start, work, page, (change, new_page))
    run = PacedRun(tat, start, work, page)
    resumed = run.resume(change, new_page)
    if resumed is None or resumed is run:
        assert run.end_ns <= change or run.launch(run.launches - 1).admitted_ns < change
        assert [run.launch(k) for k in range(run.launches)] == launches
        return
    assert resumed.end_ns == launches[-1].end_ns
    assert resumed.tat_ns == bucket.tat_ns
    # Launches that asked before the change are the old run's; the rest are the new one's.
    old = [run.launch(k) for k in range(run.launches) if run.launch(k).asked_ns < change]
    new = [resumed.launch(k) for k in range(resumed.launches)]
    if new and old and new[0].size_ns == old[-1].size_ns and new[0].asked_ns > old[-1].asked_ns \
            and resumed.wait_end_at_start:
        # A waiting launch carried over: one launch, asked before the change.
        new[0] = type(new[0])(old[-1].asked_ns, new[0].admitted_ns, new[0].size_ns)
        old = old[:-1]
    elif old and old[-1].end_ns > change and old[-1].admitted_ns < change:
        pass  # the launch that was running finished as it began
    assert old + new == launches
    combined = [e for e in wait_ends if e < resumed.start_ns]
    assert combined + _all_wait_ends(resumed) == wait_ends
    _check_queries(resumed, _all_wait_ends(resumed),
                   [resumed.start_ns + o for o in offsets] + [resumed.end_ns])


def test_worked_numbers_of_the_docstring() -> None:
    # bert-base batch 1: 15 ms of whole-GPU time.
    work = 15 * MS
    assert PacedRun(0, 10**12, work, params(0.5)).end_ns - 10**12 == 25 * MS  # after a gap
    assert PacedRun(0, 10**12, work, params(0.2)).end_ns - 10**12 == 66 * MS
    # Back to back (the bucket owes what the previous batch earned): work / share.
    start = 10**12
    first = PacedRun(0, start, work, params(0.5))
    again = PacedRun(first.tat_ns, first.end_ns, work, params(0.5))
    assert again.end_ns - first.end_ns == 30 * MS


def test_a_whole_gpu_runs_the_work_at_once() -> None:
    run = PacedRun(5 * 10**9, 10**9, 37 * MS, params(1.0))
    assert run.params.share_ppm == PPM
    assert run.end_ns == 10**9 + 37 * MS
    assert run.throttled_ns == 0 and run.final_wait_end() is None

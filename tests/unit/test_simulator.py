"""The cluster simulator (`services/simulator`): trace loading, synthetic traces, replay,
the unsplit peak bound and the CLI."""

from __future__ import annotations

import ast
import itertools
import os
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from services.cli.main import main as dilu_main
from services.scheduler.placement import POLICIES, InstanceShape, WorkloadKind, make_placement
from services.simulator.__main__ import main as simulate_main
from services.simulator.bound import unsplit_peak_bound
from services.simulator.replay import ClusterSpec, replay
from services.simulator.synthetic import Mix, generate
from services.simulator.trace import Event, TraceError, bundled_trace, load_trace

GIB = 1024
TINY = ClusterSpec(nodes=2, gpus_per_node=2, gpu_memory_mib=40 * GIB)
ONE_NODE = ClusterSpec(nodes=1, gpus_per_node=4, gpu_memory_mib=40 * GIB)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

INFERENCE, LLM, TRAINING = WorkloadKind.INFERENCE, WorkloadKind.LLM_INFERENCE, WorkloadKind.TRAINING


def shape(name: str, request: float = 0.3, limit: float = 0.5, memory_gb: float = 8, gpus: int = 1,
          kind: WorkloadKind = INFERENCE) -> InstanceShape:
    return InstanceShape(function=name, kind=kind, sm_request=request, sm_limit=limit,
                         memory_mib=int(memory_gb * GIB), gpus=gpus)


def start(t: float, s: InstanceShape) -> Event:
    return Event(float(t), True, s.function, s)


def delete(t: float, s: InstanceShape) -> Event:
    return Event(float(t), False, s.function, s)


def raw_rows(instances: int) -> list[dict]:
    text = bundled_trace(instances).read_text()
    return [ast.literal_eval(line) for line in text.splitlines() if line.strip()]


# ---- load_trace on the bundled traces --------------------------------------------------


@pytest.fixture(scope="module")
def trace100() -> list[Event]:
    return load_trace(bundled_trace(100), llm_shards=1)


def test_bundled_100_counts_and_times(trace100: list[Event]):
    assert len(trace100) == 170
    assert sum(e.start for e in trace100) == 100
    times = [e.time_s for e in trace100]
    assert times[0] == 0.0
    assert all(b >= a for a, b in itertools.pairwise(times))
    # One start per second, as ORIGIN.md says.
    assert [e.time_s for e in trace100 if e.start] == [float(n) for n in range(100)]


def test_bundled_100_matches_the_raw_file(trace100: list[Event]):
    rows = raw_rows(100)
    assert len(rows) == len(trace100)
    kinds = {"inference": INFERENCE, "llm-inference": LLM, "training": TRAINING}
    for row, event in zip(rows, trace100, strict=True):
        spec = row["Instance"]
        assert event.start == (row["Action"] == "start")
        assert event.instance == spec["service_name"] == event.shape.function
        assert event.shape.kind is kinds[spec["type"]]
        assert event.shape.gpus == spec["gpu_num"]
        assert event.shape.memory_mib == max(spec["memory"]) * 1024
        assert event.shape.sm_request == spec["sm_requests"]
        assert event.shape.sm_limit == spec["sm_limits"]
        assert event.shape.max_shards == 1


def test_bundled_100_kinds_gpus_and_memory(trace100: list[Event]):
    started = [e.shape for e in trace100 if e.start]
    assert Counter(s.kind for s in started) == {INFERENCE: 60, LLM: 20, TRAINING: 20}
    assert {s.gpus for s in started} == {1, 2, 4}
    assert {s.gpus for s in started if s.kind is not TRAINING} == {1}
    assert {s.gpus for s in started if s.kind is TRAINING} == {2, 4}
    # GB -> MiB: every memory is a whole number of GiB within the documented ranges.
    for s in started:
        assert s.memory_mib % 1024 == 0
        gb = s.memory_mib // 1024
        low, high = {INFERENCE: (3, 10), LLM: (20, 30), TRAINING: (25, 40)}[s.kind]
        assert low <= gb <= high, s


def test_bundled_100_every_delete_follows_its_start(trace100: list[Event]):
    started: dict[str, float] = {}
    deleted: set[str] = set()
    for event in trace100:
        if event.start:
            assert event.instance not in started
            started[event.instance] = event.time_s
        else:
            assert event.instance in started, event.instance
            assert event.instance not in deleted
            assert event.time_s > started[event.instance]
            deleted.add(event.instance)
    assert len(deleted) == 70


@pytest.mark.parametrize("shards", [2, 3])
def test_llm_shards_only_mark_llm_inference(shards: int):
    events = load_trace(bundled_trace(100), llm_shards=shards)
    plain = load_trace(bundled_trace(100), llm_shards=1)
    for event, same in zip(events, plain, strict=True):
        if event.shape.kind is LLM:
            assert event.shape.max_shards == shards
        else:
            assert event.shape.max_shards == 1
            assert event.shape == same.shape
    assert any(e.shape.kind is LLM for e in events)


def test_bundled_trace_unknown_count_lists_known_ones():
    with pytest.raises(FileNotFoundError) as caught:
        bundled_trace(7)
    message = str(caught.value)
    assert "7" in message
    assert "[100, 200, 400, 800, 1600, 3200]" in message


# ---- load_trace errors -------------------------------------------------------------------

GOOD = ("{'Time': '2024-06-19 15:46:09', 'Action': 'start', 'Instance': {'service_name': 'inf-a', "
        "'type': 'inference', 'gpu_num': 1, 'sm_requests': 0.3, 'sm_limits': 0.5, 'memory': [4]}}")


def bad_line(**changes: object) -> str:
    row = ast.literal_eval(GOOD)
    row["Time"] = "2024-06-19 15:46:10"
    for key, value in changes.items():
        if key == "Action":
            row["Action"] = value
        else:
            row["Instance"][key] = value
    return repr(row)


def trace_error(tmp_path: Path, text: str) -> tuple[Path, str]:
    """Load a trace that must fail; its path and the error's message."""
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(TraceError) as caught:
        load_trace(path)
    return path, str(caught.value)


@pytest.mark.parametrize(("line", "problem"), [
    (bad_line(Action="stop"), r"Action must be start or delete, not 'stop'"),
    (bad_line(type="gaming"), r"Instance\.type must be one of .*'gaming'"),
    (bad_line(gpu_num=2, memory=[10]), r"Instance\.memory needs one entry per GPU \(2\), has 1"),
    (bad_line(gpu_num=1, memory=[10, 10]), r"one entry per GPU \(1\), has 2"),
    (bad_line(sm_requests=0.7, sm_limits=0.5), r"sm_requests <= sm_limits, got 0\.7 and 0\.5"),
    (bad_line(sm_requests=0.0, sm_limits=0.5), r"0 < sm_requests"),
])
def test_trace_error_names_file_line_and_problem(tmp_path: Path, line: str, problem: str):
    # A blank line counts: the bad line is line 3 of the file.
    path, message = trace_error(tmp_path, f"{GOOD}\n\n{line}\n")
    assert message.startswith(f"{path}:3: ")
    assert re.search(problem, message), message


@pytest.mark.parametrize("line", [
    "{'Time': '2024-06-19 15:46:10', 'Action': ",   # syntax error
    "this is not python",
    "['start', 'delete']",                          # a literal, not a dict
    "42",
    "{'Time': '2024-06-19 15:46:10', 'Action': 'start'}",  # no Instance
    "{'Action': 'start', 'Instance': {}}",                   # nothing in Instance
])
def test_trace_error_on_lines_that_are_not_trace_rows(tmp_path: Path, line: str):
    path, message = trace_error(tmp_path, f"{GOOD}\n{line}\n{GOOD}\n")
    assert message.startswith(f"{path}:2: ")
    assert len(message) > len(f"{path}:2: ") + 3  # says something about the problem


def test_trace_error_names_a_missing_key(tmp_path: Path):
    path = tmp_path / "nokey.txt"
    path.write_text("{'Time': '2024-06-19 15:46:10', 'Action': 'start'}\n")
    with pytest.raises(TraceError, match=r"nokey\.txt:1: .*Instance"):
        load_trace(path)


def test_trace_error_is_a_value_error():
    assert issubclass(TraceError, ValueError)


def test_load_trace_times_from_the_first_line(tmp_path: Path):
    second = GOOD.replace("15:46:09", "15:48:09").replace("inf-a", "inf-b")
    gone = second.replace("'start'", "'delete'").replace("15:48:09", "15:50:00")
    path = tmp_path / "ok.txt"
    path.write_text(f"\n{GOOD}\n{second}\n\n{gone}\n")
    events = load_trace(path)
    assert [(e.time_s, e.start, e.instance) for e in events] == [
        (0.0, True, "inf-a"), (120.0, True, "inf-b"), (231.0, False, "inf-b")]
    assert events[0].shape == InstanceShape("inf-a", INFERENCE, 0.3, 0.5, 4 * 1024, 1, 1)


def test_load_trace_uneven_memory_takes_the_largest(tmp_path: Path):
    path = tmp_path / "uneven.txt"
    path.write_text(bad_line(type="training", gpu_num=2, memory=[20, 30.5]) + "\n")
    (event,) = load_trace(path, llm_shards=4)
    assert event.shape.memory_mib == int(30.5 * 1024)
    assert event.shape.gpus == 2
    assert event.shape.max_shards == 1


# ---- synthetic traces --------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic4000() -> list[Event]:
    return generate(4000, seed=11)


def test_generate_is_deterministic_per_seed():
    assert generate(300, seed=5) == generate(300, seed=5)
    assert generate(300, seed=5) != generate(300, seed=6)
    assert generate(300) == generate(300, seed=0)


def test_generate_one_start_per_second_and_deletes_after_starts(synthetic4000: list[Event]):
    events = synthetic4000
    starts = [e for e in events if e.start]
    assert [e.time_s for e in starts] == [float(n) for n in range(4000)]
    assert len({e.instance for e in starts}) == 4000
    times = [e.time_s for e in events]
    assert times == sorted(times)
    began = {e.instance: e.time_s for e in starts}
    seen: set[str] = set()
    lifetimes: dict[WorkloadKind, set[float]] = {INFERENCE: set(), LLM: set(), TRAINING: set()}
    for e in events:
        if e.start:
            seen.add(e.instance)
            continue
        assert e.instance in seen  # the start came first in the list
        lifetimes[e.shape.kind].add(e.time_s - began[e.instance])
    assert lifetimes[INFERENCE] == {60.0, 120.0, 180.0}
    assert lifetimes[LLM] == {60.0, 120.0, 180.0}
    assert lifetimes[TRAINING] <= set(map(float, range(600, 901)))
    assert min(lifetimes[TRAINING]) >= 600 and max(lifetimes[TRAINING]) <= 900
    assert len(lifetimes[TRAINING]) > 3


def test_generate_start_before_delete_at_the_same_second():
    events = generate(400, seed=2)
    for a, b in itertools.pairwise(events):
        if a.time_s == b.time_s:
            assert a.start or not b.start  # never a delete then a start at one second
    assert any(a.time_s == b.time_s for a, b in itertools.pairwise(events))


def test_generate_mix_shares_near_the_default(synthetic4000: list[Event]):
    starts = [e.shape for e in synthetic4000 if e.start]
    deleted = {e.instance for e in synthetic4000 if not e.start}
    kinds = Counter(s.kind for s in starts)
    mix = Mix()
    assert kinds[INFERENCE] / 4000 == pytest.approx(mix.inference, abs=0.04)
    assert kinds[LLM] / 4000 == pytest.approx(mix.llm_inference, abs=0.03)
    assert kinds[TRAINING] / 4000 == pytest.approx(mix.training, abs=0.03)
    for kind, share in ((INFERENCE, mix.inference_deleted), (LLM, mix.inference_deleted),
                        (TRAINING, mix.training_deleted)):
        of_kind = [s.function for s in starts if s.kind is kind]
        gone = sum(name in deleted for name in of_kind) / len(of_kind)
        assert gone == pytest.approx(share, abs=0.06), kind
    # About 70 % of all instances are deleted, as in the paper's traces.
    assert len(deleted) / 4000 == pytest.approx(0.7, abs=0.04)


def test_generate_follows_a_custom_mix_exactly_where_it_is_certain():
    mix = Mix(inference=0.5, llm_inference=0.0, training=0.5, inference_deleted=1.0, training_deleted=0.0)
    events = generate(600, seed=4, mix=mix)
    starts = [e.shape for e in events if e.start]
    deleted = {e.instance for e in events if not e.start}
    assert {s.kind for s in starts} == {INFERENCE, TRAINING}
    assert deleted == {s.function for s in starts if s.kind is INFERENCE}
    assert 0.4 < sum(s.kind is TRAINING for s in starts) / 600 < 0.6
    only = generate(50, seed=1, mix=Mix(inference=0.0, llm_inference=1.0, training=0.0))
    assert {e.shape.kind for e in only} == {LLM}


def test_generate_shapes_within_documented_ranges(synthetic4000: list[Event]):
    ranges = {  # SM request, memory GB per GPU, GPUs (data/ORIGIN.md)
        INFERENCE: ((0.2, 0.4), (3, 10), {1}),
        LLM: ((0.4, 0.6), (20, 30), {1}),
        TRAINING: ((0.4, 0.8), (25, 40), {2, 4}),
    }
    seen: dict[WorkloadKind, set[int]] = {k: set() for k in ranges}
    for s in (e.shape for e in synthetic4000 if e.start):
        (lo, hi), (mlo, mhi), gpus = ranges[s.kind]
        assert lo - 1e-9 <= s.sm_request <= hi + 1e-9, s
        assert s.memory_mib % GIB == 0
        assert mlo <= s.memory_mib // GIB <= mhi, s
        assert s.gpus in gpus, s
        assert s.sm_request <= s.sm_limit <= 1.0, s
        # Limits exceed requests by 0.2-0.58 (never beyond one GPU).
        assert 0.2 - 1e-9 <= s.sm_limit - s.sm_request <= 0.58 + 1e-9, s
        assert s.max_shards == 1
        assert s.function.startswith("synthetic-")
        seen[s.kind].add(s.gpus)
    assert seen[TRAINING] == {2, 4}


# ---- replay ------------------------------------------------------------------------------

A = shape("a", 0.3, 0.5, 8)
B = shape("b", 0.3, 0.5, 8)
C = shape("c", 0.5, 0.7, 30, gpus=2, kind=TRAINING)
D = shape("d", 0.3, 0.5, 8)
HANDMADE = [start(0, A), start(1, B), start(2, C), start(3, D),
            delete(4, B), delete(5, D), delete(6, A), delete(7, C)]


def test_replay_first_fit_exact_series():
    result = replay(HANDMADE, make_placement("first-fit"), TINY, fgd_every=1)
    # a, b and d share node-0's gpu0 (requests 0.9, limits 1.5); c takes node-1 whole
    # because node-0 has only one GPU left that admits it.
    assert result.active_gpus == [1, 1, 3, 3, 3, 3, 2, 0]
    assert result.times_s == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
    assert result.placed == 4 and result.unplaced == 0
    assert result.peak_active_gpus == 3
    assert result.max_requested == pytest.approx(0.9)
    assert result.max_limited == pytest.approx(1.5)
    assert result.max_memory_ratio == pytest.approx(30 / 40)
    assert len(result.decision_s) == 4


def test_replay_exclusive_exact_series_and_an_unplaced_instance():
    result = replay(HANDMADE, make_placement("exclusive"), TINY)
    # d finds no empty GPU: counted, dropped, and its delete at t=5 changes nothing.
    assert result.active_gpus == [1, 2, 4, 4, 3, 3, 2, 0]
    assert result.placed == 3 and result.unplaced == 1
    assert result.max_requested == pytest.approx(0.5)
    assert result.max_memory_ratio == pytest.approx(30 / 40)


def test_replay_simple_fragmentation_on_first_fit():
    result = replay(HANDMADE, make_placement("first-fit"), TINY)
    # (Σ requested, active GPUs, Σ memory GB) after each event with any GPU active.
    states = [(0.3, 1, 8), (0.6, 1, 16), (1.6, 3, 76), (1.9, 3, 84), (1.6, 3, 76), (1.3, 3, 68),
              (1.0, 2, 60)]
    assert result.sm_fragmentation == pytest.approx([1 - r / n for r, n, _ in states])
    assert result.memory_fragmentation == pytest.approx([1 - m / (40 * n) for _, n, m in states])
    assert result.mean(result.sm_fragmentation) == pytest.approx(
        sum(1 - r / n for r, n, _ in states) / len(states))


def test_replay_samples_fgd_every_n_events():
    every_event = replay(HANDMADE, make_placement("first-fit"), TINY, fgd_every=1)
    assert len(every_event.fgd_sm_fragmentation) == 7  # the last event leaves nothing active
    assert len(every_event.fgd_memory_fragmentation) == 7
    sparse = replay(HANDMADE, make_placement("first-fit"), TINY, fgd_every=3)
    assert len(sparse.fgd_sm_fragmentation) == 3  # events 0, 3 and 6
    for value in every_event.fgd_sm_fragmentation + every_event.fgd_memory_fragmentation:
        assert 0.0 <= value <= 1.0 + 1e-9


@pytest.mark.parametrize("policy", list(POLICIES))
def test_replay_instance_too_big_for_any_gpu_is_unplaced(policy: str):
    huge = shape("huge", 0.3, 0.5, 50)
    events = [start(0, A), start(1, huge), delete(2, huge), delete(3, A)]
    result = replay(events, make_placement(policy), TINY)
    assert result.unplaced == 1
    assert result.placed == 1
    assert result.active_gpus == [1, 1, 1, 0]


@pytest.mark.parametrize("policy", list(POLICIES))
def test_replay_ends_empty_after_everything_is_deleted(policy: str):
    events = generate(120, seed=9, mix=Mix(inference_deleted=1.0, training_deleted=1.0))
    assert sum(not e.start for e in events) == 120
    result = replay(events, make_placement(policy), ClusterSpec(nodes=50))
    assert result.unplaced == 0
    assert result.active_gpus[-1] == 0
    assert result.peak_active_gpus > 0
    assert len(result.active_gpus) == len(events)


@pytest.fixture(scope="module")
def results100(trace100: list[Event]) -> dict[str, object]:
    return {name: replay(trace100, make_placement(name), fgd_every=20) for name in POLICIES}


@pytest.mark.parametrize("policy", list(POLICIES))
def test_replay_bundled_100_respects_bounds(results100: dict, policy: str):
    result = results100[policy]
    assert result.policy == policy
    assert result.unplaced == 0 and result.placed == 100
    assert 0 < result.max_requested <= 1.0 + 1e-9
    assert 0 < result.max_memory_ratio <= 1.0
    if policy != "infless-r":  # INFLess by requests leaves limits unbounded on purpose
        assert result.max_limited <= 1.5 + 1e-9
    assert all(0 <= f <= 1 for f in result.sm_fragmentation)
    assert all(0 <= f <= 1 for f in result.memory_fragmentation)


def test_replay_bundled_100_infless_limits_never_oversubscribes(results100: dict):
    assert results100["infless-l"].max_limited <= 1.0 + 1e-9
    assert results100["infless-r"].max_limited > 1.5  # it packs by requests alone
    assert results100["exclusive"].peak_active_gpus >= results100["first-fit"].peak_active_gpus


# ---- the unsplit peak bound --------------------------------------------------------------


def test_bound_big_parts_cannot_share():
    parts = [shape(f"big{i}", 0.1, 0.2, 25) for i in range(3)]
    events = [start(i, s) for i, s in enumerate(parts)]
    # memory alone says ceil(75/40) = 2, requests 1; three > 20 GB parts need 3 GPUs.
    assert unsplit_peak_bound(events, ONE_NODE) == 3
    # Exactly half a GPU is not big: two 20 GB parts fit on one GPU.
    halves = [start(i, shape(f"half{i}", 0.1, 0.2, 20)) for i in range(2)]
    assert unsplit_peak_bound(halves, ONE_NODE) == 1
    # Every GPU of a multi-GPU instance is a part.
    gang = [start(0, shape("t", 0.1, 0.2, 30, gpus=4, kind=TRAINING))]
    assert unsplit_peak_bound(gang, ONE_NODE) == 4


def test_bound_memory_sum():
    events = [start(i, shape(f"m{i}", 0.1, 0.2, 10)) for i in range(5)]
    assert unsplit_peak_bound(events, ONE_NODE) == 2  # 50 GB on 40 GB GPUs
    gang = [start(0, shape("g", 0.1, 0.2, 15, gpus=4, kind=TRAINING))]
    assert unsplit_peak_bound(gang, ONE_NODE) == 2   # 60 GB in all


def test_bound_request_sum_and_rounding():
    events = [start(i, shape(f"r{i}", 0.6, 0.8, 1)) for i in range(4)]
    assert unsplit_peak_bound(events, ONE_NODE) == 3  # 2.4 GPUs of requests
    assert unsplit_peak_bound(events, ONE_NODE, max_requested=0.5) == 5  # 4.8
    # 0.33 + 0.56 + 0.11 is 1.0000000000000002 in floats: still one GPU.
    drift = [start(i, shape(f"d{i}", r, r, 1)) for i, r in enumerate((0.33, 0.56, 0.11))]
    assert sum(e.shape.sm_request for e in drift) > 1.0
    assert unsplit_peak_bound(drift, ONE_NODE) == 1


def test_bound_is_the_peak_over_time_and_ignores_unknown_deletes():
    x, y = shape("x", 0.1, 0.2, 30), shape("y", 0.1, 0.2, 30)
    assert unsplit_peak_bound([start(0, x), delete(1, x), start(2, y)], ONE_NODE) == 1
    assert unsplit_peak_bound([start(0, x), start(1, y), delete(2, x)], ONE_NODE) == 2
    ghost = shape("ghost", 0.9, 1.0, 30)
    assert unsplit_peak_bound([start(0, x), delete(1, ghost), start(2, y)], ONE_NODE) == 2
    assert unsplit_peak_bound([], ONE_NODE) == 0


def test_no_whole_placement_peaks_below_the_bound(trace100: list[Event], results100: dict):
    bound = unsplit_peak_bound(trace100, ClusterSpec())
    assert bound > 0
    for name, result in results100.items():
        assert result.peak_active_gpus >= bound, name
    # The bound is not loose to the point of meaning nothing.
    assert min(r.peak_active_gpus for r in results100.values()) <= 1.2 * bound


def test_handmade_trace_peaks_at_or_above_the_bound():
    bound = unsplit_peak_bound(HANDMADE, TINY)
    assert bound == 3  # with a, b, c and d alive: 84 GB of memory (c's two big parts: 2, requests: 2)
    result = replay(HANDMADE, make_placement("first-fit"), TINY)
    assert result.peak_active_gpus >= bound


# ---- the default policy against the paper's ----------------------------------------------


def test_default_with_llm_shards_peaks_no_higher_than_dilu_paper_on_400():
    events = load_trace(bundled_trace(400), llm_shards=2)
    default = replay(events, make_placement("complementary"), fgd_every=1000)
    paper = replay(events, make_placement("dilu-paper"), fgd_every=1000)
    assert default.unplaced == paper.unplaced == 0
    assert default.peak_active_gpus <= paper.peak_active_gpus


# ---- the CLI -----------------------------------------------------------------------------


def test_cli_replays_a_bundled_trace_and_plots(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    plot = tmp_path / "sub" / "p.png"
    code = simulate_main(["--trace", "100", "--policies", "first-fit,dilu-paper", "--plot", str(plot)])
    out = capsys.readouterr().out
    assert code == 0
    assert "instances-100: 100 instances, 170 events" in out
    assert "first-fit" in out and "dilu-paper" in out
    assert "complementary" not in out
    bound = unsplit_peak_bound(load_trace(bundled_trace(100)), ClusterSpec())
    assert f"can peak below {bound} GPUs" in out
    assert "replayed 2 policies" in out
    data = plot.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 1000


def test_cli_prints_ratios_against_the_default(capsys: pytest.CaptureFixture[str]):
    assert simulate_main(["--trace", "100", "--policies", "complementary,exclusive"]) == 0
    out = capsys.readouterr().out
    match = re.search(r"peak GPUs complementary / exclusive: (\d+\.\d{3})", out)
    assert match is not None, out
    assert 0 < float(match.group(1)) < 1


def test_cli_unknown_policy(capsys: pytest.CaptureFixture[str]):
    assert simulate_main(["--trace", "100", "--policies", "magic"]) == 2
    captured = capsys.readouterr()
    assert "magic" in captured.err
    for name in POLICIES:
        assert name in captured.err
    assert captured.out == ""


@pytest.mark.parametrize("argv", [["--llm-shards", "0"], ["--synthetic", "0"], ["--trace", "7"]])
def test_cli_bad_arguments_return_2(argv: list[str], capsys: pytest.CaptureFixture[str]):
    assert simulate_main([*argv, "--policies", "first-fit"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")


def test_cli_bad_trace_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "broken.txt"
    path.write_text(GOOD + "\n" + bad_line(Action="stop") + "\n")
    assert simulate_main(["--trace", str(path), "--policies", "first-fit"]) == 2
    assert f"{path}:2:" in capsys.readouterr().err
    assert simulate_main(["--trace", str(tmp_path / "missing.txt"), "--policies", "first-fit"]) == 2


def test_cli_trace_file_by_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    path = tmp_path / "mine.txt"
    path.write_text(GOOD + "\n")
    assert simulate_main(["--trace", str(path), "--policies", "first-fit", "--nodes", "1"]) == 0
    out = capsys.readouterr().out
    assert "mine: 1 instances, 1 events on 1 nodes" in out
    assert "can peak below 1 GPUs" in out


def test_cli_synthetic(capsys: pytest.CaptureFixture[str]):
    argv = ["--synthetic", "50", "--seed", "3", "--policies", "first-fit", "--nodes", "20"]
    assert simulate_main(argv) == 0
    out = capsys.readouterr().out
    assert "synthetic-50 (seed 3): 50 instances" in out
    events = generate(50, 3)
    assert f"{len(events)} events on 20 nodes" in out
    assert f"can peak below {unsplit_peak_bound(events, ClusterSpec(nodes=20))} GPUs" in out


def test_dilu_simulate_subcommand(capsys: pytest.CaptureFixture[str]):
    assert dilu_main(["simulate", "--trace", "100", "--policies", "exclusive"]) == 0
    out = capsys.readouterr().out
    assert "exclusive" in out
    assert "bound:" in out
    row = next(line for line in out.splitlines() if line.startswith("exclusive"))
    peak = int(row.split()[1])
    assert peak == replay(load_trace(bundled_trace(100)), make_placement("exclusive")).peak_active_gpus


@pytest.mark.skipif(not hasattr(time, "tzset") or not Path("/usr/share/zoneinfo/Europe/Berlin").exists(),
                    reason="needs time.tzset and the Europe/Berlin zone")
def test_load_trace_times_do_not_depend_on_the_local_zone(tmp_path: Path):
    path = tmp_path / "dst.txt"
    first = GOOD.replace("2024-06-19 15:46:09", "2024-03-31 01:30:00")
    gone = first.replace("'start'", "'delete'").replace("01:30:00", "03:30:00")
    path.write_text(f"{first}\n{gone}\n")
    before = os.environ.get("TZ")
    try:
        times = {}
        for zone in ("UTC", "Europe/Berlin"):
            os.environ["TZ"] = zone
            time.tzset()
            times[zone] = [e.time_s for e in load_trace(path)]
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()
    assert times["UTC"] == [0.0, 7200.0]
    assert times["Europe/Berlin"] == times["UTC"]


def test_trace_times_that_go_backwards_are_refused(tmp_path: Path):
    later = GOOD.replace("2024-06-19 15:46:09", "2024-06-19 15:47:00")
    path, message = trace_error(tmp_path, f"{later}\n{GOOD}\n")
    assert message.startswith(f"{path}:2: ") and "before the line above" in message

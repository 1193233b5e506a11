"""Fragmentation (FGD-style) against a brute-force reference written in plain Python."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.scheduler.placement import (
    Assignment,
    InstanceShape,
    Ledger,
    PlacementBounds,
    WorkloadKind,
)
from services.scheduler.placement.fragmentation import (
    MixLearner,
    ShapeMix,
    fragmentation_delta,
    fragmented,
    free_capacity,
    shape_class,
    usable,
)
from services.scheduler.placement.view import EPS


def shape(request: float = 0.3, limit: float = 0.5, memory: int = 4096, gpus: int = 1,
          function: str = "f", kind: WorkloadKind = WorkloadKind.INFERENCE,
          max_shards: int = 1) -> InstanceShape:
    return InstanceShape(function=function, kind=kind, sm_request=request, sm_limit=limit,
                         memory_mib=memory, gpus=gpus, max_shards=max_shards)


# ---- the reference -----------------------------------------------------------------------


def ref_free(req: float, mem: float, total: float) -> float:
    return 0.5 * (1.0 - req) + 0.5 * (1.0 - mem / max(total, 1.0))


def ref_usable(state, node_of, eligible, classes, bounds):
    """[gpu][class] as lists: a class with k GPUs can use g only if g fits it and at least
    k GPUs of g's node fit it (GPUs of nodes that are not eligible fit nothing)."""
    fit = [[eligible[g]
            and req + cr <= bounds.max_requested + EPS
            and lim + cl <= bounds.max_limited + EPS
            and mem + cm <= total
            for (cr, cl, cm, _k, _w) in classes]
           for g, (req, lim, mem, total) in enumerate(state)]
    count: dict[int, list[int]] = {}
    for g, row in enumerate(fit):
        per_class = count.setdefault(node_of[g], [0] * len(classes))
        for c, ok in enumerate(row):
            per_class[c] += ok
    return [[fit[g][c] and count[node_of[g]][c] >= classes[c][3] for c in range(len(classes))]
            for g in range(len(state))]


def ref_fragmentation(state, node_of, eligible, classes, bounds) -> float:
    """F = Σ_gpus Σ_classes weight · free(g) · [class cannot use g]."""
    use = ref_usable(state, node_of, eligible, classes, bounds)
    total = 0.0
    for g, (req, _lim, mem, mem_total) in enumerate(state):
        free = ref_free(req, mem, mem_total)
        for c, (_r, _l, _m, _k, w) in enumerate(classes):
            if not use[g][c]:
                total += w * free
    return total


def classes_of(mix: ShapeMix):
    return list(zip(mix.request.tolist(), mix.limit.tolist(), mix.memory.tolist(),
                    mix.gpus.tolist(), mix.weight.tolist(), strict=True))


# ---- generated states --------------------------------------------------------------------

BOUNDS = [PlacementBounds(), PlacementBounds(1.0, 1.0), PlacementBounds(0.8, 1.2),
          PlacementBounds(1.0, float("inf"))]

mix_keys = st.tuples(
    st.integers(1, 20).map(lambda n: round(n * 0.05, 6)),   # request
    st.integers(0, 10).map(lambda n: round(n * 0.05, 6)),   # limit above the request
    st.integers(0, 20).map(lambda n: n * 2048),             # memory
    st.integers(1, 4),                                      # gpus
).map(lambda k: (k[0], round(k[0] + k[1], 6), k[2], k[3]))

mixes = st.dictionaries(mix_keys, st.floats(0.05, 10.0), min_size=1, max_size=6).map(ShapeMix.of)

commits = st.lists(st.tuples(st.integers(0, 11), st.floats(0.0, 1.0), st.floats(0.0, 0.7),
                             st.integers(0, 40960)), max_size=25)


@st.composite
def clusters(draw):
    """A ledger of 3 nodes × 2-4 GPUs with random single-GPU commits, and a random set of
    eligible nodes (None: all)."""
    book = Ledger()
    for n in range(3):
        count = draw(st.integers(2, 4))
        memory = draw(st.sampled_from([16384, 40960, 40960, 81920]))
        book.set_node(f"n{n}", [(f"n{n}-g{g}", memory) for g in range(count)])
    slots = book.gpus()
    for i, (g, req, extra, mem) in enumerate(draw(commits)):
        slot = book.gpu(slots[g % len(slots)].uuid)
        if slot.sm_requested + req > 1.0 or slot.memory_allocated_mib + mem > slot.memory_total_mib:
            continue
        s = shape(request=req, limit=req + extra, memory=mem, function=f"f{i % 3}",
                  kind=draw(st.sampled_from(list(WorkloadKind))))
        book.commit(str(i), s, Assignment(slot.node, (slot.uuid,)))
    nodes = draw(st.one_of(st.none(), st.sets(st.sampled_from(["n0", "n1", "n2"]), min_size=1)))
    return book, nodes


def state_of(view):
    return [(float(view.requested[i]), float(view.limited[i]), float(view.memory_used[i]),
             float(view.memory_total[i])) for i in range(view.size)]


@settings(max_examples=120, deadline=None)
@given(clusters(), mixes, st.sampled_from(BOUNDS), st.floats(0.0, 1.0), st.floats(0.0, 0.7),
       st.integers(0, 40960), st.randoms(use_true_random=False))
def test_fragmentation_delta_matches_the_brute_force_reference(cluster, mix, bounds, req, extra,
                                                               mem, rnd):
    book, nodes = cluster
    view = book.view(nodes)
    eligible = view.eligible.tolist()
    node_of = view.node_of.tolist()
    choices = [i for i in range(view.size) if eligible[i]]
    if not choices:
        return
    candidates = rnd.sample(choices, rnd.randint(1, len(choices)))  # any order
    s = shape(request=req, limit=req + extra, memory=mem)
    classes = classes_of(mix)
    state = state_of(view)
    before = ref_fragmentation(state, node_of, eligible, classes, bounds)
    expected = []
    for g in candidates:
        after_state = list(state)
        r, lim, m, total = state[g]
        after_state[g] = (r + s.sm_request, lim + s.sm_limit, m + s.memory_mib, total)
        expected.append(ref_fragmentation(after_state, node_of, eligible, classes, bounds) - before)
    got = fragmentation_delta(view, mix, bounds, s, np.array(candidates, dtype=np.int64))
    assert got.shape == (len(candidates),)
    assert got.tolist() == pytest.approx(expected, abs=1e-9, rel=0)


@settings(max_examples=120, deadline=None)
@given(clusters(), mixes, st.sampled_from(BOUNDS), st.randoms(use_true_random=False))
def test_usable_and_fragmented_match_the_reference(cluster, mix, bounds, rnd):
    book, nodes = cluster
    view = book.view(nodes)
    eligible = view.eligible.tolist()
    node_of = view.node_of.tolist()
    classes = classes_of(mix)
    state = state_of(view)
    reference = ref_usable(state, node_of, eligible, classes, bounds)
    gpus = rnd.sample(range(view.size), rnd.randint(1, view.size))
    got = usable(view, mix, bounds, np.array(gpus, dtype=np.int64))
    assert got.tolist() == [reference[g] for g in gpus]

    everything = np.arange(view.size)
    free = free_capacity(view.requested, view.memory_used, view.memory_total)
    assert free.tolist() == pytest.approx([ref_free(r, m, t) for r, _, m, t in state], abs=1e-12)
    per_gpu = fragmented(free, usable(view, mix, bounds, everything), mix)
    expected = [sum(w * ref_free(state[g][0], state[g][2], state[g][3])
                    for c, (_r, _l, _m, _k, w) in enumerate(classes) if not reference[g][c])
                for g in range(view.size)]
    assert per_gpu.tolist() == pytest.approx(expected, abs=1e-9, rel=0)
    assert float(per_gpu.sum()) == pytest.approx(
        ref_fragmentation(state, node_of, eligible, classes, bounds), abs=1e-9, rel=0)


def test_a_gang_class_cannot_use_a_node_with_too_few_fitting_gpus():
    book = Ledger()
    book.set_node("n0", [("a", 40960), ("b", 40960)])
    book.set_node("n1", [("c", 40960), ("d", 40960)])
    book.commit("x", shape(request=0.9, limit=0.9), Assignment("n0", ("a",)))
    mix = ShapeMix.of({(0.5, 0.5, 2048, 2): 1.0})
    view = book.view()
    got = usable(view, mix, PlacementBounds(), np.arange(4))
    # "b" still fits one GPU's worth, but its node has only one such GPU.
    assert got[:, 0].tolist() == [False, False, True, True]
    # All of n0's free capacity is fragmented for the gang class, none of n1's.
    free = free_capacity(view.requested, view.memory_used, view.memory_total)
    assert fragmented(free, got, mix).tolist() == pytest.approx(
        [free[0], free[1], 0.0, 0.0])


# ---- the mix -----------------------------------------------------------------------------

shapes = st.builds(
    shape,
    request=st.floats(0.01, 1.0),
    limit=st.floats(0.01, 1.5),
    memory=st.integers(0, 81920),
    gpus=st.sampled_from([1, 2, 4]),
)


@given(st.lists(shapes, min_size=1, max_size=40))
def test_mix_from_shapes_weights_are_shares_of_arrivals(arrivals):
    mix = ShapeMix.from_shapes(arrivals)
    assert float(mix.weight.sum()) == pytest.approx(1.0, abs=1e-12)
    assert (mix.weight > 0).all()
    keys = [shape_class(s) for s in arrivals]
    assert mix.size == len(set(keys))
    for i in range(mix.size):
        key = (float(mix.request[i]), float(mix.limit[i]), int(mix.memory[i]), int(mix.gpus[i]))
        assert mix.weight[i] == pytest.approx(keys.count(key) / len(keys))


def test_shape_class_rounds_demand_up_to_the_grid():
    assert shape_class(shape(request=0.3, limit=0.5, memory=4096)) == (0.3, 0.5, 4096, 1)
    assert shape_class(shape(request=0.31, limit=0.51, memory=4097, gpus=2)) == (0.35, 0.55, 6144, 2)
    assert shape_class(shape(request=0.01, limit=0.01, memory=1)) == (0.05, 0.05, 2048, 1)
    assert shape_class(shape(request=0.0, limit=0.0, memory=0)) == (0.0, 0.0, 0, 1)


@given(shapes)
def test_shape_class_is_the_smallest_grid_point_not_below_the_demand(s):
    request, limit, memory, gpus = shape_class(s)
    assert gpus == s.gpus
    for value, rounded, step in ((s.sm_request, request, 0.05), (s.sm_limit, limit, 0.05),
                                 (s.memory_mib, memory, 2048)):
        assert rounded >= value - 1e-6 * step
        assert rounded - value < step
        assert abs(rounded / step - round(rounded / step)) < 1e-6


def _weight_of(mix: ShapeMix, key) -> float:
    for i in range(mix.size):
        if (float(mix.request[i]), float(mix.limit[i]), int(mix.memory[i]), int(mix.gpus[i])) == key:
            return float(mix.weight[i])
    return 0.0


def test_the_learner_forgets_with_its_half_life():
    learner = MixLearner(half_life=8, max_classes=8)
    old, new = shape(memory=2048), shape(memory=8192)
    learner.observe(old)
    for _ in range(8):
        learner.observe(new)
    mix = learner.mix()
    decay = 0.5 ** (1 / 8)
    new_raw = sum(decay ** i for i in range(8))
    # After one half-life the old arrival counts half as much as one fresh arrival.
    assert _weight_of(mix, shape_class(old)) / _weight_of(mix, shape_class(new)) == pytest.approx(
        0.5 / new_raw)
    assert float(mix.weight.sum()) == pytest.approx(1.0)


def test_the_learner_keeps_at_most_max_classes_the_heaviest():
    learner = MixLearner(half_life=50, max_classes=3)
    frequent = shape(request=0.5, limit=0.5, memory=30000)
    for i in range(100):
        learner.observe(shape(memory=2048 * (i % 15)))   # 15 distinct one-off classes
        if i % 2 == 0:
            learner.observe(frequent)
        assert learner.mix().size <= 3
        assert len(learner._weights) <= 2 * 3
    mix = learner.mix()
    assert mix.size == 3
    assert int(np.argmax(mix.weight)) == [
        (float(mix.request[i]), float(mix.limit[i]), int(mix.memory[i]), int(mix.gpus[i]))
        for i in range(mix.size)].index(shape_class(frequent))


def test_the_learner_keeps_the_most_recent_classes_when_all_arrive_once():
    learner = MixLearner(half_life=10, max_classes=3)
    for i in range(10):
        learner.observe(shape(memory=2048 * (i + 1)))
    assert sorted(learner.mix().memory.tolist()) == [2048 * 8, 2048 * 9, 2048 * 10]


def test_the_learner_counts_every_split_form_of_a_shardable_shape():
    learner = MixLearner()
    llm = shape(request=0.6, limit=0.9, memory=30000, kind=WorkloadKind.LLM_INFERENCE, max_shards=3)
    learner.observe(llm)
    mix = learner.mix()
    forms = [llm, llm.sharded(2), llm.sharded(3)]
    assert mix.size == 3
    assert sorted(mix.gpus.tolist()) == [1, 2, 3]
    for form in forms:
        assert _weight_of(mix, shape_class(form)) == pytest.approx(1 / 3)


def test_free_capacity_weighs_sm_and_memory_equally():
    got = free_capacity(np.array([0.0, 1.0, 0.5]), np.array([0.0, 40960.0, 10240.0]),
                        np.array([40960.0, 40960.0, 40960.0]))
    assert got.tolist() == pytest.approx([1.0, 0.0, 0.5 * 0.5 + 0.5 * 0.75])
    assert math.isfinite(float(free_capacity(np.array([0.0]), np.array([0.0]), np.array([0.0]))[0]))

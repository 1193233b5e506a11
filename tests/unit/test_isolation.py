"""Who may open an instance's pages: the runtime directory's modes, the pages' owners, the
uid pool of per-worker uids."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from services.common.errors import ResourceExhausted
from services.node_agent.isolation import Isolation, UidPool, WorkerIds, WorkerUser, uids_in_use
from services.node_agent.pages import control_for
from services.node_agent.supervisor import WorkerProcess
from tests.integration.conftest import inference_spec


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_worker_ids_parse_a_range_whose_first_id_is_the_group():
    assert WorkerIds.parse("61000-61999") == WorkerIds(61000, 61001, 61999)
    assert WorkerIds.parse("") is None
    for bad in ("61000", "61000-", "a-b", "61999-61000", "0-100", "61000-61000"):
        with pytest.raises(ValueError):
            WorkerIds.parse(bad)


def test_uids_go_round_robin_and_never_to_one_still_in_use():
    pool = UidPool(WorkerIds(100, 101, 103))
    busy: set[int] = set()
    assert [pool.take(i, lambda: busy) for i in ("a", "b")] == [101, 102]
    assert pool.take("a", lambda: busy) == 101  # the same instance keeps its uid
    pool.release("a")
    busy = {103}  # a leftover process of an earlier instance
    assert pool.take("c", lambda: busy) == 101  # 103 is skipped, then it wraps round
    with pytest.raises(ResourceExhausted):
        pool.take("d", lambda: busy)


def test_uids_in_use_finds_this_process(tmp_path: Path):
    me = os.geteuid()
    assert me in uids_in_use(WorkerIds(max(0, me - 1), me, me + 1)) or me == 0


def test_without_per_worker_uids_the_runtime_dir_is_the_agents_alone(tmp_path: Path):
    base, node = tmp_path / "run", tmp_path / "run" / "n1"
    base.mkdir(mode=0o755)
    Isolation(None).prepare(base, node)
    assert _mode(base) == 0o700 and _mode(node) == 0o700
    worker = WorkerProcess("f-1", inference_spec("f"), node, control_for(0.5, 0.3, 0.6, 1 << 30), {})
    try:
        assert _mode(worker.control_path) == 0o400  # read-only, even to its own uid
        assert _mode(worker.spec_path) == 0o400
        assert _mode(worker.stats_path) == 0o600
        worker.write_spec(inference_spec("f"))  # the agent replaces it still
        assert _mode(worker.spec_path) == 0o400
        worker.control.write(control_for(0.25, 0.2, 0.6, 1 << 30))  # and writes through its mapping
    finally:
        worker.remove_files(keep_log=False)


@pytest.mark.skipif(os.geteuid() != 0, reason="handing files to other uids needs root")
def test_with_per_worker_uids_each_instances_pages_are_its_group_only(tmp_path: Path):
    isolation = Isolation(WorkerIds(61000, 61001, 61099))
    base, node = tmp_path / "run", tmp_path / "run" / "n1"
    base.mkdir()
    isolation.prepare(base, node)
    assert _mode(base) == 0o711 and _mode(node) == 0o1730 and node.stat().st_gid == 61000
    user = isolation.user_for("f-1")
    assert user == WorkerUser(61001, 61001, (61000,))
    worker = WorkerProcess("f-1", inference_spec("f"), node, control_for(0.5, 0.3, 0.6, 1 << 30), {},
                           user=user, isolation=isolation)
    try:
        for path, mode in ((worker.control_path, 0o440), (worker.spec_path, 0o440),
                           (worker.stats_path, 0o660)):
            assert (_mode(path), path.stat().st_uid, path.stat().st_gid) == (mode, 0, 61001), path
        assert isolation.user_for("f-2") == WorkerUser(61002, 61002, (61000,))
    finally:
        worker.remove_files(keep_log=False)

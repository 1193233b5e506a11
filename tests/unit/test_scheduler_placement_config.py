"""The scheduler's placement configuration: the default policy, the baselines by name or
environment, and the placement bounds, which belong to the node agents now."""

from __future__ import annotations

import math

import pytest

from services.scheduler.__main__ import parse


def test_the_default_policy_is_complementary_and_leaves_the_bounds_to_the_nodes():
    _, _, placement, _ = parse([])
    assert placement.name == "complementary"
    # Only requests ≤ 1 of its own: every node's announced bounds do the rest.
    assert (placement.bounds.max_requested, placement.bounds.max_limited) == (1.0, math.inf)


def test_a_baseline_is_chosen_by_flag_or_environment_and_keeps_its_own_rule(
        monkeypatch: pytest.MonkeyPatch):
    assert parse(["--placement", "infless-l"])[2].bounds.max_limited == 1.0
    monkeypatch.setenv("DILU_PLACEMENT", "exclusive")
    assert parse([])[2].name == "exclusive"


def test_bounds_in_the_environment_are_for_the_agents_and_do_not_stop_the_scheduler(
        monkeypatch: pytest.MonkeyPatch):
    # One env file serves every unit on a machine (deploy/systemd/dilu.env.example).
    monkeypatch.setenv("DILU_MAX_LIMITED", "1.2")
    assert parse([])[2].bounds.max_limited == math.inf


@pytest.mark.parametrize(("argv", "named"), [
    (["--placement", "magic"], "complementary"),
    (["--max-requested", "0.8"], "node agent settings"),
    (["--max-limited", "1.2"], "node agent settings"),
])
def test_bad_placement_settings_stop_the_scheduler_with_a_clear_message(
        argv: list[str], named: str, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as stopped:
        parse(argv)
    assert stopped.value.code == 2
    assert named in capsys.readouterr().err

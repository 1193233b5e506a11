"""The scheduler's placement configuration: the default policy, the baselines by name or
environment, and bounds refused with a message that names them."""

from __future__ import annotations

import pytest

from services.scheduler.__main__ import parse


def test_the_default_policy_is_complementary_with_the_paper_bounds():
    _, _, placement = parse([])
    assert placement.name == "complementary"
    assert (placement.bounds.max_requested, placement.bounds.max_limited) == (1.0, 1.5)


def test_a_baseline_is_chosen_by_flag_or_environment(monkeypatch: pytest.MonkeyPatch):
    assert parse(["--placement", "dilu-paper", "--max-limited", "1.2"])[2].bounds.max_limited == 1.2
    monkeypatch.setenv("DILU_PLACEMENT", "exclusive")
    assert parse([])[2].name == "exclusive"


@pytest.mark.parametrize(("argv", "named"), [
    (["--placement", "magic"], "complementary"),
    (["--max-requested", "1.2"], "--max-requested must be in (0, 1]"),
    (["--max-limited", "0.5"], "--max-limited must be at least --max-requested"),
])
def test_bad_placement_settings_stop_the_scheduler_with_a_clear_message(
        argv: list[str], named: str, capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit) as stopped:
        parse(argv)
    assert stopped.value.code == 2
    assert named in capsys.readouterr().err

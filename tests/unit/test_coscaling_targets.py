"""The co-scaling targets judge `coscale` from a run's reports: each met or missed from
the figures, against the baselines that ran (`services/simulator/serving/targets.py`)."""

from __future__ import annotations

from services.simulator.serving.cli import scenario_path
from services.simulator.serving.report import FunctionResult, SystemResult
from services.simulator.serving.run import ScenarioReport
from services.simulator.serving.scenario import load_scenario
from services.simulator.serving.targets import coscale_targets


def _result(system: str, within: dict[str, int], gpu_seconds: float, training: float,
            requests: int = 1000) -> SystemResult:
    return SystemResult(
        system=system, parameters={},
        functions={name: FunctionResult(requests, ok, 0, 10.0) for name, ok in within.items()},
        gpu_seconds=gpu_seconds, reserved_share_seconds=0.0, gpu_busy_s={},
        training={"job": training}, cold_starts=0, vertical_actions=0, horizontal_actions=0,
        refused_actions=0, unplaced=[], replay_s=0.0, duration_s=900.0)


def _report(name: str, results: list[SystemResult], infeasible: tuple[str, ...] = ()) -> ScenarioReport:
    scenario = load_scenario(scenario_path(name))
    feasible = {f.name: f.name not in infeasible for f in scenario.functions}
    return ScenarioReport(scenario, results, {}, 4.0, gpu_seconds_bound=5400.0,
                          oracle_attainment=1.0, feasible=feasible)


def _testbed(coscale: SystemResult, infeasible: tuple[str, ...] = ()) -> ScenarioReport:
    everyone = {"roberta-large": 960, "bert-base": 900, "gpt2-large": 980, "resnet152": 990}
    return _report("paper-testbed", [
        _result("static", everyone, 12600, 0.83),
        _result("exclusive-kpa", everyone, 18000, 1.0),
        _result("dilu-paper", {**everyone, "bert-base": 950}, 16000, 0.83),
        coscale], infeasible)


def _verdicts(report: ScenarioReport) -> dict[str, bool]:
    return {t.label: t.met for t in coscale_targets([report])}


def test_a_coscale_run_that_beats_everyone_meets_every_target() -> None:
    best = {"roberta-large": 999, "bert-base": 995, "gpt2-large": 990, "resnet152": 999}
    verdicts = _verdicts(_testbed(_result("coscale", best, 12000, 0.9)))
    assert verdicts and all(verdicts.values()), verdicts
    assert any("exclusive-kpa's" in label for label in verdicts)
    # A baseline that did not run is not a target.
    assert not any("has-gpu" in label for label in verdicts)


def test_more_gpu_seconds_than_a_baseline_is_not_pareto_better() -> None:
    best = {"roberta-large": 999, "bert-base": 995, "gpt2-large": 990, "resnet152": 999}
    verdicts = _verdicts(_testbed(_result("coscale", best, 14000, 0.9)))
    assert not verdicts["Pareto-better than static (attainment ≥, GPU-s ≤)"]
    assert verdicts["Pareto-better than dilu-paper (attainment ≥, GPU-s ≤)"]
    assert verdicts["GPU-s ≤ 0.85 × exclusive-kpa's"]  # 14000 / 18000 = 0.78


def test_a_function_below_97_percent_misses_unless_the_oracle_marks_it_infeasible() -> None:
    low = {"roberta-large": 999, "bert-base": 995, "gpt2-large": 960, "resnet152": 999}
    label = "≥ 97 % for every feasible function"
    assert not _verdicts(_testbed(_result("coscale", low, 12000, 0.9)))[label]
    assert _verdicts(_testbed(_result("coscale", low, 12000, 0.9), ("gpt2-large",)))[label]


def test_fewer_violations_than_dilu_paper_needs_thirty_percent_and_its_training() -> None:
    # dilu-paper misses 40 + 50 + 20 + 10 = 120 of 4000; 90 is only 25 % fewer.
    close = {"roberta-large": 980, "bert-base": 960, "gpt2-large": 980, "resnet152": 990}
    label = "≥ 30 % fewer violations than dilu-paper, GPU-s ≤, training ≥"
    assert not _verdicts(_testbed(_result("coscale", close, 12000, 0.9)))[label]
    best = {"roberta-large": 999, "bert-base": 995, "gpt2-large": 990, "resnet152": 999}
    assert _verdicts(_testbed(_result("coscale", best, 12000, 0.9)))[label]
    assert not _verdicts(_testbed(_result("coscale", best, 12000, 0.5)))[label]


def test_demo_holds_training_to_nine_tenths_of_static() -> None:
    fine = {"resnet152": 1000, "bert-base": 990}
    report = _report("demo", [_result("static", {"resnet152": 1000, "bert-base": 712}, 120, 0.5),
                              _result("coscale", fine, 120, 0.44)])
    verdicts = _verdicts(report)
    assert verdicts["SLO attainment ≥ 99 % overall"]
    assert not verdicts["training ≥ 90 % of static's"]  # 0.44 / 0.5 = 88 %

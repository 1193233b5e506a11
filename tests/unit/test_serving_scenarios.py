"""Serving scenarios: the validator names the file, the field and the problem; the pinned
scenarios load; cluster-50 is what its generator makes; demo gives the demo's layout."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from services.simulator.serving.cli import scenario_path
from services.simulator.serving.engine import Simulation
from services.simulator.serving.generate import cluster_50, render
from services.simulator.serving.scenario import ScenarioError, load_scenario, parse_scenario
from services.simulator.serving.systems import Static

GOOD: dict[str, Any] = {
    "name": "small", "duration_s": 30, "seed": 1,
    "cluster": {"nodes": 1, "gpus_per_node": 2},
    "functions": [{"name": "f", "model": "resnet152", "slo_ms": 100, "trace": "bursty",
                   "scale": 2, "replicas": {"min": 1, "max": 3}}],
    "training": [{"name": "t", "model": "bert-base", "gpus": 1,
                  "quota": {"request": 0.2, "limit": 0.5, "memory_mib": 8192}}],
}


def _with(path: str, value: object) -> dict[str, Any]:
    """GOOD with one field (a dotted path, list indices as numbers) replaced or removed."""
    scenario = yaml.safe_load(yaml.safe_dump(GOOD))
    *parents, last = path.split(".")
    node: Any = scenario
    for key in parents:
        node = node[int(key)] if key.isdigit() else node[key]
    if value is _DELETE:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return scenario  # type: ignore[no-any-return]


_DELETE = object()


def test_a_good_scenario_loads_with_the_documented_defaults() -> None:
    scenario = parse_scenario(GOOD, "good.yaml")
    assert scenario.cluster.max_requested == 1.0 and scenario.cluster.max_limited == 1.5
    assert scenario.cluster.gpu_memory_mib == 40960
    function = scenario.functions[0]
    assert (function.replicas_initial, function.shift_s, function.quota) == (1, 0.0, None)
    assert scenario.training[0].host_ms == 0.0 and scenario.training[0].batch == 16
    assert scenario.deploy_order() == ("f", "t")


@pytest.mark.parametrize(("path", "value", "field", "problem"), [
    ("duration_s", -5, "duration_s", "must be in [1,"),
    ("seed", "seven", "seed", "must be an integer"),
    ("cluster.nodes", 0, "cluster.nodes", "must be in [1,"),
    ("cluster.max_limited", 0.5, "cluster.max_limited", "must be in [1,"),
    ("cluster.colour", "red", "cluster.colour", "unknown field"),
    ("functions.0.model", "alexnet", "functions[0].model", "unknown model 'alexnet'"),
    ("functions.0.trace", "flat", "functions[0].trace", "unknown trace 'flat'"),
    ("functions.0.slo_ms", 0, "functions[0].slo_ms", "must be in (0,"),
    ("functions.0.slo_ms", float("nan"), "functions[0].slo_ms", "must be a number"),
    ("functions.0.scale", _DELETE, "functions[0].scale", "is required"),
    ("functions.0.shift_s", 5000, "functions[0].shift_s", "must be in [0, 858]"),
    ("functions.0.replicas", {"min": 3, "max": 2}, "functions[0].replicas.max", "must be in [3,"),
    ("functions.0.replicas", {"min": 1, "max": 2, "initial": 3},
     "functions[0].replicas.initial", "must be in [1, 2]"),
    ("functions.0.quota", {"request": 0.5, "limit": 0.4, "memory_mib": 100},
     "functions[0].quota.limit", "must be in [0.5, 1]"),
    ("functions.0.name", "f/../x", "functions[0].name", "must be a non-empty name"),
    ("training.0.gpus", 3, "training[0].gpus", "must be in [1, 2]"),
    ("training.0.quota", {"request": 0.2, "limit": 0.5, "memory_mib": 99999},
     "training[0].quota.memory_mib", "must be in [1, 40960]"),
    ("training.0.host_ms", "lots", "training[0].host_ms", "must be a number"),
    ("training.0.name", "f", "training[0].name", "'f' is used twice"),
    ("functions", "none", "functions", "must be a list"),
])
def test_a_bad_field_is_named_with_its_file_and_problem(path: str, value: object, field: str,
                                                        problem: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(_with(path, value), "bad.yaml")
    message = str(caught.value)
    assert message.startswith(f"bad.yaml: {field}: "), message
    assert problem in message, message


@pytest.mark.parametrize(("deploy", "problem"), [
    (["f", "nope"], "deploy[1]: 'nope' is neither a function nor a training job"),
    (["f"], "deploy: names 't' 0 time(s); its initial instances are 1"),
    (["f", "f", "t"], "deploy: names 'f' 2 time(s); its initial instances are 1"),
])
def test_a_bad_deploy_order_is_named(deploy: list[str], problem: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(_with("deploy", deploy), "bad.yaml")
    assert str(caught.value) == f"bad.yaml: {problem}"


def test_unreadable_and_malformed_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match=r"missing\.yaml: cannot read"):
        load_scenario(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match=r"broken\.yaml: not valid YAML"):
        load_scenario(broken)
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ScenarioError, match=r"list\.yaml: the file: must be a mapping"):
        load_scenario(listed)


def test_the_pinned_scenarios_load() -> None:
    demo = load_scenario(scenario_path("demo"))
    assert [(f.name, f.slo_ms, f.scale, f.max_batch) for f in demo.functions] == [
        ("resnet152", 100, 10, 16), ("bert-base", 50, 2, 8)]
    testbed = load_scenario(scenario_path("paper-testbed"))
    assert (testbed.cluster.nodes, testbed.cluster.gpus_per_node, testbed.duration_s,
            testbed.seed) == (5, 4, 900, 1)
    assert sorted(t.gpus for t in testbed.training) == [2, 2, 4, 4]
    for job in testbed.training:  # saturates at its limit: host part = GPU part / limit
        assert job.host_ms == pytest.approx(job.step_gpu_s / job.quota.limit * 1000)
    big = load_scenario(scenario_path("cluster-50"))
    assert (len(big.functions), len(big.training), big.cluster.gpus, big.seed) == (50, 10, 80,
                                                                                  20261206)


def test_cluster_50_is_what_the_generator_makes() -> None:
    assert scenario_path("cluster-50").read_text() == render(cluster_50())


def test_demo_gives_the_demo_layout() -> None:
    """GPU 0: bert-base and one resnet152; GPU 1: the other resnet152 and the training job."""
    scenario = load_scenario(scenario_path("demo"))
    sim = Simulation(scenario, Static(), {})
    sim._deploy()
    layout = {uuid: sorted(sim.instances[i].id.rsplit("-", 1)[0] for i in held)
              for uuid, held in sim._on_gpu.items()}
    assert layout == {"node-000-gpu0": ["bert-base", "resnet152"],
                      "node-000-gpu1": ["resnet152", "roberta-finetune"]}


def test_the_demo_scenario_is_the_live_demo() -> None:
    """What `dilu demo` deploys (examples/) and replays is what the scenario says."""
    from services.cli.demo import DEMO_SPECS, EXAMPLES, demo_load
    from services.cli.specs import load_spec

    scenario = load_scenario(scenario_path("demo"))
    specs = {s.name: s for s in (load_spec(EXAMPLES / name) for name in DEMO_SPECS)}
    for function in scenario.functions:
        spec = specs[function.name]
        assert function.quota is not None
        assert (spec.model, spec.slo.latency_ms, spec.max_batch, spec.replicas.min,
                spec.replicas.max) == (function.model, function.slo_ms, function.max_batch,
                                       function.replicas_min, function.replicas_max)
        assert (spec.resources.sm_request, spec.resources.sm_limit, spec.resources.memory_mib) == (
            function.quota.request, function.quota.limit, function.quota.memory_mib)
    job = scenario.training[0]
    spec = specs[job.name]
    assert (spec.model, spec.resources.sm_request, spec.resources.sm_limit,
            spec.resources.memory_mib, spec.resources.gpus_per_instance) == (
        job.model, job.quota.request, job.quota.limit, job.quota.memory_mib, job.gpus)
    assert demo_load(60) == scenario

"""`dilu profile --offline` and `bench/profiler.py --json`: what they print and write."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from services.cli.main import main
from services.profiler.search import TableMeasurer, search_inference, sweep_inference

BENCH = Path(__file__).resolve().parents[2] / "bench" / "profiler.py"


def test_json_gives_the_choice_the_exhaustive_optimum_and_the_probes(capsys: pytest.CaptureFixture[str]):
    assert main(["profile", "--model", "roberta-large", "--slo-ms", "60", "--offline", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    table = TableMeasurer.a100("roberta-large")
    ours, sweep = search_inference(table, 0.060), sweep_inference(table, 0.060)
    assert printed == {"choice": {"share": ours.share, "batch": ours.batch},
                       "exhaustive": {"share": sweep.share, "batch": sweep.batch},
                       "probes": len(ours.probes)}
    # Grid points of the raw table, shares as fractions of a GPU: here the optimum.
    assert printed["choice"] == printed["exhaustive"] == {"share": 0.3, "batch": 4}
    assert 0 < printed["probes"] < 60


def test_text_output_names_both_points_and_the_probe_count(capsys: pytest.CaptureFixture[str]):
    assert main(["profile", "--model", "resnet152", "--slo-ms", "40", "--offline"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.split()}
    assert lines["choice"][1:3] == ["0.30", "16"] and lines["exhaustive"][1:3] == ["0.30", "16"]
    probes = len(search_inference(TableMeasurer.a100("resnet152"), 0.040).probes)
    assert f"probes: {probes} of 60 points" in out


def test_a_model_and_slo_without_offline_ask_for_a_spec_file(capsys: pytest.CaptureFixture[str]):
    assert main(["profile", "--model", "bert-base", "--slo-ms", "50"]) == 2
    assert "spec FILE" in capsys.readouterr().err


def test_an_infeasible_slo_names_the_fastest_latency(capsys: pytest.CaptureFixture[str]):
    assert main(["profile", "--model", "roberta-large", "--slo-ms", "5", "--offline", "--json"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "FAILED_PRECONDITION" in captured.err and "fastest latency measured is 20.0 ms" in captured.err


@pytest.mark.parametrize(("args", "field"), [(["--model", "alexnet", "--slo-ms", "50"], "model"),
                                             (["--model", "bert-base", "--slo-ms", "-3"], "slo_ms"),
                                             (["--model", "bert-base", "--slo-ms", "nan"], "slo_ms")])
def test_bad_input_is_an_invalid_argument_naming_the_field(capsys: pytest.CaptureFixture[str],
                                                           args: list[str], field: str):
    assert main(["profile", *args, "--offline"]) == 2
    assert f"INVALID_ARGUMENT: {field}:" in capsys.readouterr().err


def test_bench_json_has_the_figures_per_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    spec = importlib.util.spec_from_file_location("bench_profiler", BENCH)
    assert spec and spec.loader
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up
    spec.loader.exec_module(bench)
    out = tmp_path / "figures.json"
    monkeypatch.setattr(sys, "argv",
                        ["profiler.py", "--models", "bert-base,roberta-large", "--json", str(out)])
    assert bench.main() == 0
    figures = json.loads(out.read_text())
    assert set(figures) == {"models"}
    for model in ("bert-base", "roberta-large"):
        row = figures["models"][model]
        for key in ("cases", "match_rate", "hgss_match_rate", "median_probes", "max_probes",
                    "violations", "worst_te_loss"):
            assert key in row
        assert row["cases"] == 20 and row["violations"] == 0
        assert 0 <= row["hgss_match_rate"] <= row["match_rate"] <= 1
        assert row["infeasible_slo"]["raised"] is True
    # HGSS stops at 20 %/batch 4 on roberta-large at 60 ms, one of its misses here.
    assert figures["models"]["roberta-large"]["hgss_match_rate"] < 1

"""make paper end to end on the tiny configs: every run, results.json, the figures and the report's checks."""

from __future__ import annotations

import json

import pytest

from eval.paper_report import quantile, seed_summary
from tests.conftest import run_make


@pytest.mark.slow
def test_make_paper_on_the_tiny_configs(tmp_path):
    stdout = run_make("paper", "CONFIGS=configs/tiny", f"RUNS={tmp_path}").stdout
    out = tmp_path / "paper"
    results = json.loads((out / "results.json").read_text())
    for model in ("linear", "transformer"):
        seeds = results["models"][model]
        assert sorted(seeds) == ["0", "1"]
        for seed, data in seeds.items():
            assert len(data["centre_alpha"]) == 4  # the four mixture centres of the tiny task, tracked
            for arm in ("outcome", "process"):
                run = data["runs"][arm]
                assert run["step"][0] == 0 and run["step"][-1] == (6 if model == "linear" else 4)
                assert all(len(c) == 4 for c in run["centres"]) and all(0 <= e <= 1 for e in run["test_error"])
                assert (out / model / f"{arm}_s{seed}" / "model" / "config.json").is_file()
            # process rewards charge a query per prefix checked, outcome one per response
            assert data["runs"]["process"]["queries"][-1] > data["runs"]["outcome"]["queries"][-1]
        cdf = results["cdf"][model]
        steps = sorted(int(s) for s in cdf["log_likelihood"])
        assert steps == ([0, 5, 10, 15, 20] if model == "linear" else [0, 5, 10])
        assert all(len(v) == cdf["samples"] for v in cdf["log_likelihood"].values())
        for name in (f"figure1_{model}.png", f"centres_{model}.png", f"figure2_{model}.png"):
            assert (out / name).stat().st_size > 10_000
        setting = results["settings"][model]
        assert setting["components"] == 4 and setting["k"] == 4
        assert all(arm["max_steps"] == (6 if model == "linear" else 4) for arm in setting["arms"].values())
    report = (out / "report.md").read_text()
    assert "### Figure 1, linear model" in report and "### Figure 2, transformer model" in report
    assert "- Setting, linear: N = " in report and "| theirs |" not in report  # not the authors' setting
    assert report in stdout
    # a rerun reuses every finished run
    run_make("paper", "CONFIGS=configs/tiny", f"RUNS={tmp_path}")
    assert json.loads((out / "results.json").read_text())["models"] == results["models"]


def test_checks_read_the_runs_as_the_issue_states_them():
    run = {"step": [0, 50, 100, 150, 200], "queries": [0, 1, 2, 3, 4], "test_error": [0.6, 0.5, 0.45, 0.44, 0.44],
           "centres": [[1e-20, 0.5], [1e-18, 0.6], [1e-9, 0.7], [1e-8, 0.8], [1e-7, 0.9]]}
    process = {**run, "test_error": [0.6, 0.3, 0.2, 0.15, 0.1], "centres": [[1e-20, 0.5], [0.1, 0.9], [0.5, 0.9],
                                                                            [0.8, 1.0], [0.95, 1.0]]}
    summary = seed_summary({"centre_alpha": [1e-20, 0.5], "threshold": 1e-12, "base_test_error": 0.6,
                            "runs": {"outcome": run, "process": process}})
    assert summary["offsupport_centres"] == 1
    assert summary["outcome"]["second_half_range"] == pytest.approx(0.01)  # steps 100..200: 0.45 → 0.44
    assert summary["outcome"]["off_max_ever"] == 1e-7 and summary["process"]["off_final_min"] == 0.95
    assert quantile([-3.0, -2.0, -1.0, 0.0], 0.3) == pytest.approx(2.718281828**-2)  # the 2nd smallest of four


def test_the_authors_code_is_put_beside_ours_only_on_their_setting(tmp_path, monkeypatch):
    import eval.paper_report as report

    theirs = {"outcome_s0": {"offsupport_centres": 1, "base_test_error": 0.46, "test_error": [0.46, 0.149],
                             "off_max_ever": 1e-4, "off_final": [0.0]},
              "process_s0": {"offsupport_centres": 1, "base_test_error": 0.46, "test_error": [0.46, 0.051],
                             "off_max_ever": 0.999, "off_final": [0.9988]}}
    (tmp_path / "authors.json").write_text(json.dumps(theirs))
    monkeypatch.setattr(report, "AUTHORS_CODE", tmp_path / "authors.json")
    run = {"step": [0, 50], "queries": [0, 1], "test_error": [0.463, 0.152], "centres": [[1e-20], [1e-15]]}
    process = {**run, "test_error": [0.463, 0.052], "centres": [[1e-20], [0.999]]}
    rows = {0: seed_summary({"centre_alpha": [1e-20], "threshold": 1e-12, "base_test_error": 0.463,
                             "runs": {"outcome": run, "process": process}})}
    theirs_setting = {**report.AUTHORS_SETTING, "arms": {arm: report.AUTHORS_ARM for arm in ("outcome", "process")}}
    lines = report.authors_code_rows("linear", rows, theirs_setting)
    assert "| 0 | theirs | 1 | 0.460 | 0.149 | 0.051 | 0.0001 | 0.999 |" in lines
    assert "| 0 | ours | 1 | 0.463 | 0.152 | 0.052 | 1e-15 | 0.999 |" in lines
    shorter = {**report.AUTHORS_ARM, "max_steps": 1500}
    assert report.authors_code_rows("linear", rows, {**theirs_setting, "arms": {"outcome": shorter,
                                                                              "process": report.AUTHORS_ARM}}) == []
    assert report.authors_code_rows("linear", rows, {**theirs_setting, "k": 10}) == []
    assert report.authors_code_rows("transformer", rows, theirs_setting) == []

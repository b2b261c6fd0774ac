"""make scaling and make alpha end to end on the tiny configs: every recorded run's reward queries and discovery
against its own metrics.jsonl, the figure and the report; clusters picked by measured α; checks before any run."""

from __future__ import annotations

import json

import pytest
import yaml

from barrierlab.rundir import read_metrics
from experiments.sweep import ExperimentConfig, run_result, support_clusters
from experiments.sweep import main as experiments_main
from tests.conftest import TINY, one_line_error
from tests.conftest import run_make as make

TARGET, BUDGET = 0.5, 96  # configs/tiny/scaling.yaml and alpha.yaml


def check_runs(results: dict, run_dir) -> None:
    """Each recorded run's queries: those at its first evaluation at the target, else (censored) all it spent; its
    discovery: the first success its metrics recorded, else (censored) all it spent; its α: the step-0 evaluation."""
    for r in results["runs"]:
        rows = read_metrics(run_dir(r) / "metrics.jsonl")
        evals = [row for row in rows if "eval/trained_likelihood" in row]
        first = next((row for row in evals if row["eval/trained_likelihood"] >= TARGET), None)
        spent = rows[-1]["done/reward_queries"]
        if r["censored"]:
            assert first is None and r["queries"] == spent >= BUDGET
        else:
            assert r["queries"] == first["train/reward_queries"]
        found = [row["train/first_success_queries"] for row in rows if "train/first_success_queries" in row]
        assert (r["discovery"], r["discovery_censored"]) == ((found[0], False) if found else (spent, True))
        assert r["base_alpha"] == evals[0]["eval/trained_likelihood"] and evals[0]["step"] == 0


def test_make_scaling_and_alpha_on_tiny_configs(tmp_path, capsys):
    runs = tmp_path / "runs"
    make("scaling", "alpha", "CONFIGS=configs/tiny", f"RUNS={runs}")
    scaling = json.loads((runs / "scaling" / "results.json").read_text())
    arms = {"outcome": ("outcome", "on_policy"), "process": ("process", "on_policy"),
            "best_of_m": ("outcome", "best_of_m"), "token_best_of_m": ("process", "token_best_of_m")}
    assert {(r["arm"], r["reward"], r["behaviour"], r["N"], r["seed"]) for r in scaling["runs"]} == {
        (a, *arms[a], n, s) for a in arms for n in (3, 4) for s in (0, 1)}
    trained = yaml.safe_load((runs / "scaling" / "N3" / "outcome_s0" / "config.yaml").read_text())["prompts"]["clusters"]
    assert trained == [2]  # by default the clusters the base measures off-support: sequence(0), α ≈ 3^-N
    check_runs(scaling, lambda r: runs / "scaling" / f"N{r['N']}" / f"{r['arm']}_s{r['seed']}")
    alpha = json.loads((runs / "alpha" / "results.json").read_text())
    assert [r["cluster"] for r in alpha["runs"]] == [1, 1]  # the tiny config's one cluster, two seeds
    check_runs(alpha, lambda r: runs / "alpha" / f"outcome_c{r['cluster']}_s{r['seed']}")
    for name in ("scaling", "alpha"):
        assert (runs / name / f"{name}.png").stat().st_size > 10_000
        analysis = json.loads((runs / name / "analysis.json").read_text())
        report = (runs / name / "report.md").read_text()
        assert f"budget {BUDGET} reward queries" in report and "Kaplan–Meier median" in report
        assert ("arms" in analysis) == (name == "scaling")

    # a rerun reuses the finished runs, but not those of other settings: a new target is refused before anything is
    # written (the finished runs would answer for the old one)
    written = {p: p.read_bytes() for p in (runs / "scaling").glob("*.*")}
    err = one_line_error(experiments_main, ["--config", "configs/tiny/scaling.yaml", "--out_dir", str(runs / "scaling"),
                                            "--target_likelihood", "0.4"], capsys)
    assert "outcome_s0 already holds a run with a different config (key 'optim.target_likelihood': 0.5 there, 0.4 now)" in err
    assert {p: p.read_bytes() for p in (runs / "scaling").glob("*.*")} == written
    err = one_line_error(experiments_main, ["--config", "configs/tiny/alpha.yaml", "--out_dir", str(runs / "alpha"),
                                            "--extra_args", "['--run.keep_checkpoints', '3']"], capsys)
    assert "alpha/base already holds a run with a different config (key 'run.keep_checkpoints': 2 there, 3 now); pass a new --out_dir" in err
    # the other experiment's folder is not this one's
    err = one_line_error(experiments_main, ["--config", "configs/tiny/alpha.yaml", "--out_dir", str(runs / "scaling")], capsys)
    assert "holds the output of the scaling experiment, not of the alpha experiment" in err


def test_experiments_pick_clusters_by_measured_alpha():
    # designed on-support, measured below the threshold (a base that missed its design): off-support; and the reverse
    clusters = [{"cluster": 0, "designed_alpha": 0.5, "alpha_geomean": 0.4},
                {"cluster": 1, "designed_alpha": 0.05, "alpha_geomean": 8e-4},
                {"cluster": 2, "designed_alpha": 2e-4, "alpha_geomean": 1e-3},
                {"cluster": 3, "designed_alpha": 2e-4, "alpha_geomean": 2e-4}]
    support = {"offsupport_threshold": 1e-3, "clusters": clusters}
    assert support_clusters(support, on=True) == [0, 2]  # alpha's default
    assert support_clusters(support, on=False) == [1, 3]  # scaling's default


@pytest.mark.parametrize("reached", [True, False], ids=["reached", "censored"])
def test_a_learned_rewards_labels_count_in_the_sweeps_queries(tmp_path, reached):
    """A run of a learned PRM (train/label_queries in its evaluation rows, done/label_queries at its end): its
    queries to target and to discovery count the labels whether it reached the target or was censored."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"reward": {"name": "process"}, "algo": {"behaviour": "uniform"}}))
    evals = [{"eval/likelihood": 0.1, "train/reward_queries": 0, "train/label_queries": 500}] * 2
    rows = [{"step": 0, "eval/trained_likelihood": 0.01, **evals[0]},
            {"step": 4, "eval/trained_likelihood": 0.9 if reached else 0.2, **evals[1]},
            {"step": 4, "done/reward_queries": 0, "done/label_queries": 500, "done/first_success_queries": None}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_result(ExperimentConfig(target_likelihood=0.5), run)
    assert (result["queries"], result["censored"]) == (500, not reached)
    assert (result["discovery"], result["discovery_censored"]) == (500, True)


@pytest.mark.parametrize("args, words", [
    (["--clusters", "[9]"], "clusters: [9] not in 0..2 (the clusters of pretrain_config 'configs/tiny/pretrain.yaml')"),
    (["--clusters", "[]"], "clusters: empty list not in 0..2"),
    (["--pretrain_config", "PROFILE"], "has no cluster designed off-support (designed α < 0.06) at N = 3 to train on by default"),
    (["--experiment", "alpha"], "the alpha experiment runs one arm (outcome PG); name exactly one, not 4"),
])
def test_clusters_and_arms_are_checked_before_any_base_is_pretrained(tmp_path, capsys, args, words):
    no_offsupport = tmp_path / "pretrain.yaml"  # the tiny base without its sequence(0) cluster
    no_offsupport.write_text((TINY / "pretrain.yaml").read_text().replace("  - {coverage: sequence, p: 0.0}\n", ""))
    args = [str(no_offsupport) if a == "PROFILE" else a for a in args]
    err = one_line_error(experiments_main, ["--config", "configs/tiny/scaling.yaml", "--out_dir", str(tmp_path / "x"),
                                            *args], capsys)
    assert words in err and not (tmp_path / "x").exists()

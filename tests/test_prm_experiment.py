"""make prm: a smoke run on the tiny configs (two PRMs, one seed), its verdicts on hand-made runs, and its config
checked before anything runs."""

from __future__ import annotations

import json

import pytest

from barrierlab.rundir import read_metrics
from experiments.prm import main as prm_driver
from experiments.prm_analysis import OFF, ON, right_when_accepted, summarise, verdicts
from tests.conftest import one_line_error
from tests.conftest import run_make as make

TWO_PRMS = '{exact_all: configs/prm/train_exact.yaml, implicit: configs/prm/train_implicit.yaml}'


@pytest.mark.slow  # eight stage runs: about 25 s of CPU, a minute on a loaded machine
def test_make_prm_on_tiny_configs(tmp_path):
    make("prm", "CONFIGS=configs/tiny", f"RUNS={tmp_path}", f"ARGS=--seeds [0] --prm_configs '{TWO_PRMS}'")
    out = tmp_path / "prm"
    result = json.loads((out / "prm.json").read_text())
    table = {r["arm"]: r for r in result["table"]}
    assert list(table) == ["outcome", "process", "exact_all", "implicit"]
    rows = {arm: read_metrics(out / f"{arm}_s0" / "metrics.jsonl") for arm in table}
    for arm in ("outcome", "process"):  # the exact arms spend the budget in post-training
        assert rows[arm][-1]["done/stop_reason"] == "max_queries" and rows[arm][-1]["done/reward_queries"] >= 120
    for arm in ("exact_all", "implicit"):  # a PRM arm spends it on labels, then asks nothing, for as many steps
        info = json.loads((out / f"prm_{arm}" / "prm.json").read_text())
        done = rows[arm][-1]
        assert done["done/reward_queries"] == 0 and done["done/label_queries"] == info["label_queries"] <= 120
        assert done["done/steps"] == rows["process"][-1]["done/steps"]
        assert table[arm]["verifier_queries"]["seeds"] == [info["label_queries"]]
        assert table[arm]["labels"]["queries"] == info["label_queries"] and "auc" in table[arm]["quality"]["offsupport"]
    assert table["process"]["offsupport"]["seeds"] == [[r for r in rows["process"] if OFF in r][-1][OFF]]
    report = (out / "report.md").read_text()
    assert "## Verdicts" in report and "| exact_all | exact, all clusters |" in report
    assert (out / "prm.png").stat().st_size > 10_000 and (out / "eval" / "eval.json").exists()


def run(off: float, on: float, queries: int, labels: int | None = None, calls: int | None = None) -> list[dict]:
    """One seed's rows: the base's evaluation, a train row, the final evaluation and the done row."""
    extra = {} if labels is None else {"train/label_queries": labels}
    return [{"step": 0, "eval/likelihood": 0.1, "train/reward_queries": 0, OFF: 1e-5, ON: 0.5, **extra},
            {"step": 5, "train/reward_queries": queries, **({} if calls is None else {"train/prm_calls": calls})},
            {"step": 5, "eval/likelihood": 0.5, "train/reward_queries": queries, OFF: off, ON: on, **extra},
            {"step": 5, "done/steps": 5, "done/reward_queries": queries,
             **({} if labels is None else {"done/label_queries": labels})}]


def test_prm_verdicts_on_hand_made_runs():
    runs = {"process": {0: run(0.3, 0.9, 1000), 1: run(0.2, 0.8, 1010)},
            "mc": {0: run(2e-5, 0.9, 0, 990, 40), 1: run(1e-3, 0.9, 0, 990, 44)}}
    quality = {"mc": {"label_source": "monte_carlo", "clusters": None,
                      "quality": {s: {"auc": 0.5, "accuracy": 0.9, "accept_correct": 0.0, "accept_wrong": 0.0, "correct_share": 0.1}
                                  for s in ("onsupport", "offsupport")}}}
    labels = {"mc": {"queries": 990, "responses": 30, "offsupport_labels": 120, "offsupport_positive": 0,
                     "onsupport_labels": 120, "onsupport_positive": 60}}
    table = summarise(runs, quality, labels)
    process, mc = table
    assert process["breaks"] and process["offsupport"]["mean"] == pytest.approx(0.25) and process["prm_calls"] is None
    assert process["verifier_queries"]["max"] == 1010 and mc["verifier_queries"]["seeds"] == [990, 990]
    assert not mc["breaks"] and mc["prm_calls"]["seeds"] == [40, 44]
    lines = verdicts(table, 4, 8)
    assert lines[0].startswith("**process** breaks the barrier: off-support likelihood 1e-05 → 0.25 [0.2, 0.3]")
    assert lines[1].startswith("**mc** lifts off-support prompts partly")  # mean 5e-4 ≥ 10 × 1e-5, not every seed ≥ 0.1
    assert "held 0 positive labels out of 120 on off-support clusters" in lines[1]
    assert lines[2] == "PRMs whose labels held no positive off-support prefix: mc; of these, none broke the barrier."


def test_right_when_accepted_against_a_hand_case():
    # k = 4: the right token is drawn 1/4 of the time and accepted half the time; each wrong one (3/4) a tenth
    assert right_when_accepted(0.5, 0.1, 4) == pytest.approx((0.25 * 0.5) / (0.25 * 0.5 + 0.75 * 0.1))
    assert right_when_accepted(0.0, 0.0, 4) is None and right_when_accepted(0.0, 0.2, 4) == 0.0


@pytest.mark.parametrize(("args", "words"), [
    (["--prm_configs", "{outcome: configs/prm/train_exact.yaml}"], "name the exact arms"),
    (["--prm_configs", "{a: configs/prm/nowhere.yaml}"], "not found"),
    (["--prm_args", "[--labels.source, exac]"], "prm_args"),
    (["--posttrain_args", "[--run.run_dir, x]"], "which the driver sets"),
    (["--posttrain_args", "[--reward.name, noisy_process]"], "--reward.name would override reward.name"),
    (["--posttrain_args", "[--optim.max_steps, '5']"], "--optim.max_steps would override optim.max_steps"),
])
def test_bad_prm_experiment_config_is_one_line_before_anything_runs(tmp_path, capsys, args, words):
    out = tmp_path / "prm"
    err = one_line_error(prm_driver, ["--config", "configs/tiny/prm.yaml", "--out_dir", str(out), *args], capsys)
    assert words in err and not out.exists()

"""``reward.name: learned_prm``: a hand-set PRM's verdicts, selection by name in both backends (its calls and its
labelling cost logged apart from the verifier queries), and the bad PRM folders refused in one line."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

from barrierlab.models import LinearPolicyConfig, LinearPolicyLM
from barrierlab.prm import PRM_FILE
from barrierlab.tokenizer import build_tokenizer, prompt_ids, vocab_size
from posttrain.__main__ import main as posttrain
from rewards import RewardConfig, make_reward
from rewards.train_prm.__main__ import main as train_prm
from tests.conftest import TINY, metrics, one_line_error


def hand_implicit_prm(path, p: float = 0.9, beta: float = 1.0):
    """An implicit PRM folder by hand, k = 2: π_ref uniform, π_φ draws symbol 0 with probability ``p`` after any
    prefix. Each 0 adds β log(2p) to a prefix's log-odds, each 1 adds β log(2(1 − p))."""
    for name, logit in (("model", math.log(p / (1 - p))), ("reference", 0.0)):
        model = LinearPolicyLM(LinearPolicyConfig(d=2, k=2, vocab_size=vocab_size(2)))
        with torch.no_grad():
            model.W2[0] = logit
        model.save_pretrained(path / name)
        build_tokenizer(2).save_pretrained(path / name)
    task = {"task": {"k": 2, "N": 4, "d": 2, "seed": 0}, "task_state": None}
    (path / PRM_FILE).write_text(json.dumps({"kind": "implicit", "beta": beta, "label_source": "implicit",
                                             "label_queries": 123, "task": task}))
    return path


def test_hand_set_prm_verdicts_and_soft_values(tmp_path):
    run = hand_implicit_prm(tmp_path / "prm")
    responses = torch.tensor([[0, 1, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0]])
    prompts, columns = prompt_ids(torch.zeros(3, 2, dtype=torch.long)), {"target": torch.zeros(3, 4, dtype=torch.long)}
    reward = make_reward(RewardConfig(name="learned_prm", params={"run": str(run)}))
    up, down = math.log(1.8), math.log(0.2)  # a right 0 adds 0.588, a 1 subtracts 1.609
    logodds = torch.tensor([[up, up + down, 2 * up + down, 3 * up + down],
                            [up, 2 * up, 3 * up, 3 * up + down],
                            [down, down + up, down + 2 * up, down + 3 * up]])
    out = reward(prompts, responses, columns)
    assert out.queries == 0 and reward.model_calls() == 12 and reward.label_queries == 123
    assert out.values.tolist() == (logodds > 0).float().tolist()
    assert out.values.tolist() == [[1, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 1]]
    soft = make_reward(RewardConfig(name="learned_prm", signed=True, params={"run": str(run), "soft": True}))
    assert torch.allclose(soft(prompts, responses, columns).values, 2 * torch.sigmoid(logodds) - 1, atol=1e-5)
    strict = make_reward(RewardConfig(name="learned_prm", params={"run": str(run), "threshold": 0.7}))
    assert strict(prompts, responses, columns).values.tolist() == (torch.sigmoid(logodds) > 0.7).float().tolist()
    ok, queries = reward.check_last(prompts, responses[:, :2], columns)  # token-wise search asks the last prefix only
    assert ok.tolist() == [False, True, False] and queries == 0 and reward.model_calls() == 15
    reward.load_state_dict({"calls": 4})
    assert reward.state_dict() == {"calls": 4}


@pytest.fixture(scope="module")
def tiny_prm(tiny_base, tmp_path_factory):
    run = tmp_path_factory.mktemp("prm") / "exact"
    train_prm(["--base", str(tiny_base), "--run.run_dir", str(run), "--labels.query_budget", "200",
               "--labels.ystar_share", "0.5", "--train.steps", "10", "--train.eval_every", "10", "--run.progress", "false"])
    return run


@pytest.mark.parametrize("backend", ["native", "trl"])
def test_learned_prm_is_selected_by_name_in_both_backends(tiny_base, tiny_prm, tmp_path, backend):
    run = tmp_path / backend
    extra = ["--algo.behaviour", "token_best_of_m", "--algo.m", "4"] if backend == "native" else \
        ["--backend", "trl", "--algo.group_size", "2"]
    posttrain(["--config", str(TINY / "posttrain_process.yaml"), "--base", str(tiny_base), "--run.run_dir", str(run),
               "--reward.name", "learned_prm", "--reward.params", f"{{run: {tiny_prm}}}", "--optim.max_steps", "3",
               "--optim.batch_size", "8", "--eval.eval_every", "3", *extra])
    label_queries = json.loads((tiny_prm / PRM_FILE).read_text())["label_queries"]
    rows = metrics(run)
    train = [r for r in rows if "train/reward_mean" in r]
    assert [r["train/reward_queries"] for r in train] == [0, 0, 0]  # the verifier is never asked
    calls = [r["train/prm_calls"] for r in train]
    assert calls[0] > 0 and calls == sorted(calls)
    if backend == "trl":  # every response scored once, all N = 3 prefixes
        assert calls == [8 * 3, 16 * 3, 24 * 3]
    evals = [r for r in rows if "eval/likelihood" in r]
    assert evals and all(r["train/label_queries"] == label_queries for r in evals)
    assert rows[-1]["done/label_queries"] == label_queries and rows[-1]["done/reward_queries"] == 0


def broken(kind: str, tiny_prm, tiny_base, tmp_path):
    """A PRM folder that must be refused: missing, not a PRM, unfinished, or of another task."""
    if kind == "missing":
        return tmp_path / "nowhere", "does not exist"
    if kind == "not_a_prm":
        return tiny_base, "is not a PRM"
    copy = tmp_path / kind
    shutil.copytree(tiny_prm, copy)
    if kind == "unfinished":
        (copy / PRM_FILE).unlink()
        return copy, "has not finished"
    info = json.loads((copy / PRM_FILE).read_text())
    info["task"]["task"][{"other_k": "k", "other_N": "N", "other_task": "seed"}[kind]] += 1
    (copy / PRM_FILE).write_text(json.dumps(info))
    return copy, "trained for another task"


@pytest.mark.parametrize("kind", ["missing", "not_a_prm", "unfinished", "other_k", "other_N", "other_task"])
def test_bad_prm_folders_are_one_line_before_anything_is_written(tiny_base, tiny_prm, tmp_path, capsys, kind):
    folder, message = broken(kind, tiny_prm, tiny_base, tmp_path)
    run = tmp_path / "run"
    err = one_line_error(posttrain, ["--config", str(TINY / "posttrain_process.yaml"), "--base", str(tiny_base),
                                     "--run.run_dir", str(run), "--reward.name", "learned_prm",
                                     "--reward.params", f"{{run: {folder}}}"], capsys)
    assert message in err and not run.exists()


def test_learned_prm_without_a_folder_says_how_to_give_one(tiny_base, tmp_path, capsys):
    err = one_line_error(posttrain, ["--config", str(TINY / "posttrain_process.yaml"), "--base", str(tiny_base),
                                     "--run.run_dir", str(tmp_path / "run"), "--reward.name", "learned_prm"], capsys)
    assert "needs params.run" in err


def test_eval_measures_prm_quality_per_split_and_cluster(tiny_base, tiny_prm, tmp_path):
    from eval.__main__ import main as evaluate

    out = tmp_path / "eval"
    argv = ["--config", str(TINY / "eval.yaml"), "--base", str(tiny_base), "--out_dir", str(out), "--progress", "false",
            "--prms.exact", str(tiny_prm)]
    evaluate([*argv, "--prm_samples", "3"])
    results = json.loads((out / "eval.json").read_text())
    prm = results["prms"]["exact"]
    assert prm["label_queries"] == json.loads((tiny_prm / PRM_FILE).read_text())["label_queries"]
    quality, N = prm["quality"], results["N"]
    prompts = results["prompts"]
    assert set(quality) == {"all", "onsupport", "offsupport", "c0", "c1", "c2"}
    for split in ("all", "onsupport", "offsupport"):  # every prefix of 3 base draws and of y*, per prompt
        assert quality[split]["prefixes"] == prompts[split] * 4 * N
    assert sum(quality[f"c{c}"]["prefixes"] for c in range(3)) == quality["all"]["prefixes"]
    assert all(0 <= q["auc"] <= 1 and 0 <= q["accuracy"] <= 1 for q in quality.values())
    assert "## Learned PRMs" in (out / "report.md").read_text()
    evaluate([*argv, "--prm_samples", "0"])  # y* alone: every prefix correct, so accuracy is the share accepted
    quality = json.loads((out / "eval.json").read_text())["prms"]["exact"]["quality"]
    assert quality["all"]["auc"] is None and quality["all"]["correct_share"] == 1.0


def test_eval_refuses_a_prm_of_another_task_in_one_line(tiny_base, tiny_prm, tmp_path, capsys):
    from eval.__main__ import main as evaluate

    folder, message = broken("other_N", tiny_prm, tiny_base, tmp_path)
    err = one_line_error(evaluate, ["--config", str(TINY / "eval.yaml"), "--base", str(tiny_base), "--out_dir",
                                    str(tmp_path / "eval"), "--prms.bad", str(folder)], capsys)
    assert message in err and not (tmp_path / "eval").exists()


def test_figures_and_hitting_times_count_a_prms_labels_as_verifier_queries():
    from eval.analysis import queries_to_reach
    from eval.figures import _series

    rows = [{"step": 0, "eval/likelihood": 0.1, "train/reward_queries": 0, "train/label_queries": 500},
            {"step": 5, "eval/likelihood": 0.6, "train/reward_queries": 0, "train/label_queries": 500}]
    assert _series(rows, "eval/likelihood")[0].tolist() == [500, 500]
    assert _series(rows, "eval/likelihood", "step")[0].tolist() == [0, 5]
    assert queries_to_reach(rows, "eval/likelihood", 0.5) == (500, False)
    verifier = [{k: v for k, v in r.items() if k != "train/label_queries"} for r in rows]  # an exact verifier's run
    assert queries_to_reach(verifier, "eval/likelihood", 0.5) == (0, False)


def test_a_damaged_prm_record_is_one_line(tiny_prm, tmp_path):
    from barrierlab.errors import UserError
    from barrierlab.prm import load_prm

    copy = tmp_path / "damaged"
    shutil.copytree(tiny_prm, copy)
    (copy / PRM_FILE).write_text('{"kind": "classifier"')
    with pytest.raises(UserError, match="is not a PRM's record"):
        load_prm(copy)

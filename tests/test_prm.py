"""Learned PRMs: the model's Auto-class round trip, each label source against hand cases (labels and the verifier
queries they cost), the implicit reward's algebra, AUC, and the training stage end to end."""

from __future__ import annotations

import json

import pytest
import torch

from barrierlab.models import LinearPolicyConfig, LinearPolicyLM, ModelConfig, build_model
from barrierlab.prm import (
    PRM,
    auc,
    build_classifier,
    classifier_logits,
    implicit_token_rewards,
    load_prm,
    prefix_quality,
)
from barrierlab.tasks import TaskConfig, build_task
from barrierlab.tokenizer import build_tokenizer, prompt_ids, vocab_size
from rewards.train_prm.__main__ import main as train_prm
from rewards.train_prm.config import LabelConfig
from rewards.train_prm.labels import exact_labels, make_labels, monte_carlo_labels
from tests.conftest import metrics, one_line_error


def constant_policy(d: int, k: int, symbol: int | None) -> LinearPolicyLM:
    """A log-linear policy that always draws ``symbol`` (None: uniform), whatever the prompt and prefix."""
    model = LinearPolicyLM(LinearPolicyConfig(d=d, k=k, vocab_size=vocab_size(k)))
    with torch.no_grad():
        if symbol is not None:
            model.W2[symbol] = 60.0  # a logit 60 above the others in every column: probability 1 - 1e-26
    return model.eval()


PROMPTS = prompt_ids(torch.zeros(3, 2, dtype=torch.long))
TARGETS = torch.zeros(3, 3, dtype=torch.long)


def test_exact_labels_and_their_queries():
    responses = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0]])
    labels, rows, queries = exact_labels(PROMPTS, responses, TARGETS, float("inf"))
    assert labels.tolist() == [[1, 1, 1], [0, 0, 0], [1, 0, 0]]
    assert (rows, queries) == (3, 3 + 1 + 2)  # checked up to and including the first wrong prefix
    labels, rows, queries = exact_labels(PROMPTS, responses, TARGETS, 5)  # room for one response of N = 3 only
    assert (labels.tolist(), rows, queries) == ([[1, 1, 1]], 1, 3)


def test_monte_carlo_labels_and_their_queries():
    base = constant_policy(2, 2, symbol=0)  # completes every prefix with 0s: y* = 000 is reached from 0-prefixes only
    responses = torch.tensor([[1, 0, 0], [0, 0, 1]])
    labels, queries = monte_carlo_labels(base, PROMPTS[:2], responses, TARGETS[:2], M=3, k=2, soft=False)
    assert labels.tolist() == [[0, 0, 0], [1, 1, 0]]
    assert queries == 2 * ((3 - 1) * 3 + 1)
    soft, _ = monte_carlo_labels(base, PROMPTS[:2], responses, TARGETS[:2], M=3, k=2, soft=True)
    assert soft.tolist() == labels.tolist()


def test_monte_carlo_soft_labels_are_the_share_of_successes():
    base = constant_policy(2, 2, symbol=None)  # uniform: a correct prefix of length i succeeds with 2^-(N-i)
    labels, _ = monte_carlo_labels(base, PROMPTS[:1], TARGETS[:1], TARGETS[:1], M=4000, k=2, soft=True,
                                   generator=torch.Generator().manual_seed(0))
    assert labels[0, 2].item() == 1.0
    assert labels[0, 1].item() == pytest.approx(0.5, abs=0.03)
    assert labels[0, 0].item() == pytest.approx(0.25, abs=0.03)


def tiny_task():
    return build_task(TaskConfig(d=4, k=2, N=3, flip_prob=0.0), num_clusters=2)


@pytest.mark.parametrize(("source", "budget", "rows", "queries"), [
    ("exact", 10, 3, 9),  # y* only: N = 3 queries each, while 3 more fit in 10
    ("monte_carlo", 20, 2, 14),  # (N - 1)·M + 1 = 7 each
    ("implicit", 7, 7, 7),  # one outcome query each
])
def test_make_labels_charges_within_the_budget(source, budget, rows, queries):
    task = tiny_task()
    cfg = LabelConfig(source=source, responses=100, query_budget=budget, ystar_share=1.0 if source == "exact" else 0.0,
                      completions=3, batch_size=4)
    labels = make_labels(cfg, constant_policy(4, 2, symbol=None), task, torch.Generator().manual_seed(0))
    assert labels.responses.shape[0] == rows and labels.queries == queries
    if source == "exact":
        assert labels.labels.eq(1).all() and labels.responses.equal(labels.targets)
    if source == "implicit":
        assert labels.labels.shape == (rows, 1)
        assert labels.labels[:, 0].tolist() == (labels.responses == labels.targets).all(-1).float().tolist()


def test_make_labels_draws_only_the_configured_clusters():
    cfg = LabelConfig(source="implicit", responses=40, clusters=[1])
    labels = make_labels(cfg, constant_policy(4, 2, None), tiny_task(), torch.Generator().manual_seed(0))
    assert labels.clusters.eq(1).all() and labels.queries == 40


def test_implicit_prefix_rewards_sum_to_the_sequence_reward():
    torch.manual_seed(0)
    policy, reference = constant_policy(2, 3, None), constant_policy(2, 3, None)
    with torch.no_grad():
        policy.W1.normal_()
        policy.W2.normal_()
        reference.W2.normal_()
    responses = torch.tensor([[0, 1, 2, 2], [2, 2, 1, 0], [1, 0, 0, 1]])
    prompts = prompt_ids(torch.tensor([[0, 1], [1, 1], [1, 0]]))
    beta = 0.7
    per_token = implicit_token_rewards(policy, reference, prompts, responses, 3, beta)
    from barrierlab.policy import token_logprobs

    sequence = beta * (token_logprobs(policy, prompts, responses, 3).sum(-1)
                       - token_logprobs(reference, prompts, responses, 3).sum(-1))
    assert torch.allclose(per_token.sum(-1), sequence, atol=1e-6)
    prm = PRM(None, {"kind": "implicit", "beta": beta, "task": {"task": {"k": 3}}}, policy, reference)
    logits = prm.prefix_logits(prompts, responses)
    assert torch.allclose(logits[:, -1], sequence, atol=1e-6)
    assert torch.allclose(logits.diff(dim=-1), per_token[:, 1:], atol=1e-6)  # each step's process reward


def test_auc_against_hand_cases():
    truth = torch.tensor([False, False, True, True])
    assert auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), truth) == 0.75
    assert auc(torch.tensor([0.5, 0.5, 0.5, 0.5]), truth) == 0.5
    assert auc(torch.tensor([0.1, 0.2, 0.3, 0.4]), truth) == 1.0
    assert auc(torch.tensor([0.1, 0.2]), torch.tensor([True, True])) is None


def test_prefix_quality_against_a_hand_case():
    probs = torch.tensor([0.9, 0.6, 0.2, 0.7, 0.1])
    truth = torch.tensor([True, True, True, False, False])
    # AUC: of the 6 (correct, wrong) pairs, 4 rank the correct prefix higher
    assert prefix_quality(probs, truth) == pytest.approx({"auc": 4 / 6, "accuracy": 0.6, "accept_correct": 2 / 3,
                                                          "accept_wrong": 0.5, "prefixes": 5, "correct_share": 0.6})


def test_classifier_round_trips_through_the_auto_classes(tmp_path):
    from transformers import AutoModelForTokenClassification

    base = build_model(ModelConfig(layers=1, width=16, heads=2, context=16), d=4, k=3, seed=0)
    prm = build_classifier(base, init_from_base=True).eval()
    assert torch.equal(prm.model.embed_tokens.weight, base.model.embed_tokens.weight)
    prm.save_pretrained(tmp_path)
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path).eval()
    assert type(loaded).__name__ == "LlamaForTokenClassification" and loaded.config.num_labels == 1
    prompts, responses = prompt_ids(torch.tensor([[0, 1, 1, 0], [1, 1, 0, 0]])), torch.tensor([[0, 2, 1], [1, 1, 1]])
    with torch.no_grad():
        assert torch.equal(classifier_logits(prm, prompts, responses), classifier_logits(loaded, prompts, responses))
    # the log-odds of prefix i see y_1..y_i only: changing y_3 leaves the first two prefixes' scores as they were
    other = responses.clone()
    other[:, 2] = 0
    with torch.no_grad():
        a, b = classifier_logits(prm, prompts, responses), classifier_logits(prm, prompts, other)
    assert torch.equal(a[:, :2], b[:, :2]) and not torch.equal(a[:, 2], b[:, 2])
    assert build_tokenizer(3)  # the tokenizer a PRM folder holds is the base's


@pytest.mark.parametrize("source", ["exact", "monte_carlo", "implicit"])
def test_train_prm_stage_writes_a_loadable_prm(tiny_base, tmp_path, source):
    run = tmp_path / source
    argv = ["--base", str(tiny_base), "--run.run_dir", str(run), "--labels.source", source, "--labels.query_budget", "300",
            "--labels.ystar_share", "0.25" if source == "exact" else "0", "--train.steps", "20", "--train.eval_every", "10",
            "--run.progress", "false", "--run.checkpoint_every", "10"]
    train_prm(argv)
    info = json.loads((run / "prm.json").read_text())
    rows = metrics(run)
    assert rows[0]["label/queries"] == info["label_queries"] <= 300
    assert rows[-1]["done/label_queries"] == info["label_queries"]
    assert {"eval/prm_auc_onsupport", "eval/prm_accuracy_offsupport"} <= set(rows[-2])
    prm = load_prm(run, json.loads((tiny_base / "model" / "task.json").read_text()))
    assert prm.kind == ("implicit" if source == "implicit" else "classifier")
    probs = prm.prefix_probs(prompt_ids(torch.zeros(2, 6, dtype=torch.long)), torch.zeros(2, 3, dtype=torch.long))
    assert probs.shape == (2, 3) and ((probs > 0) & (probs < 1)).all()


def test_train_prm_resumes_to_the_same_prm(tiny_base, tmp_path):
    argv = ["--base", str(tiny_base), "--labels.query_budget", "200", "--train.steps", "20", "--train.eval_every", "10",
            "--run.progress", "false", "--run.checkpoint_every", "10"]
    train_prm([*argv, "--run.run_dir", str(tmp_path / "whole")])
    train_prm([*argv, "--run.run_dir", str(tmp_path / "cut")])
    cut = tmp_path / "cut"
    (cut / "prm.json").unlink()  # as if killed after the checkpoint at step 10: its later lines and files gone
    (cut / "metrics.jsonl").write_text("".join(line + "\n" for line in (cut / "metrics.jsonl").read_text().splitlines()
                                               if json.loads(line)["step"] <= 10))
    train_prm([*argv, "--run.run_dir", str(cut)])
    timeless = lambda rows: [{k: v for k, v in r.items() if k != "done/wall_time_s"} for r in rows]  # noqa: E731
    assert timeless(metrics(cut)) == timeless(metrics(tmp_path / "whole"))
    from safetensors.torch import load_file

    a, b = load_file(str(cut / "model" / "model.safetensors")), load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize(("args", "message"), [
    (["--labels.query_budget", "2"], "cannot pay for one response"),
    (["--labels.clusters", "[7]"], "not among the base's clusters"),
    (["--labels.source", "implicit", "--labels.ystar_share", "0.5"], "known only to an exact labeller"),
])
def test_train_prm_bad_input_is_one_line_before_anything_is_written(tiny_base, tmp_path, capsys, args, message):
    run = tmp_path / "prm"
    err = one_line_error(train_prm, ["--base", str(tiny_base), "--run.run_dir", str(run), *args], capsys)
    assert message in err and not run.exists()


def test_damaged_labels_are_one_line_and_left_as_they_are(tiny_base, tmp_path, capsys):
    run = tmp_path / "prm"
    argv = ["--base", str(tiny_base), "--run.run_dir", str(run), "--labels.query_budget", "60", "--train.steps", "2",
            "--train.eval_every", "2", "--run.progress", "false"]
    train_prm(argv)
    (run / "prm.json").unlink()  # unfinished, as if killed: its rerun reads the labels it paid for
    labels = run / "data" / "labels.pt"
    labels.write_bytes(labels.read_bytes()[:100])
    damaged = labels.read_bytes()
    err = one_line_error(train_prm, argv, capsys)
    assert "labels.pt' cannot be loaded" in err and "delete it to label again" in err
    assert labels.read_bytes() == damaged and not (run / "prm.json").exists()

"""Discovery bookkeeping (first-success queries) and the step without signal, which must equal the full step."""

from __future__ import annotations

import pytest
import torch

from barrierlab.models import ModelConfig, build_model
from barrierlab.policy import ResponseLogits
from barrierlab.tokenizer import answer_ids, prompt_ids
from posttrain.discovery import Discovery
from posttrain.loss import policy_gradient_loss
from posttrain.native import zero_gradients
from tests.conftest import metrics, run_stage

TARGET = torch.tensor([[2, 0, 1]] * 4)


def test_first_success_on_a_hand_built_run():
    d = Discovery(3)
    # batch 1 (queries 0..4): row 1 gets y*_1 right, row 3 y*_1:2; nothing fully right
    d.update(torch.tensor([[0, 0, 0], [2, 1, 1], [1, 1, 1], [2, 0, 2]]), TARGET, None, before=0, spent=4,
             one_per_row=True)
    assert (d.success, d.prefix) == (None, [2, 4, None])
    assert d.pop_new() == {"train/first_prefix_queries": [2, 4, None]} and d.pop_new() == {}
    # batch 2 (queries 4..8), charged to the step (a search): y* in row 2, a longer prefix than before in row 0
    d.update(torch.tensor([[2, 0, 0], [0, 0, 0], [2, 0, 1], [2, 0, 1]]), TARGET, None, before=4, spent=4,
             one_per_row=False)
    assert (d.success, d.prefix) == (8, [2, 4, 8])  # earlier discoveries are kept
    assert d.pop_new() == {"train/first_prefix_queries": [2, 4, 8], "train/first_success_queries": 8}
    # once y* is found, later batches change nothing
    d.update(TARGET.clone(), TARGET, None, before=8, spent=4, one_per_row=True)
    assert d.success == 8 and d.pop_new() == {}
    assert d.done_metrics() == {"done/first_success_queries": 8, "done/first_prefix_queries": [2, 4, 8]}
    again = Discovery(3)
    again.load_state_dict(d.state_dict())
    assert (again.success, again.prefix) == (8, [2, 4, 8])


def test_a_masked_position_is_not_a_discovery():
    """A token-wise search that stopped before position 2 left a placeholder there, right by chance: not sampled."""
    d = Discovery(3)
    mask = torch.tensor([[1.0, 1.0, 0.0]] * 4)
    d.update(TARGET.clone(), TARGET, mask, before=10, spent=6, one_per_row=False)
    assert (d.success, d.prefix) == (None, [16, 16, None])


def test_sync_takes_the_earliest_process():
    d = Discovery(2)
    d.update(torch.tensor([[1, 0]]), torch.tensor([[1, 1]]), None, before=0, spent=9, one_per_row=False)
    d.pop_new()
    d.sync(lambda t: torch.minimum(t, torch.tensor([4.0, 7.0])))  # another process found both earlier
    assert (d.success, d.prefix) == (7, [4, 7])
    assert d.pop_new() == {"train/first_prefix_queries": [4, 7], "train/first_success_queries": 7}


K, N, D, B = 4, 3, 6, 8


def _step(model, optimizer, rollout, adv, skip: bool):
    learner = ResponseLogits(model, answer_ids(K))
    if skip:
        zero_gradients(learner)
    else:
        loss, _ = policy_gradient_loss(learner, rollout, adv, K)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(learner.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


OPTIMISERS = {"adam": lambda p: torch.optim.Adam(p, lr=0.01), "adagrad": lambda p: torch.optim.Adagrad(p, lr=0.1),
              "sgd": lambda p: torch.optim.SGD(p, lr=0.1), "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)}


def _train(name: str, steps: list[str]):
    """Weights and optimiser state after ``steps`` of a fresh model: "signal" (a real step), "full_zero" (the full step
    on all-zero advantages), "zero" (the loop's zero-gradient step) or "none" (left out)."""
    g = torch.Generator().manual_seed(0)
    bits = torch.randint(0, 2, (B, D), generator=g)
    rollout = type("R", (), {"prompts": prompt_ids(bits), "responses": torch.randint(0, K, (B, N), generator=g),
                             "mask": torch.ones(B, N)})()
    signal, zeros = torch.randn(B, N, generator=g), torch.zeros(B, N)
    model = build_model(ModelConfig(layers=1, width=16, heads=2, context=16), d=D, k=K, seed=0)
    optimizer = OPTIMISERS[name](model.parameters())
    for kind in steps:
        if kind != "none":
            _step(model, optimizer, rollout, signal if kind == "signal" else zeros, skip=kind == "zero")
    return [p.detach().clone() for p in model.parameters()], optimizer.state_dict()["state"]


def _assert_same(a, b, ignore: frozenset = frozenset()):
    (w_a, s_a), (w_b, s_b) = a, b
    assert all(torch.equal(x, y) for x, y in zip(w_a, w_b))
    for i in s_a:
        for key, value in s_a[i].items():
            if key not in ignore:
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(s_b[i][key])), (i, key)


@pytest.mark.parametrize("name", ["adam", "adagrad", "sgd_momentum"])
def test_a_step_without_signal_equals_the_full_step(name):
    """Weights and optimiser state after a no-signal step are bitwise those of the full step, also after a real step
    has given Adam non-zero moments (its zero-gradient step still moves the weights: skipping the step would not)."""
    full = _train(name, ["signal"] + ["full_zero"] * 3)  # the loss's own backward of all-zero advantages
    _assert_same(full, _train(name, ["signal"] + ["zero"] * 3))


def test_a_run_logs_its_discovery(tiny_base, tmp_path):
    """posttrain records the first success in metrics.jsonl, at its step and in the done/ line."""
    run_stage("posttrain", "--config", "configs/tiny/posttrain_outcome.yaml", "--base", str(tiny_base),
              "--run.run_dir", str(tmp_path / "run"), "--optim.max_steps", "6", "--run.progress", "false")
    rows = metrics(tmp_path / "run")
    found = [r for r in rows if "train/first_success_queries" in r]
    done = rows[-1]
    assert len(found) <= 1 and done["done/first_success_queries"] == (found[0]["train/first_success_queries"]
                                                                       if found else None)
    assert len(done["done/first_prefix_queries"]) == 3



@pytest.mark.parametrize("name", ["adagrad", "sgd"])
def test_a_memoryless_optimiser_may_leave_out_the_step_without_signal(name):
    """Adagrad (lr_decay 0) and SGD without momentum, as posttrain builds them: leaving a no-signal step out entirely
    changes no weight and no state a later step reads (Adagrad's step count feeds only lr_decay), so the next real
    step lands bitwise where it lands after the zero-gradient steps."""
    _assert_same(_train(name, ["signal", "zero", "zero", "zero", "signal"]), _train(name, ["signal", "none", "signal"]),
                 ignore=frozenset({"step"}))

class CountingSource:
    """Prompts numbered in draw order (bit patterns of the row index), so a test can see which draw a row came from."""

    def __init__(self):
        self.draws = []

    def draw(self, n):
        start = sum(self.draws)
        self.draws.append(n)
        rows = torch.arange(start, start + n)
        bits = (rows[:, None] >> torch.arange(D)) & 1
        return prompt_ids(bits), {"target": torch.zeros(n, N, dtype=torch.long), "cluster": rows}


def test_steps_are_sampled_ahead_only_while_the_policy_is_at_rest():
    from posttrain.behaviour import Sampler, StepBatches

    model = build_model(ModelConfig(layers=1, width=16, heads=2, context=16), d=D, k=K, seed=0).eval()
    sampler = Sampler(model, None, None, K, N, 1.0, 0.5, 4, torch.Generator().manual_seed(0))
    source = CountingSource()
    batches = StepBatches("on_policy", sampler, source, prompts_per_step=2, G=2, device="cpu", ahead=3)
    first = batches.next(at_rest=True)
    assert source.draws == [6] and first[0].shape == (4, D + 2) and first[2].shape == (4, N)
    assert first[1]["cluster"].tolist() == [0, 0, 1, 1]  # G copies of each prompt, in draw order
    saved = batches.state_dict()
    second = batches.next(at_rest=True)
    assert source.draws == [6] and second[1]["cluster"].tolist() == [2, 2, 3, 3]  # from the pool, no new draw
    again = StepBatches("on_policy", sampler, CountingSource(), prompts_per_step=2, G=2, device="cpu", ahead=3)
    again.load_state_dict(saved)  # a resumed run continues the same pool
    assert torch.equal(again.next(at_rest=True)[2], second[2])
    moved = batches.next(at_rest=False)  # the policy has learnt: the pool's last step is dropped, one step drawn
    assert source.draws == [6, 2] and moved[1]["cluster"].tolist() == [6, 6, 7, 7]
    assert batches.pool == {}
    for _ in range(4):  # at rest again after a signal: the draws grow from one step, doubling up to ahead = 3
        batches.next(at_rest=True)
    assert source.draws == [6, 2, 2, 4, 6]
    others = StepBatches("mixture", sampler, source, prompts_per_step=2, G=2, device="cpu", ahead=3)
    assert others.next(at_rest=True)[2] is None and source.draws[-1] == 2  # collect draws them, step by step


def test_a_policy_at_rest_is_not_evaluated_again(tiny_base, tmp_path):
    """Adagrad's zero-gradient step is the identity: after a step without signal the policy equals its last evaluation,
    so an evaluation due then is skipped (two equal evaluations in a row would mean one was not skipped)."""
    run_stage("posttrain", "--config", "configs/tiny/posttrain_outcome.yaml", "--base", str(tiny_base),
              "--run.run_dir", str(tmp_path / "run"), "--optim.optimizer", "adagrad", "--optim.max_steps", "12",
              "--eval.eval_every", "1", "--optim.batch_size", "4", "--run.progress", "false")
    evals = [r["eval/likelihood"] for r in metrics(tmp_path / "run") if "eval/likelihood" in r]
    assert 2 <= len(evals) < 13  # some steps had signal, some did not
    assert all(a != b for a, b in zip(evals[:-2], evals[1:-1]))  # only the last step may repeat the one before

"""Exact reward values and queries for every built-in reward and value convention; selection by name or path."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from barrierlab.errors import UserError
from rewards import RewardConfig, RewardModel, correct_prefixes, make_reward

TARGET = torch.tensor([[1, 2, 3], [1, 2, 3], [1, 2, 3]])
RESPONSES = torch.tensor([[1, 2, 3], [1, 2, 0], [0, 2, 3]])
COLUMNS = {"target": TARGET}


def score(name, signed=False, **params):
    out = make_reward(RewardConfig(name=name, signed=signed, params=params))(None, RESPONSES, COLUMNS)
    return out.values.tolist(), out.queries


def test_outcome_values_and_queries():
    assert score("outcome") == ([[1, 1, 1], [0, 0, 0], [0, 0, 0]], 3)
    assert score("outcome", signed=True) == ([[1, 1, 1], [-1, -1, -1], [-1, -1, -1]], 3)


def test_process_values_and_queries():
    # prefix checks stop at the first rejected prefix: 3 + 3 (third rejected) + 1 = 7 queries
    assert score("process") == ([[1, 1, 1], [1, 1, 0], [0, 0, 0]], 7)
    assert score("process", signed=True) == ([[1, 1, 1], [1, 1, -1], [-1, -1, -1]], 7)
    # checking every prefix: 3 per response
    assert score("process", stop_at_first_error=False) == ([[1, 1, 1], [1, 1, 0], [0, 0, 0]], 9)


def test_noisy_rewards_flip_every_verdict_at_probability_one():
    assert score("noisy_outcome", flip_prob=1.0) == ([[0, 0, 0], [1, 1, 1], [1, 1, 1]], 3)
    assert score("noisy_process", flip_prob=1.0, stop_at_first_error=False) == ([[0, 0, 0], [0, 0, 1], [1, 1, 1]], 9)
    # with stop_at_first_error the first (flipped) rejection ends the checks of the first response
    assert score("noisy_process", flip_prob=1.0) == ([[0, 0, 0], [0, 0, 0], [1, 1, 1]], 1 + 1 + 3)
    # ±1: a flipped rejection is -1, after a false rejection the rest of the response is rejected too
    assert score("noisy_outcome", signed=True, flip_prob=1.0) == ([[-1, -1, -1], [1, 1, 1], [1, 1, 1]], 3)
    assert score("noisy_process", signed=True, flip_prob=1.0) == ([[-1, -1, -1], [-1, -1, -1], [1, 1, 1]], 5)
    assert score("noisy_process", signed=True, flip_prob=1.0, stop_at_first_error=False) == (
        [[-1, -1, -1], [-1, -1, 1], [1, 1, 1]], 9)
    assert score("noisy_outcome", signed=True, flip_prob=0.0) == score("outcome", signed=True)


def test_noisy_flip_frequency():
    reward = make_reward(RewardConfig(name="noisy_outcome", params={"flip_prob": 0.2, "seed": 3}))
    target = torch.zeros(20000, 4, dtype=torch.long)
    out = reward(None, target.clone(), {"target": target})
    assert abs((out.values[:, 0] == 0).double().mean().item() - 0.2) < 0.012


def test_noisy_state_resumes_the_same_noise():
    reward = make_reward(RewardConfig(name="noisy_outcome", params={"flip_prob": 0.5}))
    state = reward.state_dict()
    first = reward(None, RESPONSES, COLUMNS).values
    reward.load_state_dict(state)
    assert torch.equal(first, reward(None, RESPONSES, COLUMNS).values)


def test_user_reward_by_import_path():
    values, queries = score("tests.user_reward:ParityReward")
    assert values == [[1, 1, 1], [0, 0, 0], [0, 0, 0]] and queries == 3  # sums 6, 3, 5
    values, _ = score("tests.user_reward:ParityReward", modulus=3)
    assert values == [[1, 1, 1], [1, 1, 1], [0, 0, 0]]


@pytest.mark.parametrize(
    "name, params, words",
    [
        ("outcom", {}, "unknown reward 'outcom'; available: outcome, process, noisy_outcome, noisy_process"),
        ("tests.no_such_module:Thing", {}, "cannot import module 'tests.no_such_module'"),
        ("tests.user_reward:Missing", {}, "has no 'Missing'"),
        ("tests.user_reward:NotAReward", {}, "is not a subclass of rewards.RewardModel; subclass it"),
        ("tests.user_reward:BadGranularity", {}, "must define granularity = 'outcome' or 'process'"),
        ("tests.user_reward:NoVerdicts", {}, "must implement verdicts(self, prompts, responses, columns)"),
        ("tests.user_reward:TwoArgVerdicts", {}, "verdicts(self, responses) must take (self, prompts, responses, columns)"),
        ("process", {"flip": 0.1}, "'flip' is not a parameter of process; allowed: flip_prob, seed, stop_at_first_error"),
        ("noisy_outcome", {"flip_prob": 2.0}, "bad params"),
        # a YAML typo is a string: it must not pass for true (a non-empty string is truthy)
        ("noisy_process", {"stop_at_first_error": "fasle"}, "'stop_at_first_error' of noisy_process must be true or false, got 'fasle'"),
        ("noisy_outcome", {"flip_prob": "0.1"}, "must be a number, got '0.1'"),
        ("outcome", {"seed": 1.5}, "'seed' of outcome must be an integer, got 1.5"),
        ("tests.user_reward:KeywordReward", {"seed": "a"}, "'seed' of tests.user_reward:KeywordReward must be an integer, got 'a'"),
    ],
)
def test_bad_reward_names_and_params(name, params, words):
    with pytest.raises(UserError) as info:
        make_reward(RewardConfig(name=name, params=params))
    assert words in str(info.value)


def test_noise_seed_is_the_runs_and_differs_across_processes():
    def flips(params, seed=0, rank=0):
        reward = make_reward(RewardConfig(name="noisy_outcome", params=params), seed=seed, rank=rank)
        return reward(None, torch.zeros(64, 3, dtype=torch.long), {"target": torch.zeros(64, 3, dtype=torch.long)}).values

    assert torch.equal(flips({}, seed=7), flips({"seed": 7}))  # the run's seed, unless params set one
    assert torch.equal(flips({"flip_prob": 1}, seed=4), torch.zeros(64, 3))  # an int passes for the float flip_prob
    runs = [flips({}, seed=0), flips({}, seed=1), flips({}, seed=0, rank=1)]
    assert not torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


def test_a_user_reward_with_its_own_keywords_gets_them_and_the_run_seed():
    reward = make_reward(RewardConfig(name="tests.user_reward:KeywordReward", params={"window": 3, "mode": "strict"}),
                         seed=11, rank=2)
    assert reward.opts == {"window": 3, "mode": "strict"} and reward.seed == 11 + 2 * 1_000_003
    parity = make_reward(RewardConfig(name="tests.user_reward:ParityReward", params={"modulus": 3}), seed=11)
    assert parity.modulus == 3 and not hasattr(parity, "seed")  # no seed parameter: none is passed


def test_a_reward_module_that_fails_to_import_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "broken_reward.py").write_text("class Reward(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match="cannot import module 'broken_reward' \\(SyntaxError: "):
        make_reward(RewardConfig(name="broken_reward:Reward"))


@pytest.mark.parametrize("granularity, returned, words", [
    ("outcome", (torch.ones(4, dtype=torch.bool), 4), "verdicts() returned shape (4,); outcome rewards return (B, 1), (4, 1) here"),
    ("process", (torch.ones(4, 1, dtype=torch.bool), 4), "returned shape (4, 1); process rewards return (B, L), (4, 3) here"),
    ("outcome", torch.ones(4, 1), "verdicts() returned Tensor; it must return (verdicts Tensor, queries int)"),
    ("outcome", (torch.ones(4, 1), 4, 0), "verdicts() returned (Tensor, int, int); it must return (verdicts Tensor, queries int)"),
    ("outcome", ([True] * 4, 4), "verdicts() returned (list, int); it must return (verdicts Tensor, queries int)"),
    ("outcome", (torch.ones(4, 1), -4), "verdicts() charged -4 reward queries; the count must be an integer ≥ 0"),
    ("outcome", (torch.ones(4, 1), 2.5), "verdicts() charged 2.5 reward queries; the count must be an integer ≥ 0"),
    ("outcome", (torch.full((4, 1), float("nan")), 4), "verdicts() returned nan; verdicts are true/false (bool, or 0/1)"),
    ("process", (torch.tensor([[1.0, 0.5, 0.0]] * 4), 4), "verdicts() returned 0.5; verdicts are true/false"),
])
def test_verdicts_that_break_the_contract_are_refused(granularity, returned, words):
    class Wrong(RewardModel):
        def verdicts(self, prompts, responses, columns):
            return returned

    Wrong.granularity = granularity
    responses = torch.zeros(4, 3, dtype=torch.long)
    with pytest.raises(UserError, match=re.escape(words)):
        Wrong()(None, responses, {"target": responses})
    ok = (torch.ones(4, 1 if granularity == "outcome" else 3), np.int64(4))  # 0/1 floats and numpy counts pass
    Wrong.verdicts = lambda self, prompts, responses, columns: ok
    assert Wrong()(None, responses, {"target": responses}).queries == 4


def test_0_1_verdicts_are_booleans_where_token_search_selects_rows_by_them():
    class IntProcess(RewardModel):
        granularity = "process"

        def verdicts(self, prompts, responses, columns):
            return correct_prefixes(responses, columns["target"]).long(), responses.numel()

    target = torch.tensor([[0, 1, 2]] * 3)
    prefixes = torch.tensor([[0, 1], [0, 2], [1, 1]])  # right, wrong at 2, wrong at 1
    ok, queries = IntProcess().check_last(None, prefixes, {"target": target})
    assert ok.dtype == torch.bool and ok.tolist() == [True, False, False] and queries == 3  # one query per candidate
    assert torch.arange(3)[ok].tolist() == [0]  # int64 [1, 0, 0] would have indexed rows 1, 0, 0

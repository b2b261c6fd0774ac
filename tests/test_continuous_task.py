"""The authors' continuous tasks: the generators against their definitions, the hidden rule on hand examples, the
continuous-prompt transformer's exact likelihood and sampling, and a continuous-prompt checkpoint's round trip."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import AutoModelForCausalLM

from barrierlab.loading import load_model_dir
from barrierlab.models import ModelConfig, PromptProjectionLlama, build_model
from barrierlab.policy import answer_logits, sample, token_logprobs
from barrierlab.tasks import TaskConfig, build_task
from barrierlab.tasks.continuous import clip_norm, follow
from barrierlab.tokenizer import ANSWER0
from tests.conftest import run_stage

K, N, D = 2, 3, 4


def test_gaussian_mixture_inputs_have_norm_sqrt_d_and_lie_near_their_centre():
    task = build_task(TaskConfig(name="gaussian_mixture", d=8, k=3, N=2, sigma=0.3), num_clusters=10)
    x, comp = task.sample_prompts(5000, torch.Generator().manual_seed(0))
    assert torch.allclose(x.norm(dim=1), torch.full((5000,), 8**0.5), atol=1e-5)
    # the mean e_{j mod d}, plus noise of norm ≤ σ, normalised: the angle to the mean is at most asin(σ)
    mean = torch.zeros(5000, 8)
    mean[torch.arange(5000), comp % 8] = 1.0
    cos = (x / 8**0.5 * mean).sum(1)
    assert cos.min() >= (1 - 0.3**2) ** 0.5 - 1e-6
    assert cos.min() < 0.97  # the noise is there (σ = 0.3: the worst of 5000 draws leans well off the mean)
    assert torch.bincount(comp, minlength=10).min() > 5000 / 10 * 0.8  # components drawn uniformly
    centres, which = task.tracked_prompts()
    expected = torch.zeros(10, 8)
    expected[torch.arange(10), torch.arange(10) % 8] = 8**0.5  # √d e_{j mod d}
    assert torch.equal(which, torch.arange(10)) and torch.allclose(centres, expected)


def test_noise_is_clipped_to_norm_sigma_and_left_alone_inside():
    noise = torch.tensor([[3.0, 4.0], [0.03, 0.04], [0.0, 0.0]])
    clipped = clip_norm(noise, 0.1)
    assert torch.allclose(clipped[0], torch.tensor([0.06, 0.08]))  # norm 5 scaled to 0.1, same direction
    assert torch.equal(clipped[1:], noise[1:])  # norm 0.05 and 0 are inside


def test_sigma_zero_gives_the_centres_exactly():
    task = build_task(TaskConfig(name="gaussian_mixture", d=4, k=3, N=2, sigma=0.0), num_clusters=6)
    x, comp = task.sample_prompts(50, torch.Generator().manual_seed(1), clusters=torch.arange(6).repeat(9)[:50])
    expected = torch.zeros(50, 4)
    expected[torch.arange(50), comp % 4] = 2.0  # √d e_{j mod d}; components 4 and 5 wrap to e_0, e_1
    assert torch.equal(x, expected)


def test_rademacher_inputs_are_uniform_signs():
    task = build_task(TaskConfig(name="rademacher", d=16, k=3, N=2), num_clusters=1)
    x, comp = task.sample_prompts(20_000, torch.Generator().manual_seed(2))
    assert set(x.unique().tolist()) == {-1.0, 1.0} and comp.eq(0).all()
    # 320,000 fair signs: the mean's standard error is 1.8e-3
    assert abs(x.mean().item()) < 7e-3


def test_rule_on_a_hand_example():
    task = build_task(TaskConfig(name="rademacher", d=2, k=3, N=4), num_clusters=1)
    task.W1 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], dtype=torch.float64)
    task.W2 = torch.tensor([[0.0, 0.0, 3.0], [2.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=torch.float64)
    # x = (1, -1): W1 x = (1, -1, 0) → y1 = 0; after 0 the bonus is column 0, (0, 2, 0) → (1, 1, 0): a tie, argmax
    # takes the first, 0 again; x = (-1, 1): W1 x = (-1, 1, 0) → y1 = 1; after 1: (0, 0, 2) → (-1, 1, 2) → 2;
    # after 2: (3, 0, 0) → (2, 1, 0) → 0; after 0: (0, 2, 0) → (-1, 3, 0) → 1
    x = torch.tensor([[1.0, -1.0], [-1.0, 1.0]])
    assert task.targets(x, torch.zeros(2, dtype=torch.long)).tolist() == [[0, 0, 0, 0], [1, 2, 0, 1]]


def test_rule_is_the_authors_recursion_and_the_task_state_round_trips():
    cfg = TaskConfig(name="gaussian_mixture", d=8, k=5, N=7, seed=3)
    task = build_task(cfg, num_clusters=4)
    x, comp = task.sample_prompts(100, torch.Generator().manual_seed(0))
    y = task.targets(x, comp)
    W1, W2 = task.W1, task.W2
    for n in range(100):
        expected = [int((W1 @ x[n].double()).argmax())]
        for _ in range(6):
            expected.append(int((W1 @ x[n].double() + W2[:, expected[-1]]).argmax()))
        assert y[n].tolist() == expected
    again = build_task(cfg, num_clusters=4, state=task.state_dict())
    assert torch.equal(again.targets(x, comp), y)
    assert build_task(TaskConfig(name="gaussian_mixture", d=8, k=5, N=7, seed=4), num_clusters=4).W1.ne(W1).any()


def test_seed_s_draws_the_authors_seed_s_rule():
    # their code: torch.manual_seed(seed), then W1* = randn(k, d) and W2* = randn(k, k) are its first draws
    with torch.random.fork_rng():
        torch.manual_seed(0)
        W1, W2 = torch.randn(32, 32), torch.randn(32, 32)
    task = build_task(TaskConfig(name="gaussian_mixture", d=32, k=32, N=128, seed=0), num_clusters=32)
    assert torch.equal(task.W1, W1.double()) and torch.equal(task.W2, W2.double())


def tiny_continuous():
    model = build_model(ModelConfig(layers=1, width=16, heads=2, context=16), d=D, k=K, seed=0, continuous=True)
    return model.eval()


def test_continuous_transformer_likelihood_is_the_product_of_its_step_probabilities():
    model = tiny_continuous()
    prompts = torch.randn(2, D, generator=torch.Generator().manual_seed(0))
    responses = torch.tensor([[1, 0, 1], [0, 0, 0]])
    log_p = token_logprobs(model, prompts, responses, K).sum(-1)
    for b in range(2):  # step by step through the Hugging Face forward on each prefix
        total = 0.0
        for i in range(N):
            logits = model(prompt_x=prompts[b : b + 1], input_ids=responses[b : b + 1, :i] + ANSWER0).logits
            total += torch.log_softmax(logits[0, -1, ANSWER0 : ANSWER0 + K], -1)[responses[b, i]].item()
        assert abs(total - log_p[b].item()) < 1e-5
    every = torch.tensor(list(itertools.product(range(K), repeat=N)))
    probs = token_logprobs(model, prompts[:1].expand(len(every), -1), every, K).sum(-1).exp()
    assert abs(probs.sum().item() - 1) < 1e-5
    reference = answer_logits(model, prompts, responses, K, fast=False)  # the lean forward is the HF forward
    assert torch.allclose(answer_logits(model, prompts, responses, K), reference, atol=1e-5)


@pytest.mark.parametrize("fast", [True, False])
def test_continuous_transformer_samples_at_its_exact_probabilities(fast):
    model = tiny_continuous()
    n = 20_000
    prompts = torch.randn(1, D, generator=torch.Generator().manual_seed(3)).expand(n, -1)
    draws = sample(model, prompts, N, K, generator=torch.Generator().manual_seed(0), fast=fast)
    every = torch.tensor(list(itertools.product(range(K), repeat=N)))
    exact = token_logprobs(model, prompts[: len(every)], every, K).sum(-1).exp()
    freq = torch.bincount((draws * torch.tensor([K**2, K, 1])).sum(-1), minlength=K**N).double() / n
    assert torch.all((freq - exact).abs() <= 4.5 * (exact * (1 - exact) / n).sqrt() + 1e-9), (freq, exact)


def test_linear_policy_samples_continuous_prompts_at_its_exact_probabilities():
    model = build_model(ModelConfig(kind="linear"), d=D, k=K, seed=0)
    with torch.no_grad():
        model.W1.normal_(generator=torch.Generator().manual_seed(0))
        model.W2.normal_(generator=torch.Generator().manual_seed(1))
    n = 20_000
    prompts = torch.randn(1, D, generator=torch.Generator().manual_seed(3)).expand(n, -1)
    draws = sample(model, prompts, N, K, generator=torch.Generator().manual_seed(0))
    every = torch.tensor(list(itertools.product(range(K), repeat=N)))
    exact = token_logprobs(model, prompts[: len(every)], every, K).sum(-1).exp()
    assert abs(exact.sum().item() - 1) < 1e-6
    freq = torch.bincount((draws * torch.tensor([K**2, K, 1])).sum(-1), minlength=K**N).double() / n
    assert torch.all((freq - exact).abs() <= 4.5 * (exact * (1 - exact) / n).sqrt() + 1e-9), (freq, exact)
    # the closed form is the model's own forward on its features: W1 x + W2[:, y_{i-1}] (start column k first)
    x = prompts[0]
    y = every[5]
    by_hand = [model.W1 @ x + model.W2[:, K]] + [model.W1 @ x + model.W2[:, int(y[i - 1])] for i in range(1, N)]
    assert torch.allclose(answer_logits(model, prompts[:1], y[None], K)[0], torch.stack(by_hand), atol=1e-6)


def test_trl_refuses_a_continuous_prompt_base_in_one_line():
    from barrierlab.errors import UserError
    from posttrain.for_trl import require_lm_head

    with pytest.raises(UserError, match="continuous prompts: use --backend native"):
        require_lm_head(tiny_continuous())


def test_continuous_checkpoints_round_trip_through_the_auto_classes(tmp_path):
    run_stage("pretrain", "--config", "configs/tiny/pretrain_gaussian_mixture.yaml", "--run.run_dir", str(tmp_path / "b"))
    model, _, info = load_model_dir(tmp_path / "b" / "model")
    assert type(model) is PromptProjectionLlama and model.config.prompt_dim == 8 and info["task"]["name"] == "gaussian_mixture"
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "b" / "model"))
    assert type(plain) is PromptProjectionLlama
    x = torch.randn(3, 8)
    y = torch.randint(0, 4, (3, 6))
    assert torch.equal(answer_logits(model, x, y, 4), answer_logits(plain, x, y, 4))
    assert (tmp_path / "b" / "data" / "tracked_prompts" / "dataset_info.json").is_file()
    run_stage("pretrain", "--config", "configs/tiny/pretrain_gaussian_mixture.yaml", "--run.run_dir",
              str(tmp_path / "lin"), "--model.kind", "linear")
    linear, _, _ = load_model_dir(tmp_path / "lin" / "model")
    assert linear.W1.abs().sum() > 0  # it trained on the continuous prompts


def test_following_the_successor_table_by_doubling_equals_the_step_by_step_walk():
    gen = torch.Generator().manual_seed(0)
    after, first = torch.randint(0, 7, (50, 7), generator=gen), torch.randint(0, 7, (50,), generator=gen)
    for N in (1, 2, 3, 8, 100, 129):
        walk = [first]
        for _ in range(N - 1):
            walk.append(after[torch.arange(50), walk[-1]])
        assert torch.equal(follow(after, first, N), torch.stack(walk, 1)), N

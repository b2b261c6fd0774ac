"""The policy interface: exact likelihoods, sampling frequencies, tokenizer and checkpoint round trips."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from barrierlab.models import LinearPolicyLM, ModelConfig, build_model
from barrierlab.policy import answer_logits, sample, token_logprobs
from barrierlab.tokenizer import ANSWER0, build_tokenizer, prompt_ids, prompt_text, response_ids

K, N, D = 2, 3, 4


def tiny(kind: str):
    model = build_model(ModelConfig(kind=kind, layers=1, width=16, heads=2, context=16), d=D, k=K, seed=0)
    if kind == "linear":  # non-uniform weights, so the test means something
        with torch.no_grad():
            model.W1.copy_(torch.randn(K, D, generator=torch.Generator().manual_seed(0)))
            model.W2.copy_(torch.randn(K, K + 1, generator=torch.Generator().manual_seed(1)))
    return model.eval()


@pytest.mark.parametrize("kind", ["transformer", "linear"])
def test_sequence_likelihood_is_product_of_step_probabilities(kind):
    model = tiny(kind)
    prompts = prompt_ids(torch.tensor([[1, 0, 1, 1], [0, 0, 1, 0]]))
    responses = torch.tensor([[1, 0, 1], [0, 0, 0]])
    log_p = token_logprobs(model, prompts, responses, K).sum(-1)
    for b in range(2):  # step by step: the full-vocabulary forward on each prefix, restricted to answers
        total = 0.0
        for i in range(N):
            ids = torch.cat([prompts[b], response_ids(responses[b, :i])]).unsqueeze(0)
            logits = model(input_ids=ids).logits[0, -1, ANSWER0 : ANSWER0 + K]
            total += torch.log_softmax(logits, -1)[responses[b, i]].item()
        assert abs(total - log_p[b].item()) < 1e-5
    # all k^N responses sum to probability one
    every = torch.tensor(list(itertools.product(range(K), repeat=N)))
    probs = token_logprobs(model, prompts[:1].expand(len(every), -1), every, K).sum(-1).exp()
    assert abs(probs.sum().item() - 1) < 1e-5


@pytest.mark.parametrize("kind", ["transformer", "linear"])
def test_sampling_frequencies_match_exact_probabilities(kind):
    model = tiny(kind)
    n = 20_000
    prompts = prompt_ids(torch.tensor([[1, 0, 1, 1]])).expand(n, -1)
    draws = sample(model, prompts, N, K, generator=torch.Generator().manual_seed(0))
    every = torch.tensor(list(itertools.product(range(K), repeat=N)))
    exact = token_logprobs(model, prompts[: len(every)], every, K).sum(-1).exp()
    codes = (draws * torch.tensor([K**2, K, 1])).sum(-1)
    freq = torch.bincount(codes, minlength=K**N).double() / n
    sigma = (exact * (1 - exact) / n).sqrt()
    assert torch.all((freq - exact).abs() <= 4.5 * sigma + 1e-9), (freq, exact)


@pytest.mark.parametrize("kind", ["transformer", "linear"])
def test_temperature_divides_the_logits(kind):
    model, n, T = tiny(kind), 20_000, 0.2
    prompts = prompt_ids(torch.tensor([[1, 0, 1, 1]])).expand(n, -1)
    first = sample(model, prompts, N, K, temperature=T, generator=torch.Generator().manual_seed(0))[:, 0]
    logits = answer_logits(model, prompts[:1], torch.zeros(1, N, dtype=torch.long), K)[0, 0].double()
    freq = torch.bincount(first, minlength=K).double() / n
    want, untempered = torch.softmax(logits / T, 0), torch.softmax(logits, 0)
    sigma = (want * (1 - want) / n).sqrt()
    assert torch.all((freq - want).abs() <= 4.5 * sigma), (freq, want)
    assert (freq - untempered).abs().max() > 10 * sigma.max()  # the test tells the two apart


def test_tokenizer_round_trip():
    tok = build_tokenizer(5)
    bits = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])
    symbols = torch.tensor([[4, 0, 2], [1, 3, 3]])
    for b in range(2):
        text = prompt_text(bits[b : b + 1])[0] + " " + " ".join(f"a{int(s)}" for s in symbols[b])
        ids = tok(text)["input_ids"]
        assert ids == torch.cat([prompt_ids(bits[b : b + 1])[0], response_ids(symbols[b])]).tolist()
        assert tok.decode(ids) == text


@pytest.mark.parametrize("kind", ["transformer", "linear"])
def test_checkpoint_round_trip_through_auto_classes(tmp_path, kind):
    model = tiny(kind)
    model.save_pretrained(tmp_path)
    build_tokenizer(K).save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(loaded, LinearPolicyLM) == (kind == "linear")
    assert (tmp_path / "model.safetensors").exists()
    ids = torch.tensor([tok(prompt_text(torch.tensor([[1, 0, 0, 1]]))[0] + " a1 a0 a1")["input_ids"]])
    assert torch.allclose(model(input_ids=ids).logits, loaded(input_ids=ids).logits, atol=1e-6)


def test_linear_sampler_tabulates_a_row_whose_weights_underflow_float32():
    # after symbol 0 the logits are W1 x + W2[:, 0] = (120, 120, 0): in the table's product A ⊙ exp(W2[:, 0]) both
    # factors are e^-120 there (0 in float32), so that row comes from its logits
    model = build_model(ModelConfig(kind="linear"), d=1, k=3, seed=0)
    with torch.no_grad():
        model.W1.copy_(torch.tensor([[120.0], [0.0], [0.0]]))
        model.W2.zero_()
        model.W2[1, 0] = 120.0
    n = 20_000
    draws = sample(model, torch.ones(n, 1), 2, 3, generator=torch.Generator().manual_seed(0))
    assert draws[:, 0].eq(0).all() and draws[:, 1].le(1).all()  # the first step is certain, symbol 2 has e^-120
    assert abs(draws[:, 1].float().mean().item() - 0.5) <= 4.5 * (0.25 / n) ** 0.5

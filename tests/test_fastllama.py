"""The lean Llama forward equals the Hugging Face forward: logits, gradients and samples."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from barrierlab import fastllama
from barrierlab.models import LinearPolicyConfig, LinearPolicyLM, ModelConfig, build_model
from barrierlab.policy import _draw, answer_logits, response_logits, sample
from barrierlab.tokenizer import ANSWER0, answer_ids, prompt_ids
from posttrain.for_trl import add_answer_bias

K, N, D = 5, 6, 8


def llama(kv_heads: int | None = None, bias: bool = False) -> LlamaForCausalLM:
    """A small Llama with large random weights, so that logits and gradients are far from trivial."""
    model = build_model(ModelConfig(layers=2, width=32, heads=4, context=32), d=D, k=K, seed=0)
    if kv_heads is not None:  # grouped-query attention: the same model class, fewer key/value heads
        config = LlamaConfig(**{**model.config.to_dict(), "num_key_value_heads": kv_heads})
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.4, generator=torch.Generator().manual_seed(p.numel()))
    if bias:
        add_answer_bias(model, K)  # what the TRL backend adds: -1e4 on non-answer ids
    return model


def batch(groups: int = 4, group_size: int = 3, layout: str = "groups"):
    """Prompts in groups of equal consecutive rows (the layout of every stage). ``merged``: the second group draws
    the first group's prompt (runs of 6, 3, 3); ``ragged``: the first prompt once more at the end (runs of 3, 3, 3,
    3, 1)."""
    gen = torch.Generator().manual_seed(1)
    bits = torch.randint(0, 2, (groups, D), generator=gen)
    if layout == "merged":
        bits[1] = bits[0]
    bits = bits.repeat_interleave(group_size, 0)
    if layout == "ragged":
        bits = torch.cat([bits, bits[:1]])
    return prompt_ids(bits), torch.randint(0, K, (bits.shape[0], N), generator=gen)


def test_shared_prompts_blocks_or_runs():
    a, b = [1, 2], [3, 4]
    # blocks of the gcd of the run lengths where that keeps most of the sharing (the engine's groups)
    for rows, size in [([a, a, b, b], 2), ([a, a, a, a, b, b], 2), ([a] * 6 + [b] * 3 + [a] * 3, 3), ([a] * 4, 4),
                       ([a, b, a, b], 1), ([a], 1)]:
        rows = torch.tensor(rows)
        prompts, groups = fastllama.shared_prompts(rows)
        assert groups.size == size and prompts.shape[0] == rows.shape[0] // size
        assert torch.equal(groups.spread(prompts), rows)
    # one prompt row per run, through an index, where the gcd would give up the sharing (runs of 2, 1, 3)
    rows = torch.tensor([a, a, b, a, a, a])
    prompts, groups = fastllama.shared_prompts(rows)
    assert prompts.tolist() == [a, b, a] and groups.size is None and groups.index.tolist() == [0, 0, 1, 2, 2, 2]
    assert torch.equal(groups.spread(prompts), rows)


@pytest.mark.parametrize("vocab", ["answers", "all"])  # the policy's logits; pretraining's full-vocabulary ones
@pytest.mark.parametrize("layout, size", [("groups", 3), ("merged", 3), ("ragged", None)])
@pytest.mark.parametrize("variant", [{}, {"kv_heads": 2}, {"bias": True}])
def test_logits_and_gradients_equal_the_hf_forward(variant, layout, size, vocab):
    model = llama(**variant).train()
    prompts, responses = batch(layout=layout)
    assert fastllama.shared_prompts(prompts)[1].size == size
    assert fastllama.supports(model)
    ids = answer_ids(K) if vocab == "answers" else slice(None)
    picked = responses if vocab == "answers" else responses + ANSWER0
    grads = []
    for fast in (True, False):
        logits = response_logits(model, prompts, responses, ids, fast=fast)
        model.zero_grad()
        (logits.log_softmax(-1).gather(-1, picked[..., None]) * torch.linspace(-1, 2, N)).sum().backward()
        grads.append((logits.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
    (fast_logits, fast_grads), (hf_logits, hf_grads) = grads
    assert hf_logits.abs().max() > 1.0  # the comparison is not between near-zero numbers
    torch.testing.assert_close(fast_logits, hf_logits, atol=2e-5, rtol=1e-5)
    for f, h in zip(fast_grads, hf_grads):
        torch.testing.assert_close(f, h, atol=1e-4, rtol=1e-4)


def test_single_answer_position():
    model = llama().eval()
    prompts, responses = batch()
    torch.testing.assert_close(answer_logits(model, prompts, responses[:, :1], K),
                               answer_logits(model, prompts, responses[:, :1], K, fast=False), atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("variant", [{}, {"kv_heads": 2}])
def test_sampling_draws_the_same_responses_as_the_hf_cache_loop(temperature, variant):
    # same generator, same uniform draws: equal step logits give equal symbols
    model = llama(**variant).eval()
    prompts, _ = batch(groups=8, group_size=4, layout="merged")
    fast = sample(model, prompts, N, K, temperature=temperature, generator=torch.Generator().manual_seed(3))
    slow = sample(model, prompts, N, K, temperature=temperature, generator=torch.Generator().manual_seed(3), fast=False)
    assert torch.equal(fast, slow)
    assert len(set(map(tuple, fast.tolist()))) > 10  # and they are not all one response


def test_draw_frequencies_match_the_softmax():
    n = 60_000
    logits = torch.tensor([[0.0, 0.6931472, 1.0986123, -float("inf")]])  # log 1, log 2, log 3, masked
    draws = _draw(logits.expand(n, -1), 1.0, torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=4).double() / n
    exact = torch.tensor([1 / 6, 2 / 6, 3 / 6, 0.0], dtype=torch.double)
    assert freq[3] == 0  # a masked symbol is never drawn
    assert torch.all((freq - exact).abs() <= 4.5 * (exact * (1 - exact) / n).sqrt() + 1e-12), freq
    # temperature 0.5 squares the odds: 1 : 4 : 9
    freq = torch.bincount(_draw(logits.expand(n, -1), 0.5, torch.Generator().manual_seed(1)), minlength=4).double() / n
    exact = torch.tensor([1 / 14, 4 / 14, 9 / 14, 0.0], dtype=torch.double)
    assert torch.all((freq - exact).abs() <= 4.5 * (exact * (1 - exact) / n).sqrt() + 1e-12), freq


def test_attention_dropout_in_training_uses_the_hf_forward():
    # prompt sharing would give a whole group one dropout mask: with dropout active, the HF forward runs instead
    model = build_model(ModelConfig(layers=1, width=16, heads=2, context=16, dropout=0.1), d=D, k=K, seed=0)
    assert not fastllama.supports(model.train()) and fastllama.supports(model.eval())


def test_other_models_use_their_own_forward():
    assert not fastllama.supports(LinearPolicyLM(LinearPolicyConfig(d=D, k=K, vocab_size=K + 6)))
    scaled = LlamaConfig(**{**llama().config.to_dict(), "rope_parameters": {"rope_type": "linear", "factor": 2.0,
                                                                             "rope_theta": 10000.0}})
    assert not fastllama.supports(LlamaForCausalLM(scaled))


def test_bf16_autocast_follows_the_hf_forward():
    # what a GPU run does (bf16 autocast): the same casts, so the lean forward is as close to full precision
    # as the HF forward is, position by position
    model = llama().train()
    prompts, responses = batch()
    exact = answer_logits(model, prompts, responses, K, fast=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = answer_logits(model, prompts, responses, K)
        slow = answer_logits(model, prompts, responses, K, fast=False)
    assert fast.dtype == slow.dtype == torch.float32
    hf_error = (slow - exact).abs().amax(-1)  # (B, N): bf16 rounding of the HF forward
    assert hf_error.max() > 0  # autocast did change something
    assert torch.all((fast - exact).abs().amax(-1) <= 3 * hf_error + 0.01)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (docs/gpu_check.sh runs it)")
def test_cuda_logits_gradients_and_samples_equal_the_hf_forward():
    model = llama(kv_heads=2).cuda().train()
    prompts, responses = (t.cuda() for t in batch(groups=8, group_size=4, layout="merged"))
    for autocast in (False, True):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            fast = answer_logits(model, prompts, responses, K)
            slow = answer_logits(model, prompts, responses, K, fast=False)
        tolerance = 0.05 * slow.abs().max() if autocast else 1e-3
        assert (fast - slow).abs().max() <= tolerance
    model.eval()
    draws = [sample(model, prompts, N, K, generator=torch.Generator("cuda").manual_seed(5), fast=fast) for fast in (True, False)]
    assert (draws[0] == draws[1]).float().mean() > 0.99  # TF32 matmuls may flip a rare draw at a CDF boundary


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (docs/gpu_check.sh runs it)")
def test_cuda_attention_needs_no_cudnn_plan():
    # cuDNN attention plans every new shape, and the engine's shapes change from update to update
    model = llama().cuda().train()
    prompts, responses = (t.cuda() for t in batch(groups=8, group_size=4))
    with torch.profiler.profile() as prof, torch.autocast("cuda", dtype=torch.bfloat16):
        answer_logits(model, prompts, responses, K).sum().backward()
    names = [e.key for e in prof.key_averages()]
    assert any("scaled_dot_product" in n for n in names)
    assert not any("cudnn_attention" in n for n in names), names

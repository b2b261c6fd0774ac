"""The policy interface every stage uses: exact log-probabilities and batched sampling.

The policy ``p(y | x)`` is the model's next-token distribution restricted to the k answer symbols.
- ``answer_logits``: teacher forcing, one forward pass, ``(B, N, k)`` logits of every response step.
- ``sample``: incremental batched sampling on the device (KV cache for the transformer, the closed-form
  step for the linear model): one forward per response position, no Python loop over samples.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache, LlamaForCausalLM

from barrierlab import fastllama
from barrierlab.models import LinearPolicyLM
from barrierlab.tokenizer import ANSWER0, answer_ids

# transformers renamed ``past_key_values`` to ``cache`` (5.2x); the GPU machines still run 5.17.
_CACHE_KW = "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


def response_logits(model, prompt_ids: torch.Tensor, responses: torch.Tensor, vocab: slice,
                    fast: bool = True) -> torch.Tensor:
    """Logits ``(B, N, |vocab|)`` of the token ids ``vocab`` at each response step, given the prompt and the
    response prefix (teacher forcing). ``responses`` are symbol indices in ``[0, k)``.

    A Llama policy goes through ``barrierlab.fastllama`` unless ``fast=False`` (the HF forward, its reference).
    To train under DDP, wrap ``ResponseLogits`` rather than the model.
    """
    if fast and fastllama.supports(model):
        return fastllama.response_logits(model, prompt_ids, responses, vocab)
    P, N = prompt_ids.shape[1], responses.shape[1]
    input_ids = torch.cat([prompt_ids, responses[:, :-1] + ANSWER0], dim=1)
    logits = model(input_ids=input_ids).logits
    return logits[:, P - 1 : P - 1 + N, vocab].float()


def answer_logits(model, prompt_ids: torch.Tensor, responses: torch.Tensor, k: int, fast: bool = True) -> torch.Tensor:
    """Logits ``(B, N, k)`` of each response symbol: the policy's, before the softmax."""
    return response_logits(model, prompt_ids, responses, answer_ids(k), fast)


class ResponseLogits(torch.nn.Module):
    """``response_logits`` of ``model`` as a module ``(prompt_ids, responses) → (B, N, |vocab|)``: the unit to hand
    to ``accelerate.prepare``, so that DDP synchronises the gradients of whichever forward computes the logits."""

    def __init__(self, model: torch.nn.Module, vocab: slice):
        super().__init__()
        self.model, self.vocab = model, vocab

    def forward(self, prompt_ids: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        return response_logits(self.model, prompt_ids, responses, self.vocab)


def token_logprobs(model, prompt_ids, responses, k) -> torch.Tensor:
    """``log p(y_i | x, y_<i)`` as ``(B, N)``."""
    logp = torch.log_softmax(answer_logits(model, prompt_ids, responses, k), dim=-1)
    return logp.gather(-1, responses.unsqueeze(-1)).squeeze(-1)


@torch.no_grad()
def target_stats(model, prompt_ids, targets, k, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact ``(log q(y*|x), log min_i q(y*_i | x, y*_<i))`` per prompt, in batches."""
    seq, tok_min = [], []
    for i in range(0, prompt_ids.shape[0], batch_size):
        lp = token_logprobs(model, prompt_ids[i : i + batch_size], targets[i : i + batch_size], k)
        seq.append(lp.sum(-1))
        tok_min.append(lp.min(-1).values)
    return torch.cat(seq), torch.cat(tok_min)


def _draw(logits: torch.Tensor, temperature: float, generator: torch.Generator | None) -> torch.Tensor:
    """One symbol per row from softmax(logits / temperature), by inverting the CDF at a uniform draw: exact to
    float32 resolution (as ``torch.multinomial``), in a few elementwise ops where ``torch.multinomial`` costs
    more than a whole model step at this size. Rows need a finite logit."""
    scaled = logits.float() / temperature
    cdf = torch.exp(scaled - scaled.max(-1, keepdim=True).values).cumsum(-1)
    u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device) * cdf[:, -1:]
    # u < total, so the last bound adds nothing to the count; leaving it out keeps the index below k regardless
    return (cdf[:, :-1] <= u).sum(-1)


@torch.no_grad()
def sample(
    model, prompt_ids: torch.Tensor, N: int, k: int, *, temperature: float = 1.0, generator=None, fast: bool = True
) -> torch.Tensor:
    """Draw one response ``(B, N)`` per prompt from the (unwrapped) model (``fast``: as in ``answer_logits``)."""
    B = prompt_ids.shape[0]
    out = torch.empty(B, N, dtype=torch.long, device=prompt_ids.device)
    if isinstance(model, LinearPolicyLM):
        s = model.features(prompt_ids)
        prev = torch.full((B,), k, dtype=torch.long, device=prompt_ids.device)
        for i in range(N):
            out[:, i] = prev = _draw(model.step_logits(s, prev), temperature, generator)
        return out
    if fast and fastllama.supports(model):
        return fastllama.sample(model, prompt_ids, N, k, lambda logits: _draw(logits, temperature, generator))
    cache = {_CACHE_KW: DynamicCache(config=model.config)}  # filled in place by every forward
    logits = model(input_ids=prompt_ids, use_cache=True, **cache).logits[:, -1]
    for i in range(N):
        out[:, i] = _draw(logits[:, answer_ids(k)], temperature, generator)
        if i + 1 < N:
            logits = model(input_ids=out[:, i : i + 1] + ANSWER0, use_cache=True, **cache).logits[:, -1]
    return out

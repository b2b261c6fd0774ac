"""The policy interface every stage uses: exact log-probabilities and batched sampling.

The policy ``p(y | x)`` is the model's next-token distribution restricted to the k answer symbols.
- ``answer_logits``: teacher forcing, one forward pass, ``(B, N, k)`` logits of every response step.
- ``sample``: incremental batched sampling on the device (KV cache for the transformer; for the linear model, whose
  step depends only on the prompt and the previous symbol, a table of every step's distribution computed once):
  one small step per response position, no Python loop over samples.
Prompts are token ids ``(B, P)``, or float vectors ``(B, d)`` for a continuous-prompt task.
"""

from __future__ import annotations

import inspect

import torch
from transformers import DynamicCache, LlamaForCausalLM

from barrierlab import fastllama
from barrierlab.models import MASKED_LOGIT, LinearPolicyLM
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
    if isinstance(model, LinearPolicyLM):  # closed form; its other ids have the masked logit, as in its forward
        answers = model.answer_logits(prompt_ids, responses)
        if vocab == answer_ids(model.config.k):
            return answers.float()
        full = answers.new_full((*answers.shape[:2], model.config.vocab_size), MASKED_LOGIT)
        full[..., answer_ids(model.config.k)] = answers
        return full[..., vocab].float()
    if fast and fastllama.supports(model):
        return fastllama.response_logits(model, prompt_ids, responses, vocab)
    P, N = fastllama.prompt_positions(prompt_ids), responses.shape[1]
    if prompt_ids.is_floating_point():  # a continuous prompt: its embeddings come from the model's projection
        logits = model(prompt_x=prompt_ids, input_ids=responses[:, :-1] + ANSWER0).logits
    else:
        logits = model(input_ids=torch.cat([prompt_ids, responses[:, :-1] + ANSWER0], dim=1)).logits
    return logits[:, P - 1 : P - 1 + N, vocab].float()


def answer_logits(model, prompt_ids: torch.Tensor, responses: torch.Tensor, k: int, fast: bool = True) -> torch.Tensor:
    """Logits ``(B, N, k)`` of each response symbol: the policy's, before the softmax."""
    if isinstance(model, LinearPolicyLM):
        return model.answer_logits(prompt_ids, responses).float()
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
    if isinstance(model, LinearPolicyLM):
        return model.token_logprobs(prompt_ids, responses).float()
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


def _linear_cdf_table(model: LinearPolicyLM, prompts: torch.Tensor, temperature: float) -> torch.Tensor:
    """The CDF of every step distribution of the linear policy, ``(B (k + 1), k)``: row ``b (k + 1) + j`` after symbol
    j on prompt b (j = k: the first step), each row ending at exactly 1.

    A step's weights factor, ``exp(W1 s(x) + W2[:, j]) = exp(W1 s(x)) ⊙ exp(W2[:, j])``, so the whole table is one
    matrix product ``A @ M``, ``A = exp(W1 s(x))`` ``(B, k)`` and ``M[y', (j, y)] = exp(W2[y', j]) 1[y' ≤ y]``: no
    exponential or cumulative sum over the ``B (k + 1) k`` entries. Each factor is taken relative to its own maximum;
    a row whose product underflows float32 (its best logit lies far below the two maxima's sum) is tabulated from its
    logits directly."""
    k = model.config.k
    a = model.features(prompts).float() @ model.W1.T.float() / temperature  # (B, k)
    w = model.W2.T.float() / temperature  # (k + 1, k): row j, the logits added after symbol j
    A = torch.exp(a - a.amax(-1, keepdim=True))
    M = torch.exp(w - w.amax(-1, keepdim=True)).T.unsqueeze(-1) * torch.ones(k, k, device=w.device).triu().unsqueeze(1)
    table = (A @ M.view(k, -1)).view(-1, k)
    low = (table[:, -1] < 1e-30).nonzero().squeeze(1)  # rows whose entries may have left float32's normal range
    if low.numel():
        b, j = low // (k + 1), low % (k + 1)
        table[low] = torch.softmax(a[b] + w[j], -1).cumsum(-1)
    return table.div_(table[:, -1:].clone())  # a copy: in place, a row split between threads could read its own 1


def _sample_linear(model: LinearPolicyLM, prompts: torch.Tensor, N: int, temperature: float, generator) -> torch.Tensor:
    """The linear policy's responses ``(B, N)``: each step's CDF after every previous symbol is tabulated once
    (``_linear_cdf_table``), so a position costs one row gather and one batched binary search of a uniform draw in
    the row (inverting the CDF, as ``_draw`` does), written into preallocated buffers."""
    B, k = prompts.shape[0], model.config.k
    table = _linear_cdf_table(model, prompts, temperature)
    u = torch.rand(N, B, 1, generator=generator, device=prompts.device)
    rows = torch.arange(B, device=prompts.device) * (k + 1)
    out = torch.empty(N, B, 1, dtype=torch.long, device=prompts.device)
    prev, cdf = rows + k, table.new_empty(B, k)
    for u_i, out_i in zip(u.unbind(0), out.unbind(0)):  # their views made at once: indexing each costs microseconds
        torch.searchsorted(torch.index_select(table, 0, prev, out=cdf), u_i, right=True, out=out_i)
        torch.add(rows, out_i[:, 0], out=prev)
    return out[..., 0].T.contiguous()


@torch.no_grad()
def sample(
    model, prompt_ids: torch.Tensor, N: int, k: int, *, temperature: float = 1.0, generator=None, fast: bool = True
) -> torch.Tensor:
    """Draw one response ``(B, N)`` per prompt from the (unwrapped) model (``fast``: as in ``answer_logits``)."""
    B = prompt_ids.shape[0]
    if isinstance(model, LinearPolicyLM):
        return _sample_linear(model, prompt_ids, N, temperature, generator)
    out = torch.empty(B, N, dtype=torch.long, device=prompt_ids.device)
    if fast and fastllama.supports(model):
        return fastllama.sample(model, prompt_ids, N, k, lambda logits: _draw(logits, temperature, generator))
    cache = {_CACHE_KW: DynamicCache(config=model.config)}  # filled in place by every forward
    prompt = {"prompt_x": prompt_ids} if prompt_ids.is_floating_point() else {"input_ids": prompt_ids}
    logits = model(**prompt, use_cache=True, **cache).logits[:, -1]
    for i in range(N):
        out[:, i] = _draw(logits[:, answer_ids(k)], temperature, generator)
        if i + 1 < N:
            logits = model(input_ids=out[:, i : i + 1] + ANSWER0, use_cache=True, **cache).logits[:, -1]
    return out

"""A lean forward pass of the tiny Llama policies, on the Hugging Face model's own parameters.

``LlamaForCausalLM.forward`` is general (caches, masks, hooks, recorded outputs); at this model size its Python
overhead, not arithmetic, sets the speed of post-training. These functions compute the same logits for the
testbed's fixed layouts ``[BOS] bits [SEP] y_1 … y_N`` and, for a continuous prompt x (``PromptProjectionLlama``, whose
[X] position embeds ``prompt_proj(x)``), ``[BOS] [X] [SEP] y_1 … y_N``, with savings that change no result:

- prompt sharing: the G responses of a group share a prompt (consecutive rows, as every stage lays batches
  out), so the prompt positions run once per block of equal prompts and every response attends to its
  prompt's shared keys and values (in training the gradient flows back through them, summed over the block);
- RoPE and the attention scale are linear maps of the projected queries and keys, so they are folded into one
  query/key/value matrix per position, and hidden states are laid out position-major ``(T, B, D)`` so that
  the projection of every position is one batched matmul (no rotation ops on activations, forward or backward);
- only the ``lm_head`` rows asked for are applied (the policy is the softmax over the k answers);
- sampling runs one small forward per position on a preallocated key/value cache, attention as two batched
  matmuls (at one query per row the fused attention kernel costs more than the arithmetic).

The parameters are read from the model at every call, so the optimiser, ``save_pretrained`` and DDP see the
plain HF model. ``supports(model)`` says which models this covers (Llama with the default RoPE, SiLU MLP, no
biases but an optional ``lm_head`` bias, no attention dropout in use); every other model, and a model in
training mode with attention dropout (whose masks prompt sharing would correlate across a group), goes through
its own ``forward``.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import LlamaForCausalLM

from barrierlab.models import PromptProjectionLlama
from barrierlab.tokenizer import ANSWER0, BOS, SEP, answer_ids


def supports(model) -> bool:
    if type(model) not in (LlamaForCausalLM, PromptProjectionLlama):
        return False
    c = model.config
    rope = getattr(c, "rope_parameters", None) or {"rope_type": "default"}
    return (rope.get("rope_type", "default") == "default" and c.hidden_act == "silu" and not c.attention_bias
            and not c.mlp_bias and getattr(c, "pretraining_tp", 1) == 1
            and not (model.training and c.attention_dropout > 0))


@dataclass
class _Weights:
    """The model's parameters in the shapes this module multiplies by (fused where that saves a matmul)."""

    embed: torch.Tensor
    layers: list[tuple]  # (attn_norm, qkv, o, mlp_norm, gate_up, down) per layer
    norm: torch.Tensor
    head: torch.Tensor  # the lm_head rows asked for
    head_bias: torch.Tensor | None
    heads: int
    kv_heads: int
    head_dim: int
    eps: float
    theta: float
    prompt_proj: tuple | None  # (weight, bias) of a continuous prompt's projection


def _weights(model: LlamaForCausalLM, vocab: slice) -> _Weights:
    # torch.cat is differentiable: gradients of the fused matrices land on the original parameters
    c, m = model.config, model.model
    layers = []
    for layer in m.layers:
        a, mlp = layer.self_attn, layer.mlp
        layers.append((layer.input_layernorm.weight,
                       torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]),
                       a.o_proj.weight,
                       layer.post_attention_layernorm.weight,
                       torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
                       mlp.down_proj.weight))
    head = model.lm_head
    rope = getattr(c, "rope_parameters", None) or {}
    return _Weights(
        embed=m.embed_tokens.weight, layers=layers, norm=m.norm.weight,
        head=head.weight[vocab], head_bias=None if head.bias is None else head.bias[vocab],
        heads=c.num_attention_heads, kv_heads=c.num_key_value_heads,
        head_dim=getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads,
        eps=c.rms_norm_eps, theta=rope.get("rope_theta", getattr(c, "rope_theta", 10000.0)),
        prompt_proj=(model.prompt_proj.weight, model.prompt_proj.bias) if hasattr(model, "prompt_proj") else None)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm as one fused op (the residual stream stays float32 here, also under autocast)."""
    return F.rms_norm(x, weight.shape, weight, eps)


def _projections(w: _Weights, qkv: torch.Tensor, positions: int) -> torch.Tensor:
    """``(T, D, (H + 2·Hkv)·hd)``: the fused query/key/value projection at each of T positions, with that
    position's RoPE rotation (and, for queries, the attention scale 1/√hd) applied to its output columns, in the
    parameters' dtype."""
    hd, device = w.head_dim, qkv.device
    inv_freq = 1.0 / (w.theta ** (torch.arange(0, hd, 2, dtype=torch.float, device=device) / hd))
    angles = torch.arange(positions, dtype=torch.float, device=device)[:, None] * inv_freq
    cos, sin = torch.cat((angles, angles), -1).cos(), torch.cat((angles, angles), -1).sin()  # (T, hd) as in HF
    Hd, Kd, D = w.heads * hd, w.kv_heads * hd, qkv.shape[1]

    def rotate(rows: torch.Tensor, heads: int, scale: float) -> torch.Tensor:
        # each head's rows (hd, D): rotating the projected vector rotates the matrix's columns over hd
        m = rows.view(heads, hd, D).transpose(1, 2)  # (heads, D, hd)
        half = hd // 2
        turned = m * cos[:, None, None] + torch.cat((-m[..., half:], m[..., :half]), -1) * sin[:, None, None]
        return (turned * scale).permute(0, 2, 1, 3).reshape(positions, D, heads * hd)  # (T, D, heads·hd)

    q, k, v = qkv.split([Hd, Kd, Kd])
    rotated = torch.cat([rotate(q, w.heads, hd**-0.5), rotate(k, w.kv_heads, 1.0)], -1).to(qkv.dtype)
    return torch.cat([rotated, v.T.expand(positions, D, Kd)], -1)


def _attention_inputs(w: _Weights, projection: torch.Tensor, x: torch.Tensor):
    """Queries ``(B, H, T, hd)`` and keys, values ``(B, Hkv, T, hd)`` of normed position-major inputs ``(T, B, D)``."""
    T, B, _ = x.shape
    Hd, Kd = w.heads * w.head_dim, w.kv_heads * w.head_dim
    q, k, v = torch.bmm(x, projection).split([Hd, Kd, Kd], -1)
    heads = lambda t, n: t.view(T, B, n, w.head_dim).permute(1, 2, 0, 3)  # noqa: E731
    return heads(q, w.heads), heads(k, w.kv_heads), heads(v, w.kv_heads)


# cuDNN attention builds an execution plan for every new shape, and the shapes change between updates here
# (responses with a learning signal, evaluation batches): the likely cause of the 0.2 s per update the native
# engine spent on an H200 while the number of prompt rows kept changing. The other CUDA kernels need no plan,
# so on CUDA cuDNN is left out of what is enabled.
_NO_PLAN = {SDPBackend.FLASH_ATTENTION: torch.backends.cuda.flash_sdp_enabled,
            SDPBackend.EFFICIENT_ATTENTION: torch.backends.cuda.mem_efficient_sdp_enabled,
            SDPBackend.MATH: torch.backends.cuda.math_sdp_enabled}


def _attend(w: _Weights, q, k, v, **mask) -> torch.Tensor:
    """Attention output, position-major ``(T, B, H·hd)``; grouped key/value heads are shared as in HF. The scale
    is already in the queries."""
    context = contextlib.nullcontext()
    if q.is_cuda:
        context = sdpa_kernel([b for b, enabled in _NO_PLAN.items() if enabled()] or [SDPBackend.MATH])
    with context:
        out = F.scaled_dot_product_attention(q, k, v, scale=1.0, enable_gqa=w.kv_heads != w.heads, **mask)
    return out.permute(2, 0, 1, 3).flatten(2)


def _mlp(w: _Weights, layer: tuple, h: torch.Tensor) -> torch.Tensor:
    _, _, _, mlp_norm, gate_up, down = layer
    gate, up = F.linear(_rms(h, mlp_norm, w.eps), gate_up).chunk(2, -1)
    return h + F.linear(F.silu(gate) * up, down)


def _head(w: _Weights, h: torch.Tensor) -> torch.Tensor:
    return F.linear(_rms(h, w.norm, w.eps), w.head, w.head_bias)


@dataclass
class Groups:
    """Which prompt row each batch row reads: blocks of ``size`` adjacent rows, or else ``index`` (B,)."""

    size: int | None
    index: torch.Tensor | None = None

    def spread(self, x: torch.Tensor) -> torch.Tensor:
        """Rows of ``x`` (one per prompt row) copied to every batch row that reads them; the gradient sums."""
        if self.size is None:
            return x.index_select(0, self.index)
        if self.size == 1:
            return x
        # an expand, whose backward is a cheap sum (index_add is not)
        return x.unsqueeze(1).expand(x.shape[0], self.size, *x.shape[1:]).flatten(0, 1)


def shared_prompts(prompt_ids: torch.Tensor) -> tuple[torch.Tensor, Groups]:
    """Prompt rows to compute once, and how the batch reads them: ``groups.spread(prompts) == prompt_ids``.

    Runs of equal adjacent rows share a prompt row. Where the gcd of the run lengths keeps most of that sharing,
    runs are cut into blocks of that size: where two of the engine's groups of G draw the same prompt the blocks
    stay G rows, so the prompt-side shapes stay (B / G, ...) from batch to batch and the expand path applies.
    Otherwise (a subset of rows, say) each run is one prompt row, read through an index."""
    B = prompt_ids.shape[0]
    new = torch.ones(B, dtype=torch.bool, device=prompt_ids.device)
    new[1:] = (prompt_ids[1:] != prompt_ids[:-1]).any(-1)
    starts = new.nonzero().flatten()
    lengths = torch.diff(starts, append=starts.new_tensor([B]))
    size = math.gcd(*lengths.unique().tolist())
    if 2 * size * starts.numel() > B:  # blocks of the gcd lose less than half of the runs' sharing
        return prompt_ids[::size], Groups(size)
    return prompt_ids[starts], Groups(None, new.cumsum(0) - 1)


def prompt_positions(prompts: torch.Tensor) -> int:
    """Positions of a prompt tensor: its token ids, or [BOS] [X] [SEP] for a continuous prompt ``(U, d)``."""
    return 3 if prompts.is_floating_point() else prompts.shape[1]


def _embed_prompts(w: _Weights, prompts: torch.Tensor) -> torch.Tensor:
    """Position-major input embeddings ``(P, U, D)`` of prompt token ids ``(U, P)`` or continuous prompts ``(U, d)``."""
    if not prompts.is_floating_point():
        return F.embedding(prompts.T, w.embed)
    U = prompts.shape[0]
    x = F.linear(prompts.to(w.prompt_proj[0].dtype), *w.prompt_proj)
    ends = w.embed[[BOS, SEP]].unsqueeze(1).expand(2, U, -1)
    return torch.stack([ends[0], x, ends[1]])


def _prefill(w: _Weights, prompts: torch.Tensor, projections: list[torch.Tensor]):
    """Run the distinct prompts ``(U, P)`` (or continuous ``(U, d)``): hidden states ``(P, U, D)`` and every layer's
    (keys, values)."""
    P = prompt_positions(prompts)
    h, kv = _embed_prompts(w, prompts), []
    for layer, projection in zip(w.layers, projections):
        attn_norm, _, o = layer[:3]
        q, key, value = _attention_inputs(w, projection[:P], _rms(h, attn_norm, w.eps))
        kv.append((key, value))
        h = _mlp(w, layer, h + F.linear(_attend(w, q, key, value, is_causal=True), o))
    return h, kv


def response_logits(model: LlamaForCausalLM, prompt_ids: torch.Tensor, responses: torch.Tensor,
                    vocab: slice) -> torch.Tensor:
    """Teacher-forced logits ``(B, N, |vocab|)`` of the token ids ``vocab`` at each response step: what
    ``model(...).logits[..., vocab]`` gives there. ``responses`` are answer symbols."""
    w = _weights(model, vocab)
    P, N = prompt_positions(prompt_ids), responses.shape[1]
    prompts, groups = shared_prompts(prompt_ids)
    projections = [_projections(w, layer[1], P + N - 1) for layer in w.layers]
    hp, kv = _prefill(w, prompts, projections)
    last = groups.spread(hp[-1])[None]  # (1, B, D): the [SEP] position predicts y_1
    if N == 1:
        return _head(w, last).transpose(0, 1).float()
    h = F.embedding(responses[:, :-1].T + ANSWER0, w.embed)  # (N-1, B, D): y_1 … y_{N-1} as inputs
    # response queries see every prompt key and the response keys up to their own position
    visible = torch.ones(N - 1, P + N - 1, dtype=torch.bool, device=prompt_ids.device).tril(P)
    for layer, projection, (kp, vp) in zip(w.layers, projections, kv):
        attn_norm, _, o = layer[:3]
        q, key, value = _attention_inputs(w, projection[P:], _rms(h, attn_norm, w.eps))
        keys, values = torch.cat([groups.spread(kp), key], 2), torch.cat([groups.spread(vp), value], 2)
        h = _mlp(w, layer, h + F.linear(_attend(w, q, keys, values, attn_mask=visible), o))
    return _head(w, torch.cat([last, h])).transpose(0, 1).float()


@torch.no_grad()
def sample(model: LlamaForCausalLM, prompt_ids: torch.Tensor, N: int, k: int, draw) -> torch.Tensor:
    """``(B, N)`` answer symbols, each drawn by ``draw(logits (B, k))`` from the model's next-token logits."""
    w = _weights(model, answer_ids(k))
    B, P = prompt_ids.shape[0], prompt_positions(prompt_ids)
    H, Hkv, hd, L = w.heads, w.kv_heads, w.head_dim, P + N - 1
    prompts, groups = shared_prompts(prompt_ids)
    projections = [_projections(w, layer[1], L) for layer in w.layers]
    h, kv = _prefill(w, prompts, projections)
    caches = []  # per layer: keys and values (B·Hkv, L, hd), for batched matmuls
    for key, value in kv:
        cache = key.new_empty(2, B, Hkv, L, hd)
        cache[0, :, :, :P], cache[1, :, :, :P] = groups.spread(key), groups.spread(value)
        caches.append(cache.view(2, B * Hkv, L, hd).unbind(0))
    logits = groups.spread(_head(w, h[-1]))
    out = torch.empty(B, N, dtype=torch.long, device=prompt_ids.device)
    rep = H // Hkv
    for i in range(N):
        out[:, i] = draw(logits)
        if i + 1 == N:
            break
        pos = P + i  # the position of y_{i+1} (0-based), whose output predicts the next symbol
        h = F.embedding(out[:, i] + ANSWER0, w.embed)  # (B, D)
        for layer, (keys, values), projection in zip(w.layers, caches, projections):
            q, key, value = (_rms(h, layer[0], w.eps) @ projection[pos]).split([H * hd, Hkv * hd, Hkv * hd], -1)
            keys[:, pos] = key.reshape(B * Hkv, hd)
            values[:, pos] = value.reshape(B * Hkv, hd)
            # grouped heads: the rep query heads of a key/value head form rows of one matmul
            scores = torch.bmm(q.reshape(B * Hkv, rep, hd), keys[:, : pos + 1].transpose(1, 2))
            att = torch.bmm(torch.softmax(scores, -1), values[:, : pos + 1]).view(B, H * hd)
            h = _mlp(w, layer, h + F.linear(att, layer[2]))
        logits = _head(w, h)
    return out

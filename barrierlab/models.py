"""The two policy model classes, both ``PreTrainedModel``s saved with ``save_pretrained``.

- ``transformer``: a tiny ``LlamaForCausalLM``.
- ``linear``: the theory's log-linear autoregressive policy on fixed features: the logits of step i are
  ``W1 s(x) + W2[:, y_{i-1}]`` (``s`` = ±1 prompt bits, or a continuous prompt x itself; ``y_0`` = a start
  column), zero-initialised, so the initial policy is uniform.
- ``PromptProjectionLlama``: the tiny Llama for continuous prompts, which reads ``x`` through a learned linear
  projection into the embedding of its prompt position (layout ``[BOS] [X] [SEP] y_1 … y_N``, docs/tasks.md).
Importing this module registers both with the Auto classes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast

from barrierlab.config import require
from barrierlab.tokenizer import ANSWER0, BIT0, BOS, PAD, SEP, vocab_size

# Logit of the non-answer ids (the linear model's, and the TRL backend's head bias): exp(-1e4) is 0 in float32 and
# bfloat16, so a full-vocabulary softmax equals the policy over the k answers.
MASKED_LOGIT = -1e4


@dataclass
class ModelConfig:
    kind: Literal["transformer", "linear"] = "transformer"
    """Policy class: a tiny Llama transformer, or the theory's log-linear model on the prompt bits."""
    layers: int = 2
    """Transformer blocks (transformer only)."""
    width: int = 64
    """Hidden size (transformer only)."""
    heads: int = 4
    """Attention heads; must divide width (transformer only)."""
    context: int = 64
    """Maximum sequence length the transformer accepts (prompt d + 2 plus response N must fit)."""
    dropout: float = 0.0
    """Attention dropout (transformer only)."""

    def check(self):
        require(self.layers >= 1, "layers", "must be at least 1")
        require(self.width >= 4, "width", "must be at least 4")
        require(self.heads >= 1 and self.width % self.heads == 0, "heads", f"must be ≥ 1 and divide width={self.width}")
        require(self.context >= 4, "context", "must be at least 4")
        require(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")


class LinearPolicyConfig(PretrainedConfig):
    model_type = "barrierlab_linear"

    def __init__(self, d: int = 8, k: int = 2, vocab_size: int = 8, **kwargs):
        self.d, self.k, self.vocab_size = d, k, vocab_size
        kwargs.setdefault("pad_token_id", PAD)
        kwargs.setdefault("bos_token_id", BOS)
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)


class LinearPolicyLM(PreTrainedModel, GenerationMixin):
    """Log-linear policy as a causal LM over the token layout ``[BOS] bits [SEP] y_1 … y_N``."""

    config_class = LinearPolicyConfig
    base_model_prefix = "linear"
    main_input_name = "input_ids"

    def __init__(self, config: LinearPolicyConfig):
        super().__init__(config)
        self.W1 = nn.Parameter(torch.zeros(config.k, config.d))
        self.W2 = nn.Parameter(torch.zeros(config.k, config.k + 1))  # last column: the start "y_0"
        self.post_init()

    def _init_weights(self, module):
        if module is self:
            nn.init.zeros_(self.W1)
            nn.init.zeros_(self.W2)

    def features(self, prompts: torch.Tensor) -> torch.Tensor:
        """``s(x)``: ±1 from prompt token ids ``[BOS] bits [SEP]``, or a continuous prompt ``(B, d)`` itself."""
        if prompts.is_floating_point():
            return prompts.to(self.W1.dtype)
        return 2.0 * (prompts[:, 1 : 1 + self.config.d] - BIT0).to(self.W1.dtype) - 1.0

    def answer_table(self, prompts: torch.Tensor) -> torch.Tensor:
        """Answer logits ``(B, k + 1, k)`` after each previous symbol (row k: the first step). A step's logits depend
        only on the prompt and the previous symbol, so this table holds every step of every response: ``W1 s(x)`` is
        computed once per prompt, not once per position."""
        return (self.features(prompts) @ self.W1.T).unsqueeze(1) + self.W2.T

    @staticmethod
    def cells(responses: torch.Tensor, k: int) -> torch.Tensor:
        """Where each step of ``responses`` ``(B, N)`` reads the flattened ``(k + 1) · k`` table: previous symbol
        (k before the first step) times k plus the symbol taken."""
        prev = torch.cat([torch.full_like(responses[:, :1], k), responses[:, :-1]], 1)
        return prev * k + responses

    def token_logprobs(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """``log p(y_i | x, y_<i)`` ``(B, N)`` of ``responses``, read from the log-softmax of ``answer_table``."""
        table = torch.log_softmax(self.answer_table(prompts), -1).flatten(1)
        return table.gather(1, self.cells(responses, self.config.k))

    def answer_logits(self, prompts: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """Teacher-forced answer logits ``(B, N, k)`` of ``responses`` (symbols)."""
        prev = torch.cat([torch.full_like(responses[:, :1], self.config.k), responses[:, :-1]], 1)
        return (self.features(prompts) @ self.W1.T).unsqueeze(1) + self.W2.T[prev]

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        B, T = input_ids.shape
        d, k = self.config.d, self.config.k
        s = self.features(input_ids)
        logits = torch.full((B, T, self.config.vocab_size), MASKED_LOGIT, dtype=self.W1.dtype, device=input_ids.device)
        start = d + 1  # position of [SEP]: it predicts y_1
        if T > start:
            prev_tokens = input_ids[:, start:]
            prev = torch.where(prev_tokens == SEP, k, prev_tokens - ANSWER0).clamp(0, k)
            answer = (s @ self.W1.T).unsqueeze(1) + self.W2.T[prev]
            logits[:, start:, ANSWER0 : ANSWER0 + k] = answer
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits)


class PromptProjectionConfig(LlamaConfig):
    model_type = "barrierlab_llama_x"

    def __init__(self, prompt_dim: int = 8, **kwargs):
        self.prompt_dim = prompt_dim
        super().__init__(**kwargs)


class PromptProjectionLlama(LlamaForCausalLM):
    """A tiny Llama whose prompt is a vector ``x ∈ R^d``: the sequence is ``[BOS] [X] [SEP] y_1 … y_N``, where the
    input embedding at [X] is ``prompt_proj(x)`` (a learned affine map R^d → R^width) and every other position embeds
    its token as usual. ``forward`` takes ``prompt_x`` with ``input_ids`` holding the tokens after the prompt."""

    config_class = PromptProjectionConfig

    def __init__(self, config: PromptProjectionConfig):
        super().__init__(config)
        self.prompt_proj = nn.Linear(config.prompt_dim, config.hidden_size)
        self.post_init()

    def prompt_embeds(self, prompt_x: torch.Tensor) -> torch.Tensor:
        """Input embeddings ``(B, 3, width)`` of the prompt positions ``[BOS] [X] [SEP]``."""
        table = self.model.embed_tokens.weight
        B = prompt_x.shape[0]
        ends = table[[BOS, SEP]].unsqueeze(0).expand(B, 2, -1)
        return torch.stack([ends[:, 0], self.prompt_proj(prompt_x.to(table.dtype)), ends[:, 1]], 1)

    def forward(self, input_ids=None, prompt_x=None, inputs_embeds=None, **kwargs):
        """With ``prompt_x``: the prompt positions, then ``input_ids`` (may be empty) after them; else as Llama."""
        if prompt_x is not None:
            parts = [self.prompt_embeds(prompt_x)]
            if input_ids is not None and input_ids.shape[1]:
                parts.append(self.model.embed_tokens(input_ids))
            input_ids, inputs_embeds = None, torch.cat(parts, 1)
        return super().forward(input_ids=input_ids, inputs_embeds=inputs_embeds, **kwargs)


AutoConfig.register(LinearPolicyConfig.model_type, LinearPolicyConfig)
AutoModelForCausalLM.register(LinearPolicyConfig, LinearPolicyLM)
AutoConfig.register(PromptProjectionConfig.model_type, PromptProjectionConfig)
AutoModelForCausalLM.register(PromptProjectionConfig, PromptProjectionLlama)


def build_model(cfg: ModelConfig, *, d: int, k: int, seed: int, continuous: bool = False) -> PreTrainedModel:
    """A freshly initialised policy for a task with ``d`` prompt bits (or a continuous prompt of dimension ``d``)
    and answers over ``k`` symbols."""
    torch.manual_seed(seed)
    if cfg.kind == "linear":
        return LinearPolicyLM(LinearPolicyConfig(d=d, k=k, vocab_size=vocab_size(k)))
    fields = dict(
        vocab_size=vocab_size(k),
        hidden_size=cfg.width,
        intermediate_size=4 * cfg.width,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.heads,
        max_position_embeddings=cfg.context,
        attention_dropout=cfg.dropout,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=None,
        tie_word_embeddings=False,
    )
    if continuous:
        return PromptProjectionLlama(PromptProjectionConfig(prompt_dim=d, **fields))
    return LlamaForCausalLM(LlamaConfig(**fields))

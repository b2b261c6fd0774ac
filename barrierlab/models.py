"""The two policy model classes, both ``PreTrainedModel``s saved with ``save_pretrained``.

- ``transformer``: a tiny ``LlamaForCausalLM``.
- ``linear``: the theory's log-linear autoregressive policy on fixed features: the logits of step i are
  ``W1 s(x) + W2[:, y_{i-1}]`` (``s`` = ±1 prompt bits, ``y_0`` = a start column), zero-initialised, so the
  initial policy is uniform. Importing this module registers it with the Auto classes.
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

    def features(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        """``s(x)`` in ±1 from prompt token ids ``[BOS] bits [SEP]``."""
        return 2.0 * (prompt_ids[:, 1 : 1 + self.config.d] - BIT0).to(self.W1.dtype) - 1.0

    def step_logits(self, s: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        """Answer logits ``(B, k)`` given features ``(B, d)`` and previous symbols ``(B,)`` (k = start)."""
        return s @ self.W1.T + self.W2.T[prev]

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


AutoConfig.register(LinearPolicyConfig.model_type, LinearPolicyConfig)
AutoModelForCausalLM.register(LinearPolicyConfig, LinearPolicyLM)


def build_model(cfg: ModelConfig, *, d: int, k: int, seed: int) -> PreTrainedModel:
    """A freshly initialised policy for a task with ``d`` prompt bits and answers over ``k`` symbols."""
    torch.manual_seed(seed)
    if cfg.kind == "linear":
        return LinearPolicyLM(LinearPolicyConfig(d=d, k=k, vocab_size=vocab_size(k)))
    config = LlamaConfig(
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
    return LlamaForCausalLM(config)

"""The two policy model classes, both ``PreTrainedModel``s saved with ``save_pretrained``.

- ``transformer``: a tiny ``LlamaForCausalLM``.
- ``linear``: the theory's log-linear policy (``barrierlab.loglinear``, a self-contained file that its checkpoints
  carry for ``trust_remote_code``). Importing this module registers it with the Auto classes, so barrierlab loads
  linear checkpoints without remote code.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from barrierlab.loglinear import MASKED_LOGIT, LinearPolicyConfig, LinearPolicyLM
from barrierlab.sections import ModelConfig
from barrierlab.tokenizer import ANSWER0, BIT0, BOS, PAD, SEP, vocab_size

__all__ = ["MASKED_LOGIT", "LinearPolicyConfig", "LinearPolicyLM", "ModelConfig", "build_model"]


AutoConfig.register(LinearPolicyConfig.model_type, LinearPolicyConfig)
AutoModelForCausalLM.register(LinearPolicyConfig, LinearPolicyLM)


def build_model(cfg: ModelConfig, *, d: int, k: int, seed: int) -> PreTrainedModel:
    """A freshly initialised policy for a task with ``d`` prompt bits and answers over ``k`` symbols."""
    torch.manual_seed(seed)
    if cfg.kind == "linear":
        layout = dict(bit0_token_id=BIT0, sep_token_id=SEP, answer0_token_id=ANSWER0, pad_token_id=PAD, bos_token_id=BOS)
        return LinearPolicyLM(LinearPolicyConfig(d=d, k=k, vocab_size=vocab_size(k), **layout))
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

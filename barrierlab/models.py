"""The two policy model classes, both ``PreTrainedModel``s saved with ``save_pretrained``.

- ``transformer``: a tiny ``LlamaForCausalLM``.
- ``linear``: the theory's log-linear policy (``barrierlab.loglinear``, a self-contained file that its checkpoints
  carry for ``trust_remote_code``).
- ``PromptProjectionLlama``: the tiny Llama for continuous prompts, which reads ``x`` through a learned linear
  projection into the embedding of its prompt position (layout ``[BOS] [X] [SEP] y_1 … y_N``, docs/tasks.md).
Importing this module registers both with the Auto classes, so barrierlab loads their checkpoints without remote code.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from barrierlab.loglinear import MASKED_LOGIT, LinearPolicyConfig, LinearPolicyLM
from barrierlab.sections import ModelConfig
from barrierlab.tokenizer import ANSWER0, BIT0, BOS, PAD, SEP, vocab_size

__all__ = ["MASKED_LOGIT", "LinearPolicyConfig", "LinearPolicyLM", "ModelConfig", "PromptProjectionConfig",
           "PromptProjectionLlama", "build_model"]


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
        layout = dict(bit0_token_id=BIT0, sep_token_id=SEP, answer0_token_id=ANSWER0, pad_token_id=PAD, bos_token_id=BOS)
        return LinearPolicyLM(LinearPolicyConfig(d=d, k=k, vocab_size=vocab_size(k), **layout))
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

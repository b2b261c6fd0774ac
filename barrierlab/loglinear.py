"""The theory's log-linear autoregressive policy as a transformers causal LM, in one file that imports only torch and
transformers: ``save_pretrained`` copies it next to the weights (the classes are registered for the Auto classes),
so ``AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)`` loads a linear checkpoint where barrierlab
is not installed.

The logits of step i are ``W1 s(x) + W2[:, y_{i-1}]`` (``s`` = ±1 prompt bits, or a continuous prompt x itself;
``y_0`` = a start column) over the
token layout ``[BOS] bits [SEP] y_1 … y_N``, whose ids the config carries; the weights start at zero, so the initial
policy is uniform over the k answers.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import CausalLMOutputWithPast

# Logit of the non-answer ids (the linear model's, and the TRL backend's head bias): exp(-1e4) is 0 in float32 and
# bfloat16, so a full-vocabulary softmax equals the policy over the k answers.
MASKED_LOGIT = -1e4


class LinearPolicyConfig(PretrainedConfig):
    """``d`` prompt bits, ``k`` answer symbols, and the token layout: bits are ids ``bit0_token_id + {0, 1}``, answers
    ``answer0_token_id … answer0_token_id + k - 1`` (the defaults are barrierlab's tokenizer's)."""

    model_type = "barrierlab_linear"

    def __init__(self, d: int = 8, k: int = 2, vocab_size: int | None = None, bit0_token_id: int = 4,
                 sep_token_id: int = 2, answer0_token_id: int = 6, **kwargs):
        self.d, self.k = d, k
        self.bit0_token_id, self.sep_token_id, self.answer0_token_id = bit0_token_id, sep_token_id, answer0_token_id
        self.vocab_size = answer0_token_id + k if vocab_size is None else vocab_size
        kwargs.setdefault("pad_token_id", 0)
        kwargs.setdefault("bos_token_id", 1)
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
        return 2.0 * (prompts[:, 1 : 1 + self.config.d] - self.config.bit0_token_id).to(self.W1.dtype) - 1.0

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
        d, k, answer0 = self.config.d, self.config.k, self.config.answer0_token_id
        s = self.features(input_ids)
        logits = torch.full((B, T, self.config.vocab_size), MASKED_LOGIT, dtype=self.W1.dtype, device=input_ids.device)
        start = d + 1  # position of [SEP]: it predicts y_1
        if T > start:
            prev_tokens = input_ids[:, start:]
            prev = torch.where(prev_tokens == self.config.sep_token_id, k, prev_tokens - answer0).clamp(0, k)
            logits[:, start:, answer0 : answer0 + k] = (s @ self.W1.T).unsqueeze(1) + self.W2.T[prev]
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits)


# save_pretrained copies this file into the checkpoint and writes its auto_map into config.json
LinearPolicyConfig.register_for_auto_class()
LinearPolicyLM.register_for_auto_class("AutoModelForCausalLM")

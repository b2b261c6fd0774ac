"""Word-level tokenizer over specials, bits and answer symbols, and the fixed token layout.

A sequence is ``[BOS] b_1 … b_d [SEP] y_1 … y_N`` with fixed lengths, so no padding or EOS is needed.
Answer symbols occupy the contiguous ids ``ANSWER0 … ANSWER0 + k - 1``: the policy is the
distribution restricted to that slice.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIALS = ["[PAD]", "[BOS]", "[SEP]", "[UNK]"]
PAD, BOS, SEP, UNK = range(4)
BIT0 = len(SPECIALS)  # ids of "0" and "1"
ANSWER0 = BIT0 + 2  # id of answer symbol a0


def vocab_size(k: int) -> int:
    return ANSWER0 + k


def answer_ids(k: int) -> slice:
    """The token ids of the k answer symbols: the slice of the vocabulary that the policy is a softmax over."""
    return slice(ANSWER0, ANSWER0 + k)


def build_tokenizer(k: int) -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIALS + ["0", "1"] + [f"a{j}" for j in range(k)])}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="[PAD]", bos_token="[BOS]", sep_token="[SEP]", unk_token="[UNK]"
    )


def prompt_ids(bits: torch.Tensor) -> torch.Tensor:
    """``(n, d)`` bits → ``(n, d + 2)`` token ids ``[BOS] bits [SEP]``."""
    n = bits.shape[0]
    return torch.cat(
        [torch.full((n, 1), BOS), bits.long() + BIT0, torch.full((n, 1), SEP)], dim=1
    )


def response_ids(symbols: torch.Tensor) -> torch.Tensor:
    return symbols.long() + ANSWER0


def prompt_text(bits: torch.Tensor) -> list[str]:
    """Text form of prompts, as TRL and ``tokenizer(...)`` see them."""
    return ["[BOS] " + " ".join(str(int(b)) for b in row) + " [SEP]" for row in bits]


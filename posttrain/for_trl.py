"""The testbed's base models, prompts and reward models in TRL's terms, for a ``GRPOTrainer`` script of your own.

    base = TRLBase.load("runs/base")          # q0 as a policy over the k answers, a tokenizer TRL can generate with
    trainer = GRPOTrainer(model=base.model, processing_class=base.tokenizer,
                          reward_funcs=base.reward_function(make_reward(RewardConfig(name="outcome"))),
                          train_dataset=base.prompts(1024), args=GRPOConfig(..., **base.generation_fields()))
    trainer.train()
    base.save("runs/mine/model")               # a plain checkpoint with task.json: python -m eval reads it

(the README's "Your own TRL script" runs it whole). ``posttrain --backend trl`` is built from the same pieces.

Why each piece: the policy is the next-token distribution over the k answer symbols, which a stock causal LM
does not restrict itself to. Generation is restricted with ``suppress_tokens`` and exactly N new tokens; the training
log-probs and entropy by a frozen ``lm_head.bias`` of -1e4 on every other id (TRL's fused LM head reads it). TRL
needs an eos id: its tokenizer is a copy with eos ``[UNK]`` (never in a prompt, suppressed). Saving takes the bias
off and puts back what TRL changed in the config, so saved models are the project's plain ``LlamaForCausalLM``.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from barrierlab.errors import UserError
from barrierlab.loading import load_base, save_model_dir
from barrierlab.models import MASKED_LOGIT
from barrierlab.tasks import task_from_info
from barrierlab.tokenizer import ANSWER0, BIT0, answer_ids, prompt_text
from posttrain.discovery import Discovery
from posttrain.prompts import PromptSource


def require_lm_head(model) -> None:
    """TRL's fused LM head, and the answer bias, need an ``lm_head``: a transformer base."""
    if model.get_output_embeddings() is None:
        raise UserError("TRL needs a transformer base (model.kind transformer); the linear policy has no lm_head")
    if hasattr(model.config, "prompt_dim"):
        raise UserError("TRL generates from text prompts; this base's task has continuous prompts: use --backend native")


def add_answer_bias(model, k: int) -> None:
    """Frozen -1e4 logit bias on every non-answer id: sampling, training log-probs and entropy see only the k answers."""
    head = model.get_output_embeddings()
    bias = torch.full((head.out_features,), MASKED_LOGIT, device=head.weight.device, dtype=head.weight.dtype)
    bias[answer_ids(k)] = 0.0
    head.bias = torch.nn.Parameter(bias, requires_grad=False)


def trl_tokenizer(tokenizer):
    """A copy of the project's tokenizer with the eos id TRL's generation needs: ``[UNK]``, which never occurs."""
    copied = copy.deepcopy(tokenizer)
    copied.eos_token = "[UNK]"
    return copied


def generation_fields(k: int, N: int, vocab: int) -> dict:
    """GRPOConfig fields that make TRL sample the policy: exactly N answer symbols, untruncated, with the dataset's
    columns kept for the reward function."""
    return dict(max_completion_length=N,
                generation_kwargs={"min_new_tokens": N,
                                   "suppress_tokens": [i for i in range(vocab) if not ANSWER0 <= i < ANSWER0 + k]},
                top_k=0, top_p=1.0, min_p=None, repetition_penalty=1.0,
                mask_truncated_completions=False,  # no eos is ever generated: every completion counts as "truncated"
                remove_unused_columns=False)  # target/cluster must reach the reward function


@contextmanager
def as_saved(model, config: dict):
    """Save the project's model class: without the answer bias (not part of LlamaConfig, it would be an unexpected
    key) and with ``config``, the fields that Trainer/TRL change for training (eos, use_cache), as they were."""
    head = model.get_output_embeddings()
    bias, head.bias = head.bias, None
    changed = {key: getattr(model.config, key) for key in config}
    gen_eos, model.generation_config.eos_token_id = model.generation_config.eos_token_id, config["eos_token_id"]
    for key, value in config.items():
        setattr(model.config, key, value)
    try:
        yield model
    finally:
        head.bias = bias
        for key, value in changed.items():
            setattr(model.config, key, value)
        model.generation_config.eos_token_id = gen_eos


def saved_config(model) -> dict:
    """The config fields ``as_saved`` restores, read before TRL changes them."""
    return {"eos_token_id": model.config.eos_token_id, "use_cache": model.config.use_cache}


def prompt_dataset(prompts_source: PromptSource, steps: int, per_step: int):
    """The prompts ``prompts_source`` draws, step by step: text for TRL, plus every column (target, cluster)."""
    from datasets import Dataset

    rows: dict[str, list] = {"prompt": []}
    for _ in range(steps):
        ids, columns = prompts_source.draw(per_step)
        rows["prompt"] += prompt_text(ids[:, 1:-1] - BIT0)  # ids are [BOS] bits [SEP]
        for key, values in columns.items():
            rows.setdefault(key, []).extend(values.tolist())
    return Dataset.from_dict(rows)


class RewardFunction:
    """A project ``RewardModel`` as a TRL reward function; counts queries, samples and discoveries, keeps the last batch.

    TRL passes every dataset column by keyword, one entry per completion (prompts repeated G times in a row); the
    reward model gets ``target`` and ``cluster``, as in the native engine.
    """

    __name__ = "reward"  # TRL names its reward metrics after the function

    def __init__(self, reward, tokenizer, N: int, discovery: Discovery | None = None):
        self.reward, self.tokenizer, self.N = reward, tokenizer, N
        self.queries = self.samples = 0
        self.values = self.success = None
        self.discovery = Discovery(N) if discovery is None else discovery  # posttrain shares its Bookkeeper's

    def __call__(self, prompts, completions, completion_ids, **kwargs) -> list[float]:
        if any(len(ids) != self.N for ids in completion_ids):
            raise RuntimeError(f"TRL generated completions of lengths {sorted({len(i) for i in completion_ids})}, "
                               f"expected {self.N}: give GRPOConfig the generation_fields")
        if "target" not in kwargs:
            raise RuntimeError("the prompts dataset has no 'target' column (y* as symbols): use TRLBase.prompts")
        responses = torch.tensor(completion_ids) - ANSWER0
        prompt_ids = torch.tensor(self.tokenizer(prompts, add_special_tokens=False)["input_ids"])
        columns = {key: torch.tensor(kwargs[key]) for key in ("target", "cluster") if key in kwargs}
        out = self.reward(prompt_ids, responses, columns)
        one_per_row = self.reward.granularity == "outcome" and out.queries == len(completion_ids)
        self.discovery.update(responses, columns["target"], None, self.queries, int(out.queries), one_per_row)
        self.queries += int(out.queries)
        self.samples += len(completion_ids)
        self.values = out.values.float()  # (B, N) per-prefix rewards, for the per-token advantages and the logs
        self.success = (responses == columns["target"]).all(-1)
        return self.values[:, -1].tolist()  # the whole response's verdict: what TRL's outcome advantage needs


@dataclass
class TRLBase:
    """A base run's model, ready for a ``GRPOTrainer`` of your own; ``load`` it from the base run's folder."""

    model: torch.nn.Module
    """q0, restricted to the k answers by the frozen bias: train it."""
    tokenizer: object
    """The tokenizer TRL generates with (eos ``[UNK]``): GRPOTrainer's ``processing_class``."""
    task: object
    """The base's task (``k``, ``N``, ``sample_prompts``, ``targets``)."""
    path: Path
    """The base run's folder."""
    plain_tokenizer: object
    """The project's own tokenizer, saved with the model."""
    plain_config: dict
    """The config fields TRL changes, as they were (``saved_config``)."""

    @classmethod
    def load(cls, base_dir) -> TRLBase:
        path = Path(base_dir)
        model, tokenizer, task_info = load_base(path)
        require_lm_head(model)
        task = task_from_info(task_info)
        base = cls(model, trl_tokenizer(tokenizer), task, path, tokenizer, saved_config(model))
        add_answer_bias(model, task.k)
        return base

    def prompts(self, n: int, seed: int = 0, clusters: list[int] | None = None):
        """``n`` fresh prompts of the task (of ``clusters`` only, if given) as a TRL dataset: ``prompt`` text,
        ``target`` (y* as symbols) and ``cluster``. Not the eval prompts: those measure the result."""
        return prompt_dataset(PromptSource(self.task, torch.Generator().manual_seed(seed), clusters), 1, n)

    def reward_function(self, reward) -> RewardFunction:
        """A project reward model (``rewards.make_reward``) as a TRL reward function; ``.queries`` counts its verdicts."""
        return RewardFunction(reward, self.tokenizer, self.task.N)

    def generation_fields(self) -> dict:
        """What to add to your GRPOConfig so that TRL samples this policy (``generation_fields``)."""
        return generation_fields(self.task.k, self.task.N, self.model.config.vocab_size)

    def save(self, out_dir) -> None:
        """The trained model as a plain checkpoint with the base's task.json (``python -m eval`` reads it)."""
        files = {"task.json": (self.path / "model" / "task.json").read_text()}
        with as_saved(self.model, self.plain_config):
            save_model_dir(Path(out_dir), self.model, self.plain_tokenizer, files)

"""Process reward models (PRMs) learned from labels: the model, loading a trained one, and its quality.

A PRM scores every prefix of a response: ``prefix_probs(prompts, responses)`` is ``(B, L)``, the probability that
``y_1:i`` is a correct prefix. Two shapes, both Llama and both saved with ``save_pretrained``:

- ``classifier``: a ``LlamaForTokenClassification`` with one label; the logit at the position of ``y_i`` (which has
  seen ``x, y_1:i``) is the prefix's log-odds. Trained on prefix labels (``exact``, ``monte_carlo``).
- ``implicit`` (PRIME): a policy ``π_φ`` trained from outcome labels only; the prefix's log-odds is
  ``q_i = β Σ_{j ≤ i} log π_φ(y_j | x, y_<j) / π_ref(y_j | x, y_<j)``, so the per-token process rewards
  ``q_i − q_{i−1}`` sum to the sequence reward ``q_L``; ``π_ref`` is the base it started from (``reference/``).

A trained PRM is a run folder of ``python -m rewards.train_prm``: ``model/`` (and ``reference/``), and ``prm.json``
(written last) with its kind, β, label source and the verifier queries its labels cost.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml

from barrierlab.errors import UserError
from barrierlab.loading import first_line
from barrierlab.policy import sample, token_logprobs
from barrierlab.tokenizer import ANSWER0

PRM_FILE = "prm.json"


def build_classifier(base_model, init_from_base: bool):
    """A one-label ``LlamaForTokenClassification`` of the base's shape: its body a copy of the base's (or freshly
    initialised), its score head new."""
    from transformers import LlamaForTokenClassification

    config = base_model.config.to_dict()
    config.update(num_labels=1, classifier_dropout=0.0, architectures=["LlamaForTokenClassification"])
    model = LlamaForTokenClassification(type(base_model.config).from_dict(config))
    if init_from_base:
        model.model.load_state_dict(base_model.model.state_dict())
    return model


def classifier_logits(model, prompt_ids: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
    """``(B, L)`` log-odds of each prefix ``y_1:i`` from a token-classification model (teacher forcing)."""
    P, L = prompt_ids.shape[1], responses.shape[1]
    logits = model(input_ids=torch.cat([prompt_ids, responses + ANSWER0], 1)).logits
    return logits[:, P : P + L, 0].float()


def implicit_token_rewards(policy, reference, prompt_ids, responses, k: int, beta: float) -> torch.Tensor:
    """``(B, L)`` per-token implicit rewards ``β log π_φ(y_i | x, y_<i) / π_ref(y_i | x, y_<i)``; their cumulative sum
    is each prefix's log-odds, their sum the sequence reward."""
    with torch.no_grad():
        ref = token_logprobs(reference, prompt_ids, responses, k)
    return beta * (token_logprobs(policy, prompt_ids, responses, k) - ref)


class PRM:
    """A trained PRM, loaded from its run folder (``load_prm``)."""

    def __init__(self, path: Path, info: dict, model, reference=None):
        self.path, self.info, self.model, self.reference = path, info, model, reference
        self.kind, self.k = info["kind"], info["task"]["task"]["k"]

    def to(self, device) -> PRM:
        self.model.to(device)
        if self.reference is not None:
            self.reference.to(device)
        return self

    @torch.no_grad()
    def prefix_logits(self, prompt_ids: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` log-odds that each prefix is correct."""
        if self.model.device != prompt_ids.device:
            self.to(prompt_ids.device)
        if self.kind == "classifier":
            return classifier_logits(self.model, prompt_ids, responses)
        rewards = implicit_token_rewards(self.model, self.reference, prompt_ids, responses, self.k, self.info["beta"])
        return rewards.cumsum(-1)

    def prefix_probs(self, prompt_ids: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
        """``(B, L)`` probability that each prefix ``y_1:i`` is correct."""
        return torch.sigmoid(self.prefix_logits(prompt_ids, responses))


def _saved_config(path: Path) -> dict:
    """The run config saved in folder ``path`` (empty if none can be read)."""
    try:
        config = yaml.safe_load((path / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return config if isinstance(config, dict) else {}


def read_prm_info(path) -> dict:
    """``prm.json`` of the PRM run folder ``path``, or one line saying why it is not a finished PRM."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"PRM '{path}' does not exist; pass the run folder of a finished python -m rewards.train_prm")
    info_file = path / PRM_FILE
    if not info_file.is_file():
        if "labels" in _saved_config(path):  # a PRM run's config has a labels section; no other stage's has
            raise UserError(f"PRM '{path}' has not finished (no {PRM_FILE}); rerun the python -m rewards.train_prm "
                            "command that started it (it resumes)")
        raise UserError(f"'{path}' is not a PRM (no {PRM_FILE}); pass the run folder of python -m rewards.train_prm")
    try:
        info = json.loads(info_file.read_text())
    except ValueError as err:
        info = {"error": first_line(err)}
    whole = isinstance(info, dict) and info.get("kind") in ("classifier", "implicit") and \
        isinstance(info.get("label_queries"), int) and isinstance(info.get("task"), dict) and "task" in info["task"]
    if not whole:  # written atomically and last: edited or damaged since
        raise UserError(f"'{info_file}' is not a PRM's record (kind, label_queries, task); it is damaged: rerun the "
                        "PRM's training in a new run folder")
    return info


def check_prm_task(info: dict, path, task_info: dict) -> None:
    """Refuse a PRM trained for another task than ``task_info`` (a base's task.json): another k, N, d or rule."""
    mine, theirs = info["task"], task_info
    if (mine["task"], mine.get("task_state")) != (theirs["task"], theirs.get("task_state")):
        a, b = mine["task"], theirs["task"]
        raise UserError(f"PRM '{path}' was trained for another task (k = {a.get('k')}, N = {a.get('N')}, d = "
                        f"{a.get('d')}, seed {a.get('seed')}) than this base's (k = {b.get('k')}, N = {b.get('N')}, d = "
                        f"{b.get('d')}, seed {b.get('seed')}); train a PRM from this base")


def load_prm(path, task_info: dict | None = None) -> PRM:
    """The PRM of run folder ``path`` (checked against ``task_info`` if given), loaded with the Auto classes."""
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    path = Path(path)
    info = read_prm_info(path)
    if task_info is not None:
        check_prm_task(info, path, task_info)
    try:
        if info["kind"] == "classifier":
            return PRM(path, info, AutoModelForTokenClassification.from_pretrained(str(path / "model")).eval())
        policy = AutoModelForCausalLM.from_pretrained(str(path / "model"), use_kernels=False).eval()
        reference = AutoModelForCausalLM.from_pretrained(str(path / "reference"), use_kernels=False).eval()
    except Exception as err:  # a truncated or hand-edited file
        raise UserError(f"PRM '{path}' cannot be loaded ({first_line(err)}); rerun its training in a new run folder") from None
    return PRM(path, info, policy, reference)


# ---------------------------------------------------------------------------------------------- quality
def auc(scores: torch.Tensor, truth: torch.Tensor) -> float | None:
    """Area under the ROC curve of ``scores`` for the boolean ``truth`` (ties count half); None without both classes."""
    pos, neg = int(truth.sum()), int((~truth).sum())
    if pos == 0 or neg == 0:
        return None
    values = scores.double()
    order = values.argsort()
    _, inverse, counts = torch.unique(values[order], return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    ranks = torch.empty_like(values)
    ranks[order] = (ends - (counts.double() - 1) / 2)[inverse]  # the mean rank of each run of ties
    return float((ranks[truth].sum() - pos * (pos + 1) / 2) / (pos * neg))


def quality_responses(base, prompt_ids: torch.Tensor, targets: torch.Tensor, samples: int, k: int,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The responses a PRM's quality is measured on: ``samples`` draws from the base per prompt, then y* itself
    (prompt-major). Returns (prompt index per row, responses)."""
    P = prompt_ids.shape[0]
    N = targets.shape[1]
    drawn = sample(base, prompt_ids.repeat_interleave(samples, 0), N, k, generator=generator) if samples else targets[:0]
    responses = torch.cat([drawn.view(P, samples, N), targets.unsqueeze(1)], 1).view(P * (samples + 1), N)
    return torch.arange(P, device=prompt_ids.device).repeat_interleave(samples + 1), responses


def prefix_quality(probs: torch.Tensor, truth: torch.Tensor, threshold: float = 0.5) -> dict:
    """AUC and accuracy (verdict: probability > ``threshold``) of prefix probabilities against the true prefix
    correctness, the share of correct and of wrong prefixes accepted, and how many prefixes (and what share of
    correct ones) they were measured on."""
    probs, truth = probs.flatten(), truth.flatten().bool()
    accepted = probs > threshold

    def share(values: torch.Tensor) -> float | None:
        return float(values.double().mean()) if values.numel() else None

    return {"auc": auc(probs, truth) if truth.numel() else None, "accuracy": share(accepted == truth),
            "accept_correct": share(accepted[truth]), "accept_wrong": share(accepted[~truth]), "prefixes": truth.numel(),
            "correct_share": share(truth)}


def quality_by_group(probs: torch.Tensor, truth: torch.Tensor, groups: dict[str, torch.Tensor],
                     threshold: float = 0.5) -> dict[str, dict]:
    """``prefix_quality`` per group (name → boolean row mask over the rows of ``probs``)."""
    return {name: prefix_quality(probs[mask], truth[mask], threshold) for name, mask in groups.items()}

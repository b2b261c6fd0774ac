"""Config of the pretraining stage (``python -m pretrain --config configs/pretrain.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from barrierlab.config import load_config, require
from barrierlab.errors import UserError
from barrierlab.sections import ModelConfig, RunConfig, TaskConfig
from pretrain.profile import ClusterProfile


@dataclass
class DataConfig:
    corpus_size: int = 100_000
    """Pretraining sequences in the corpus (prompt + response); a continuous task has no corpus (fresh draws every
    step) and ignores it."""
    eval_prompts_per_cluster: int = 256
    """Held-out prompts per cluster on which α, LQ and token-level LQ are measured exactly."""

    def check(self):
        require(self.corpus_size >= 1, "corpus_size", "must be ≥ 1")
        require(self.eval_prompts_per_cluster >= 1, "eval_prompts_per_cluster", "must be ≥ 1")


@dataclass
class TrainConfig:
    steps: int = 1200
    """Optimiser steps."""
    batch_size: int = 256
    """Sequences per step (summed over all processes)."""
    optimizer: Literal["auto", "adamw", "adagrad"] = "auto"
    """'auto': AdamW for the transformer, Adagrad for the linear model."""
    lr: float | None = None
    """Peak learning rate; null picks 5e-3 for AdamW and 0.1 for Adagrad."""
    schedule: Literal["auto", "cosine", "constant"] = "auto"
    """'cosine': linear warm-up then cosine decay to 10%; 'auto': cosine for AdamW, constant for Adagrad."""
    warmup_steps: int = 50
    """Linear warm-up steps of the cosine schedule."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = 1.0
    """Clip the gradient norm to this value (0: no clipping)."""
    log_every: int = 20
    """Steps between train/ metric lines."""
    eval_every: int = 200
    """Steps between exact per-cluster likelihood evaluations."""

    def check(self):
        require(self.steps >= 1, "steps", "must be ≥ 1")
        require(self.batch_size >= 1, "batch_size", "must be ≥ 1")
        require(self.lr is None or self.lr > 0, "lr", "must be > 0 (or null for the optimiser's default)")
        require(self.warmup_steps >= 0, "warmup_steps", "must be ≥ 0")
        require(self.weight_decay >= 0, "weight_decay", "must be ≥ 0")
        require(self.grad_clip >= 0, "grad_clip", "must be ≥ 0")
        require(self.log_every >= 1, "log_every", "must be ≥ 1")
        require(self.eval_every >= 1, "eval_every", "must be ≥ 1")


@dataclass
class SupportConfig:
    eps_grid: list[float] = field(default_factory=lambda: [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9])
    """ε values at which the likelihood quantile Q(ε) and token-level quantile Q^TL(ε) are reported."""
    offsupport_threshold: float = 1e-5
    """A prompt is off-support when its base likelihood α(x) is below this (science.md)."""

    def check(self):
        require(len(self.eps_grid) > 0, "eps_grid", "must list at least one ε")
        require(all(0 <= e < 1 for e in self.eps_grid), "eps_grid", "every ε must be in [0, 1)")
        require(0 < self.offsupport_threshold < 1, "offsupport_threshold", "must be in (0, 1)")


def _default_profile() -> list[ClusterProfile]:
    # the default base's (configs/pretrain.yaml): on-support α from 1 down to ~1e-3, token-noise clusters (good
    # per-token coverage, α down to ≈ 4e-6) and two off-support clusters (α ≈ k^-N); low-p sequence clusters and
    # token(0.9) get more weight so that the corpus still shows their y* (or its symbols) often enough to calibrate
    # the designed α.
    return [
        ClusterProfile("exact"),
        ClusterProfile("sequence", p=0.3, weight=2.0),
        ClusterProfile("sequence", p=0.05, weight=3.0),
        ClusterProfile("token", q=0.4),
        ClusterProfile("token", q=0.65),
        ClusterProfile("token", q=0.9, weight=3.0),
        ClusterProfile("sequence", p=0.0),
        ClusterProfile("sequence", p=0.0),
    ]


@dataclass
class PretrainConfig:
    run: RunConfig = field(default_factory=RunConfig)
    """Run folder, seed, logging and checkpoints."""
    task: TaskConfig = field(default_factory=TaskConfig)
    """The synthetic task: prompts and their single correct responses."""
    profile: list[ClusterProfile] = field(default_factory=_default_profile)
    """One entry per cluster: its coverage mode (designed base likelihood) and corpus weight."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The policy class and its size."""
    data: DataConfig = field(default_factory=DataConfig)
    """Corpus and eval prompt set sizes."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation."""
    support: SupportConfig = field(default_factory=SupportConfig)
    """How support.json measures the base model."""

    def check(self):
        require(len(self.profile) >= 1, "profile", "must list at least one cluster")
        require(
            any(c.coverage != "absent" and c.weight > 0 for c in self.profile),
            "profile",
            "needs at least one cluster that appears in pretraining (coverage other than 'absent', weight > 0)",
        )
        continuous = self.task.continuous
        length = (3 if continuous else self.task.d + 2) + self.task.N
        require(
            self.model.kind == "linear" or length <= self.model.context,
            "task.N",
            f"a sequence of {'3' if continuous else 'd + 2'} + N = {length} tokens exceeds model.context = "
            f"{self.model.context}; lower task.N{'' if continuous else ' or task.d'}, or raise model.context",
        )
        if continuous:  # its base trains on fresh (x, y*) draws: the profile only counts its mixture components
            require(all(c.coverage == "exact" for c in self.profile), "profile",
                    f"task '{self.task.name}' trains on (x, y*) itself: every entry must have coverage 'exact'")
            require(self.task.name != "rademacher" or len(self.profile) == 1, "profile",
                    "task 'rademacher' has one component: give one entry, [{coverage: exact}]")


def resolve(cfg: PretrainConfig) -> PretrainConfig:
    """Replace 'auto' choices by what will run, so the saved config says exactly that."""
    t = cfg.train
    if t.optimizer == "auto":
        t.optimizer = "adagrad" if cfg.model.kind == "linear" else "adamw"
    if t.lr is None:
        t.lr = 0.1 if t.optimizer == "adagrad" else 5e-3
    if t.schedule == "auto":
        t.schedule = "constant" if t.optimizer == "adagrad" else "cosine"
    if t.weight_decay > 0 and t.optimizer != "adamw":
        raise UserError(f"train.weight_decay {t.weight_decay}: only adamw decays weights, and train.optimizer is "
                        f"{t.optimizer}; set train.weight_decay 0 or train.optimizer adamw")
    return cfg


def load_pretrain_config(argv: list[str]) -> PretrainConfig:
    """The pretraining config of a command line, resolved: what the stage runs and saves in its run folder."""
    return resolve(load_config(PretrainConfig, argv, default_config="configs/pretrain.yaml", prog="pretrain"))

"""Config sections of the core's own pieces: a run's settings (``RunConfig``, every stage's ``run``), the synthetic
task's (``TaskConfig``) and the policy model's (``ModelConfig``). Plain dataclasses that import neither torch nor
transformers, so a stage answers ``--help`` and a config error before it loads them."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from typing import Literal

from barrierlab.config import require, require_seed

TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "mlflow": "mlflow"}
"""The trackers ``run.report_to`` takes (accelerate's), each with the package that pip installs for it."""


@dataclass
class RunConfig:
    """Every stage's ``run`` section: where it writes, its seed and precision, what it logs and checkpoints."""

    run_dir: str = "runs/base"
    """Folder of this run. Re-running on an existing folder resumes from its last checkpoint."""
    seed: int = 0
    """Seed of everything random in the run (prompts, sampling, initialisation)."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Trackers that get the metric rows besides metrics.jsonl, through accelerate: any of tensorboard (events in
    tb/), wandb, trackio, mlflow; [] for none."""
    project: str = "barrierlab"
    """Project the trackers file the run under (W&B, trackio, MLflow; TensorBoard: the folder in tb/); the run is
    named after its folder."""
    mixed_precision: Literal["auto", "no", "bf16"] = "auto"
    """'auto': bf16 autocast on a GPU, full precision on CPU."""
    checkpoint_every: int = 500
    """Steps between checkpoints (0: only the final model)."""
    keep_checkpoints: int = 2
    """How many recent checkpoints to keep."""
    progress: bool = True
    """Show a progress bar."""

    def check(self):
        require(self.run_dir != "", "run_dir", "must name a folder, e.g. runs/base")
        for name in self.report_to:
            require(name in TRACKERS, "report_to", f"unknown tracker '{name}'; allowed: {', '.join(TRACKERS)} (or [])")
            require(importlib.util.find_spec(TRACKERS[name]) is not None, "report_to",
                    f"{name} is not installed; pip install {TRACKERS[name]} (or leave it out of run.report_to)")
        require(len(set(self.report_to)) == len(self.report_to), "report_to", "lists a tracker twice; give each once")
        require(self.project != "", "project", "must name a project, e.g. barrierlab")
        require(self.checkpoint_every >= 0, "checkpoint_every", "must be ≥ 0")
        require(self.keep_checkpoints >= 1, "keep_checkpoints", "must be ≥ 1")
        require_seed(self.seed)


@dataclass
class TaskConfig:
    name: Literal["cluster_bits", "gaussian_mixture", "rademacher"] = "cluster_bits"
    """Which task generates prompts and their correct responses: cluster_bits (bit prompts, a rule per cluster), or
    the authors' continuous tasks gaussian_mixture and rademacher (one rule for all inputs; barrierlab/tasks/continuous.py)."""
    d: int = 16
    """Prompt length in bits, or the dimension of a continuous prompt."""
    k: int = 8
    """Answer alphabet size (k ≥ 2)."""
    N: int = 8
    """Response length in symbols."""
    flip_prob: float = 0.01
    """Probability that each prompt bit differs from its cluster's centre."""
    per_cluster_rule: bool = True
    """Give every cluster its own hidden rule (W1, W2), so learning one cluster does not transfer (cluster_bits only)."""
    sigma: float = 0.05
    """gaussian_mixture only: the noise scale around each component's mean, also the norm the noise is clipped to."""
    seed: int = 0
    """Seed of the hidden rule and the cluster centres (the task's identity)."""

    @property
    def continuous(self) -> bool:
        """Prompts are vectors x ∈ R^d rather than bits (the authors' tasks)."""
        return self.name != "cluster_bits"

    def check(self):
        require(self.d >= 1, "d", "must be ≥ 1")
        require(self.k >= 2, "k", f"must be ≥ 2 (an answer alphabet of at least two symbols), got {self.k}")
        require(self.N >= 1, "N", f"must be ≥ 1, got {self.N}")
        require(0.0 <= self.flip_prob <= 1.0, "flip_prob", f"must be a probability in [0, 1], got {self.flip_prob}")
        require(self.sigma >= 0, "sigma", f"must be ≥ 0, got {self.sigma}")
        require_seed(self.seed)


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

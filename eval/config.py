"""Config of the evaluation stage (``python -m eval --config configs/eval.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from barrierlab.config import require, require_seed


@dataclass
class EvalStageConfig:
    base: str = "runs/base"
    """Pretraining run folder: its data/eval_prompts are the prompts, its base α(x) defines on-/off-support."""
    checkpoints: dict[str, str] | list[str] = field(default_factory=dict)
    """Models to evaluate: name → model folder or post-training run folder (or a list of folders, named after
    them). On the command line add one with --checkpoints.NAME PATH."""
    prms: dict[str, str] = field(default_factory=dict)
    """Learned PRMs to measure (name → run folder of python -m rewards.train_prm): AUC and accuracy of their prefix
    verdicts against the truth, per split and per cluster. On the command line add one with --prms.NAME PATH."""
    prm_samples: int = 4
    """Responses drawn from the base per eval prompt, besides y* itself, whose prefixes the PRMs are measured on."""
    include_base: bool = True
    """Also evaluate the base model q0 itself, as checkpoint 'base'."""
    allow_other_base: bool = False
    """Evaluate a post-training checkpoint trained from another base than ``base`` anyway, on this base's
    on-/off-support split rather than its own, and say so on screen and at the top of report.md (without it: refused).
    A checkpoint that records no base (a pretraining run's, a model a TRL script saved) is evaluated as it is."""
    out_dir: str = "runs/eval"
    """Where eval.json, per_prompt.csv, passk.csv, passk_exact.csv, the figures and report.md are written."""
    n_samples: int = 256
    """Responses sampled per prompt for pass@k (n)."""
    pass_k: list[int] | None = None
    """k values of pass@k (each ≤ n_samples); null: 1, 2, 4, … n_samples."""
    temperature: float = 1.0
    """Sampling temperature of the pass@k samples (1: the policy itself)."""
    exact_pass_k_max: float = 1e12
    """Largest k of the exact pass@k 1 − (1 − p(y*|x))^k, computed from the exact likelihoods (no sampling)."""
    exact_pass_k_per_decade: int = 10
    """Points per decade of the exact pass@k's log grid of k, from 1 to exact_pass_k_max."""
    eps_grid: list[float] = field(default_factory=lambda: [0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9])
    """ε values of the likelihood quantile Q(ε) and the token-level quantile Q^TL(ε)."""
    offsupport_threshold: float | None = None
    """Base α below which a prompt is off-support (null: the base run's threshold, from task.json)."""
    seed: int = 0
    """Seed of the pass@k samples."""
    batch_size: int = 4096
    """Sequences per forward pass (prompt × sample rows when sampling)."""
    scaling_results: str | None = None
    """JSON of the N-scaling experiment for the report's scaling figure (null: no such figure)."""
    alpha_results: str | None = None
    """JSON of the α-dependence experiment for the report's α figure (null: no such figure)."""
    progress: bool = True
    """Show a progress bar while sampling."""

    def check(self):
        require(self.base != "", "base", "must name the pretraining run folder, e.g. runs/base")
        require(self.out_dir != "", "out_dir", "must name a folder, e.g. runs/eval")
        names = self.named_checkpoints()
        require(all(names.values()), "checkpoints", "every entry must be a folder path, not empty")
        require(len(names) == len(self.checkpoints), "checkpoints", "two folders get the same name; use a mapping name → folder")
        require("base" not in names, "checkpoints", "'base' names the base model's own row (include_base); call the "
                "checkpoint something else")
        require(self.include_base or len(names) > 0, "checkpoints", "nothing to evaluate: list checkpoints or set include_base")
        require(self.n_samples >= 1, "n_samples", "must be ≥ 1")
        require(self.prm_samples >= 0, "prm_samples", "must be ≥ 0")
        require(all(self.prms.values()), "prms", "every entry must be a PRM run folder, not empty")
        require(self.pass_k is None or len(self.pass_k) > 0, "pass_k", "must list at least one k (or be null)")
        require(all(1 <= k <= self.n_samples for k in self.pass_k or []), "pass_k",
                f"every k must be in [1, n_samples = {self.n_samples}]")
        require(self.temperature > 0, "temperature", "must be > 0")
        require(1 <= self.exact_pass_k_max <= 1e30, "exact_pass_k_max", "must be in [1, 1e30], e.g. 1e12")
        require(self.exact_pass_k_per_decade >= 1, "exact_pass_k_per_decade", "must be ≥ 1")
        require(len(self.eps_grid) > 0, "eps_grid", "must list at least one ε")
        require(all(0 <= e < 1 for e in self.eps_grid), "eps_grid", "every ε must be in [0, 1)")
        require(self.offsupport_threshold is None or 0 < self.offsupport_threshold < 1, "offsupport_threshold",
                "must be in (0, 1) or null")
        require(self.batch_size >= 1, "batch_size", "must be ≥ 1")
        require_seed(self.seed)

    def named_checkpoints(self) -> dict[str, str]:
        """``checkpoints`` as name → folder; a listed folder is named after its run (runs/o1/model → o1)."""
        if isinstance(self.checkpoints, dict):
            return {str(name): path for name, path in self.checkpoints.items()}
        return {_run_name(path): path for path in self.checkpoints}


def _run_name(path: str) -> str:
    p = Path(path)
    return p.parent.name if p.name == "model" else p.name

"""Config of the post-training stage (``python -m posttrain --config configs/posttrain_outcome.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from barrierlab.config import load_config, require
from barrierlab.errors import UserError
from barrierlab.sections import RunConfig
from rewards import RewardConfig

Behaviour = Literal["on_policy", "uniform", "mixture", "best_of_m", "token_best_of_m", "teacher_forcing"]
"""Who samples the responses (``posttrain.behaviour``)."""
Baseline = Literal["none", "batch_mean", "position_mean", "group_mean", "rloo"]
"""What is subtracted from the rewards (``posttrain.advantages``)."""


@dataclass
class AlgoConfig:
    behaviour: Behaviour = "on_policy"
    """Who samples: on_policy, uniform, mixture, best_of_m (Algorithm 1), token_best_of_m (Algorithm 2), teacher_forcing
    (the supervised control: y* itself; the reward model still scores it, so it is charged its reward queries)."""
    mixture_weight: float = 0.5
    """Weight of the frozen base q0 in the base/uniform mixture (0.5: the theory's ½ q0 + ½ Unif)."""
    m: int = 64
    """Tries per failure (best_of_m) or candidates per position (token_best_of_m)."""
    baseline: Baseline = "none"
    """Subtracted from the rewards: none, batch_mean, position_mean, group_mean (GRPO), rloo. batch_mean and
    position_mean average over the whole batch, across processes under data parallelism."""
    group_size: int = 1
    """Responses sampled per prompt (G); group_mean and rloo need G ≥ 2."""
    scale_std: bool = False
    """group_mean only: divide by the group's reward standard deviation (GRPO)."""
    kl_coef: float = 0.0
    """Weight of a KL penalty to q0 (the theory has none): the sum of the exact next-token KL(p_t || q0) at each
    position of the trained responses. Its expectation is the sequence KL(p_t || q0) only when p_t samples
    (on_policy); under another behaviour it penalises the per-token KL at the prefixes that behaviour visits."""
    temperature: float = 1.0
    """Sampling temperature of the on-policy samples."""
    sample_ahead: int = 4096
    """on_policy only: at most this many responses sampled in one call while the policy is at rest (no signal yet, or,
    under Adagrad, SGD or the adaptive step, none since the last step with signal: the weights cannot move, so this
    changes no distribution, only speed). A rest after a signal starts at one step and doubles; unused responses are
    dropped unscored when a signal arrives. 1 or the batch size: sample step by step."""

    def check(self):
        require(0.0 <= self.mixture_weight <= 1.0, "mixture_weight", "must be in [0, 1]")
        require(self.m >= 1, "m", "must be ≥ 1")
        require(self.group_size >= 1, "group_size", "must be ≥ 1")
        require(self.baseline not in ("group_mean", "rloo") or self.group_size >= 2, "group_size",
                f"baseline '{self.baseline}' needs group_size ≥ 2")
        require(self.kl_coef >= 0, "kl_coef", "must be ≥ 0")
        require(self.temperature > 0, "temperature", "must be > 0")
        require(self.sample_ahead >= 1, "sample_ahead", "must be ≥ 1")
        require(not self.scale_std or self.baseline == "group_mean", "scale_std",
                f"divides group_mean advantages by the group's std; with baseline '{self.baseline}' it would do nothing: "
                "set baseline group_mean or scale_std false")
        require(self.behaviour != "teacher_forcing" or self.baseline == "none", "baseline",
                "teacher_forcing feeds y* itself, so every exact reward is equal and a mean baseline zeroes every "
                "advantage: use none")


@dataclass
class OptimConfig:
    optimizer: Literal["adam", "adagrad", "sgd", "adaptive"] = "adam"
    """adam, adagrad, sgd, or the theory's adaptive step: each response y of the batch moves the weights by
    η Σ_i A_i ∇ log p(y_i | x, y_<i) with its own η = lr / (4 + 2‖∇ log p(y|x)‖²); all are taken at the same weights
    and summed into one update (one process only), so at batch_size 1 it is the theory's update exactly."""
    lr: float | None = None
    """Learning rate; null: the optimiser's default (adam and sgd 1e-3, adagrad 0.1 as in the authors' runs,
    adaptive 1: its multiplier of the theory's per-response step, so the default is the theory's η exactly)."""
    batch_size: int = 256
    """Responses per step (summed over processes); a multiple of group_size × the number of processes."""
    grad_clip: float = 0.0
    """Clip the gradient norm to this value (0: no clipping)."""
    max_steps: int = 1000
    """Stop after this many policy-gradient steps."""
    max_queries: int | None = None
    """Stop once this many reward queries have been spent (null: no query budget)."""
    target_likelihood: float | None = None
    """Stop once the mean likelihood of y* on the `stop_on` eval prompts reaches this (null: never)."""
    stop_on: Literal["offsupport", "onsupport", "all", "tracked", "trained"] = "offsupport"
    """Eval prompts whose mean likelihood `target_likelihood` refers to ('trained': those of prompts.clusters)."""

    def check(self):
        if self.lr is None:  # resolved here, so every loader and the saved config.yaml hold the rate that runs
            self.lr = {"adam": 1e-3, "sgd": 1e-3, "adagrad": 0.1, "adaptive": 1.0}[self.optimizer]
        require(self.lr > 0, "lr", "must be > 0 (or null for the optimiser's default)")
        require(self.batch_size >= 1, "batch_size", "must be ≥ 1")
        require(self.grad_clip >= 0, "grad_clip", "must be ≥ 0")
        require(self.max_steps >= 1, "max_steps", "must be ≥ 1")
        require(self.max_queries is None or self.max_queries >= 1, "max_queries", "must be ≥ 1 or null")
        require(self.target_likelihood is None or 0 < self.target_likelihood <= 1, "target_likelihood",
                "must be a likelihood in (0, 1] or null")


@dataclass
class PromptConfig:
    clusters: list[int] | None = None
    """Train on fresh prompts from these clusters only (null: the task's whole prompt distribution)."""
    dataset: str | None = None
    """Instead of fresh prompts, sample from this saved prompt dataset (columns prompt_ids, target_ids; with
    prompts.clusters, its rows of those clusters, by its cluster column)."""


@dataclass
class EvalConfig:
    eval_every: int = 25
    """Steps between exact evaluations on the base run's eval prompts."""
    num_tracked: int = 16
    """Prompts tracked individually, spread over the quantiles of the base α (a base with tracked prompts, the mixture
    centres of gaussian_mixture, tracks those instead)."""
    offsupport_threshold: float | None = None
    """Base α below which a prompt is off-support (null: the base run's threshold)."""
    log_every: int = 1
    """Steps between train/ metric lines."""

    def check(self):
        require(self.eval_every >= 1, "eval_every", "must be ≥ 1")
        require(self.num_tracked >= 0, "num_tracked", "must be ≥ 0")
        require(self.log_every >= 1, "log_every", "must be ≥ 1")
        require(self.offsupport_threshold is None or 0 < self.offsupport_threshold < 1, "offsupport_threshold",
                "must be in (0, 1) or null")


@dataclass
class PosttrainConfig:
    backend: Literal["native", "trl"] = "native"
    """Who runs the policy-gradient loop: the native engine, or TRL's GRPOTrainer (on_policy, group_size ≥ 2; see posttrain/trl_backend.py)."""
    base: str = "runs/base"
    """Folder of the pretraining run: its model/ is q0 and its data/eval_prompts the eval set."""
    run: RunConfig = field(default_factory=lambda: RunConfig(run_dir="runs/posttrain", checkpoint_every=100))
    """Run folder, seed, logging and checkpoints."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward model: name, value convention and parameters."""
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    """Behaviour policy, advantages and regularisation."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser, batch and budgets."""
    prompts: PromptConfig = field(default_factory=PromptConfig)
    """Where training prompts come from."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Exact evaluation during training."""

    def check(self):
        require(self.optim.batch_size % self.algo.group_size == 0, "optim.batch_size",
                f"must be a multiple of algo.group_size = {self.algo.group_size}")
        if self.optim.optimizer == "adaptive":  # its step is the theory's, per response: nothing else enters it
            require(self.algo.kl_coef == 0, "algo.kl_coef", "must be 0 with optim.optimizer 'adaptive'")
            require(self.optim.grad_clip == 0, "optim.grad_clip", "must be 0 with optim.optimizer 'adaptive'")


def load_posttrain_config(argv: list[str]) -> PosttrainConfig:
    """The post-training config of a command line: what the stage runs and saves in its run folder."""
    return load_config(PosttrainConfig, argv, default_config="configs/posttrain_outcome.yaml", prog="posttrain")


def check_trl_config(cfg: PosttrainConfig) -> None:
    """What the TRL backend cannot run that the config alone tells, as one-line UserErrors: checked before torch is
    imported, by the stage (``--backend trl``) and by the drivers for their TRL runs."""
    if cfg.algo.behaviour != "on_policy":
        raise UserError(f"algo.behaviour '{cfg.algo.behaviour}': the trl backend samples on-policy only; "
                        "use --backend native for other behaviour policies")
    if cfg.algo.group_size < 2:
        raise UserError(f"algo.group_size {cfg.algo.group_size}: the trl backend needs ≥ 2 (TRL's num_generations); "
                        "set --algo.group_size 2 or more (and a baseline, e.g. group_mean)")
    if cfg.optim.optimizer == "adaptive":
        raise UserError("optim.optimizer 'adaptive' needs per-response gradients: use adam/adagrad/sgd with the trl backend")

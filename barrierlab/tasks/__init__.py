"""Synthetic tasks: prompts with exactly one correct response ``y*(x)`` of N symbols over k.

A task is anything with the ``Task`` interface below. To add one, write a module here with a class that implements
it, register it in ``TASKS`` and add its name to ``TaskConfig.name``; configs then select it by ``task.name``. Every
task is built with those of ``TaskConfig``'s fields that its constructor names, as keyword arguments.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass
from typing import Literal, Protocol

import torch

from barrierlab.config import require, require_seed
from barrierlab.tasks.cluster_bits import ClusterBitsTask
from barrierlab.tasks.continuous import GaussianMixtureTask, RademacherTask


class Task(Protocol):
    k: int
    """Answer alphabet size."""
    N: int
    """Response length."""
    d: int
    """Prompt length in bits, or the dimension of a continuous prompt."""
    num_clusters: int
    continuous: bool
    """Prompts are vectors ``x ∈ R^d`` (float32 prompt tensors ``(n, d)``) rather than token ids."""
    prompt_len: int
    """Prompt positions of the transformer's layout: d + 2 for bits, 3 for a continuous prompt."""

    def sample_prompts(
        self, n: int, generator: torch.Generator, clusters: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` prompts as (inputs ``(n, d)``: bits in {0,1} or vectors, cluster ``(n,)``); ``clusters`` fixes each
        one's cluster (mixture component)."""
        ...

    def prompts(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model-facing prompt tensor: token ids ``[BOS] bits [SEP]``, or the float32 vectors themselves."""
        ...

    def targets(self, bits: torch.Tensor, cluster: torch.Tensor) -> torch.Tensor:
        """The correct responses ``y*`` as ``(n, N)`` symbol indices in ``[0, k)``."""
        ...

    def tracked_prompts(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Inputs and clusters of the prompts to track one by one (the mixture centres), or None."""
        ...

    def state_dict(self) -> dict:
        """Everything drawn from the task seed, JSON-serialisable (stored in task.json)."""
        ...

    def load_state_dict(self, state: dict) -> None: ...


TASKS = {"cluster_bits": ClusterBitsTask, "gaussian_mixture": GaussianMixtureTask, "rademacher": RademacherTask}


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

    def check(self):
        require(self.d >= 1, "d", "must be ≥ 1")
        require(self.k >= 2, "k", f"must be ≥ 2 (an answer alphabet of at least two symbols), got {self.k}")
        require(self.N >= 1, "N", f"must be ≥ 1, got {self.N}")
        require(0.0 <= self.flip_prob <= 1.0, "flip_prob", f"must be a probability in [0, 1], got {self.flip_prob}")
        require(self.sigma >= 0, "sigma", f"must be ≥ 0, got {self.sigma}")
        require_seed(self.seed)


def build_task(cfg: TaskConfig, num_clusters: int, state: dict | None = None) -> Task:
    """The task of ``cfg``; ``state`` (from task.json) restores exactly what an earlier stage drew."""
    cls = TASKS[cfg.name]
    named = inspect.signature(cls.__init__).parameters
    task = cls(num_clusters=num_clusters, **{k: v for k, v in asdict(cfg).items() if k in named})
    if state is not None:
        task.load_state_dict(state)
    return task


def task_from_info(info: dict) -> Task:
    """Rebuild the task recorded in a checkpoint's task.json."""
    return build_task(TaskConfig(**info["task"]), len(info["profile"]), info.get("task_state"))

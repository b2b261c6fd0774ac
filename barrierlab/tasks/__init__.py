"""Synthetic tasks: prompts with exactly one correct response ``y*(x)`` of N symbols over k.

A task is anything with the ``Task`` interface below. To add one, write a module here with a class that implements
it, register it in ``TASKS`` and add its name to ``TaskConfig.name`` (``barrierlab/sections.py``); configs then
select it by ``task.name``. Every task is built with those of ``TaskConfig``'s fields that its constructor names, as
keyword arguments.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict
from typing import Protocol

import torch

from barrierlab.sections import TaskConfig
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

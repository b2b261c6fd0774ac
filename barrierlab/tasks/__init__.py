"""Synthetic tasks: prompts with exactly one correct response ``y*(x)`` of N symbols over k.

A task is anything with the ``Task`` interface below. To add one, write a module here with a class that implements
it, register it in ``TASKS`` and add its name to ``TaskConfig.name`` (``barrierlab/sections.py``); configs then
select it by ``task.name``. Every task is built with ``TaskConfig``'s fields as keyword arguments (``flip_prob`` and
``per_cluster_rule`` included).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Protocol

import torch

from barrierlab.sections import TaskConfig
from barrierlab.tasks.cluster_bits import ClusterBitsTask


class Task(Protocol):
    k: int
    """Answer alphabet size."""
    N: int
    """Response length."""
    d: int
    """Prompt length in bits."""
    num_clusters: int

    def sample_prompts(
        self, n: int, generator: torch.Generator, clusters: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` prompts as (bits ``(n, d)`` in {0,1}, cluster ``(n,)``); ``clusters`` fixes each one's cluster."""
        ...

    def targets(self, bits: torch.Tensor, cluster: torch.Tensor) -> torch.Tensor:
        """The correct responses ``y*`` as ``(n, N)`` symbol indices in ``[0, k)``."""
        ...

    def state_dict(self) -> dict:
        """Everything drawn from the task seed, JSON-serialisable (stored in task.json)."""
        ...

    def load_state_dict(self, state: dict) -> None: ...


TASKS = {"cluster_bits": ClusterBitsTask}


def build_task(cfg: TaskConfig, num_clusters: int, state: dict | None = None) -> Task:
    """The task of ``cfg``; ``state`` (from task.json) restores exactly what an earlier stage drew."""
    fields = {k: v for k, v in asdict(cfg).items() if k != "name"}
    task = TASKS[cfg.name](num_clusters=num_clusters, **fields)
    if state is not None:
        task.load_state_dict(state)
    return task


def task_from_info(info: dict) -> Task:
    """Rebuild the task recorded in a checkpoint's task.json."""
    return build_task(TaskConfig(**info["task"]), len(info["profile"]), info.get("task_state"))

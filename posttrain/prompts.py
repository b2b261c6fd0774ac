"""Where post-training prompts come from: fresh draws from the task, or rows of a saved prompt dataset."""

from __future__ import annotations

from pathlib import Path

import torch

from barrierlab.errors import UserError
from barrierlab.loading import column_tensor, load_dataset_dir, prompt_tensors


class PromptSource:
    """Fresh prompts from the task distribution (of ``clusters`` only, if given), or rows of the saved prompt
    ``dataset``: the settings of ``PromptConfig`` (posttrain's ``prompts``)."""

    def __init__(self, task, generator: torch.Generator, clusters: list[int] | None = None, dataset: str | None = None):
        self.task, self.generator, self.clusters = task, generator, clusters
        if clusters is not None:
            bad = [c for c in clusters if not 0 <= c < task.num_clusters]
            if bad or not clusters:
                raise UserError(f"prompts.clusters: {bad or 'empty list'} not in 0..{task.num_clusters - 1}")
        self.dataset = prompt_rows(dataset, task, clusters) if dataset else None

    def draw(self, n: int) -> tuple[torch.Tensor, dict]:
        if self.dataset is not None:
            prompts, targets, clusters = self.dataset
            rows = torch.randint(0, prompts.shape[0], (n,), generator=self.generator)
            cols = {"target": targets[rows]}
            if clusters is not None:
                cols["cluster"] = clusters[rows]
            return prompts[rows], cols
        chosen = None
        if self.clusters is not None:
            pool = torch.tensor(self.clusters)
            chosen = pool[torch.randint(0, pool.numel(), (n,), generator=self.generator)]
        inputs, clusters = self.task.sample_prompts(n, self.generator, clusters=chosen)
        return self.task.prompts(inputs), {"target": self.task.targets(inputs, clusters), "cluster": clusters}


def prompt_rows(path: str, task, clusters: list[int] | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(prompt ids, target symbols, clusters or None) of a saved prompt dataset, checked against the base's task
    and restricted to ``clusters`` if given."""
    ds = load_dataset_dir(Path(path), ["target_ids"])
    prompts, targets = prompt_tensors(ds)
    width, what = (task.d, f"vectors of d = {task.d}") if task.continuous else (task.d + 2, f"d + 2 = {task.d + 2} tokens")
    if (prompts.dim(), targets.dim()) != (2, 2) or prompts.shape[1] != width or targets.shape[1] != task.N or \
            prompts.is_floating_point() != task.continuous or not ((targets >= 0) & (targets < task.k)).all():
        raise UserError(f"prompts.dataset '{path}' is not of the base's task (prompts of {what}, "
                        f"responses of N = {task.N} answers among k = {task.k}); use the eval_prompts of this base")
    cluster = column_tensor(ds, "cluster") if "cluster" in ds.column_names else None
    if clusters is not None:
        if cluster is None:
            raise UserError(f"prompts.clusters: '{path}' has no cluster column to select by; leave prompts.clusters out")
        keep = torch.isin(cluster, torch.tensor(clusters))
        if not keep.any():
            raise UserError(f"prompts.clusters: '{path}' has no rows of clusters {clusters}")
        prompts, targets, cluster = prompts[keep], targets[keep], cluster[keep]
    return prompts, targets, cluster

"""What every training loop shares: seeding, the seeded batches of a fixed training set, the accelerator with its
precision and trackers, leaving the process group, stopping on divergence, fault injection for the resume tests,
peak memory and device synchronisation."""

from __future__ import annotations

import functools
import math
import os
import random
from pathlib import Path

import torch

from barrierlab.errors import UserError
from barrierlab.sections import RunConfig


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def precision_of(run: RunConfig) -> str:
    """What ``run.mixed_precision`` runs as, for either backend: 'auto' is bf16 autocast on a
    GPU, fp32 on CPU."""
    if run.mixed_precision == "auto":
        return "bf16" if torch.cuda.is_available() else "no"
    return run.mixed_precision


def make_accelerator(run: RunConfig):
    """An ``Accelerator`` with the run's precision (``precision_of``) and trackers (``run.report_to``; TensorBoard's
    events go to the run folder's tb/). ``RunDir`` starts them at its first row and finishes them."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    project = ProjectConfiguration(project_dir=run.run_dir, logging_dir=str(Path(run.run_dir) / "tb"))
    # cpu=True without CUDA: under torchrun / accelerate launch the processes then form a gloo group
    return Accelerator(mixed_precision=precision_of(run), cpu=not torch.cuda.is_available(),
                       log_with=run.report_to or None, project_config=project)


def leave_process_group(acc) -> None:
    """End a stage that may run data-parallel: free what ``acc.prepare`` wrapped (the caller has dropped its own
    references), then leave the process group together. A DDP wrapper's reducer holds the group; freed once another
    process has gone (at exit, say), it joins gloo threads that never return: a hang, or an abort."""
    acc.free_memory()  # accelerate's own references, then a garbage collection (DDP sits in a reference cycle)
    acc.wait_for_everyone()
    acc.end_training()


def stop_if_diverged(step: int, lr_key: str, model=None, **values: float) -> None:
    """Stop in one line once a logged value (``values``: name → value) or, given a ``model``, a weight is no longer
    finite, a learning rate too high, usually: every later step would train NaN weights, and the run would end
    'successfully' with nan likelihoods (or, under TRL, fail deep in its sampling)."""
    bad = [f"{name} is {value}" for name, value in values.items() if not math.isfinite(value)]
    # one device sync for all weights (TRL checks every step), not one per tensor
    if not bad and model is not None and not bool(torch.stack([p.isfinite().all() for p in model.parameters()]).all()):
        bad = ["the weights are no longer finite"]
    if bad:
        raise UserError(f"training diverged: {bad[0]} at step {step}; lower {lr_key} and rerun in a new run_dir")


def fault_point(step: int) -> None:
    """Fault injection for the resume tests: ``BARRIERLAB_KILL_AFTER_STEP=n`` SIGKILLs the process after step n."""
    if os.environ.get("BARRIERLAB_KILL_AFTER_STEP") == str(step):
        os.kill(os.getpid(), 9)


def peak_memory_mb(device) -> float:
    """Peak memory of this process: allocated GPU memory on CUDA, resident set size on CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def synchronize(device) -> None:
    """Wait for queued GPU work, so wall-clock timings mean what they say."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@functools.lru_cache(maxsize=2)  # the epoch a batch starts in and the next (a batch larger than the corpus recomputes)
def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The corpus order of one epoch, drawn once per epoch rather than once per step: a permutation of 1M rows costs
    about 8 ms on a CPU core, a sixth of a GPU pretraining step (H200, configs/gpu). Seeded by (seed, epoch) alone,
    so a resumed run sees the same batches. Shared: read it, never write to it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def batch_rows(step: int, batch_size: int, n: int, seed: int) -> torch.Tensor:
    """Rows of a training set of ``n`` rows for ``step``: a fixed shuffle per epoch, walked in order (pretraining's
    corpus, a PRM's labelled responses)."""
    first = step * batch_size
    epoch, offset = divmod(first, n)
    rows = []
    while len(rows) < batch_size:
        rows.extend(epoch_order(n, seed, epoch)[offset : offset + batch_size - len(rows)].tolist())
        epoch, offset = epoch + 1, 0
    return torch.tensor(rows)

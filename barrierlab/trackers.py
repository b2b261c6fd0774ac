"""The experiment trackers a run's metric rows go to besides metrics.jsonl (``run.report_to``: TensorBoard, W&B,
trackio, MLflow), through accelerate's: started at the run's first row with its resolved config as hyperparameters,
finished when the run closes. metrics.jsonl stays the record of truth; a tracker gets a row's finite numbers.

A resumed run repeats the steps after its checkpoint: TensorBoard hides the events of those steps from the killed
process (``purge_step``); W&B, trackio and MLflow get a new run each time the stage starts, named after the folder."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from barrierlab.sections import RunConfig


def flat_config(cfg) -> dict[str, bool | int | float | str]:
    """A (nested) config as one level of dotted keys (``optim.lr``) with values every tracker takes: a number, a
    bool or a string stay as they are, a list or null becomes its JSON text."""
    flat = {}

    def walk(value, key: str) -> None:
        if isinstance(value, dict):
            for name, item in value.items():
                walk(item, f"{key}.{name}" if key else str(name))
        elif isinstance(value, (bool, int, float, str)):
            flat[key] = value
        else:
            flat[key] = json.dumps(value)

    walk(dataclasses.asdict(cfg), "")
    return flat


class Trackers:
    """The trackers of ``run.report_to`` on ``acc`` (``barrierlab.training.make_accelerator``) for the run folder
    ``path`` of config ``cfg``. Used by the main process only."""

    def __init__(self, acc, cfg, run: RunConfig, path: Path):
        self.acc, self.cfg, self.run, self.path = acc, cfg, run, path
        self.purge_step: int | None = None  # set by a resume: the first step this process logs again
        self.started = False

    def log(self, step: int, row: dict) -> None:
        if not self.run.report_to:
            return
        if not self.started:
            name = self.path.resolve().name
            kwargs = {"tensorboard": {"purge_step": self.purge_step}, "wandb": {"name": name},
                      "trackio": {"name": name}, "mlflow": {"run_name": name}}
            self.acc.init_trackers(self.run.project, config=flat_config(self.cfg), init_kwargs=kwargs)
            self.started = True
        values = {key: value for key, value in row.items()
                  if key != "step" and isinstance(value, (int, float)) and math.isfinite(value)}
        self.acc.log(values, step=step)

    def close(self) -> None:
        """Finish the trackers (files flushed and closed, a W&B run marked finished); the accelerator's
        ``end_training`` then has none left to finish."""
        if self.started:
            for tracker in self.acc.trackers:
                tracker.finish()
            self.acc.trackers.clear()
            self.started = False

"""run.report_to: the rows of metrics.jsonl reach TensorBoard and W&B (offline) through accelerate's trackers, with
the resolved config as hyperparameters; a resume repeats no TensorBoard step; a tracker that is not installed or
not known is one line before anything is written."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, TINY, metrics, run_stage

CONFIG = str(TINY / "posttrain_outcome.yaml")


def tracked(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """What the trackers get of the rows: each metric's finite numbers, as (step, value) in the order logged (a
    training and an evaluation row of one step both count its reward queries)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                out.setdefault(key, []).append((row["step"], value))
    return out


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def wandb_records(path: Path) -> list:
    """The records of an offline W&B run file (``run-<id>.wandb``): a 7-byte header, then LevelDB's log format
    (32 KiB blocks, records of 7-byte headers: checksum, length, kind 1 whole / 2 first / 3 middle / 4 last)."""
    from wandb.proto import wandb_internal_pb2

    data, records, pending = path.read_bytes(), [], b""
    assert data[:4] == b":W&B"
    pos = 7
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(wandb_internal_pb2.Record.FromString(pending))
            pending = b""
    return records


def wandb_run(folder: Path) -> dict:
    """An offline W&B run folder's name, project, config and history (step → the row's values)."""
    (path,) = folder.glob("run-*.wandb")
    run = {"name": None, "project": None, "config": {}, "history": {}}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run |= {"name": record.run.display_name, "project": record.run.project}
        elif kind == "config":
            run["config"] |= {item.key: yaml.safe_load(item.value_json) for item in record.config.update}
        elif kind == "history":  # a key with a / comes as a nested key of one part
            values = {item.key or "/".join(item.nested_key): yaml.safe_load(item.value_json) for item in record.history.item}
            run["history"][values.pop("_step")] = {k: v for k, v in values.items() if not k.startswith("_")}
    return run


def test_tensorboard_and_wandb_get_the_rows_and_the_config_and_a_resume_repeats_no_step(tmp_path, tiny_base):
    run_dir = tmp_path / "run"
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), "WANDB_SILENT": "true"}
    args = ["--config", CONFIG, "--base", str(tiny_base), "--run.run_dir", str(run_dir), "--run.checkpoint_every", "4",
            "--run.report_to", "[tensorboard, wandb]"]
    killed = run_stage("posttrain", *args, env={**env, "BARRIERLAB_KILL_AFTER_STEP": "7"}, check=False)
    assert killed.returncode == -9  # after step 7: it resumes from the checkpoint of step 4
    run_stage("posttrain", *args, env=env)
    rows = metrics(run_dir)
    assert rows[-1]["done/steps"] == 12

    # TensorBoard: every number of every row once, at its step: the killed process's steps 5 to 7 are hidden
    expected = tracked(rows)
    scalars = tensorboard_scalars(run_dir / "tb" / "barrierlab")
    assert set(scalars) == set(expected) and "train/loss" in scalars and "eval/offsupport_likelihood" in scalars
    for tag, logged in expected.items():
        assert [step for step, _ in scalars[tag]] == [step for step, _ in logged], tag
        assert [value for _, value in scalars[tag]] == pytest.approx([value for _, value in logged], rel=1e-6)
    hparams = sorted((run_dir / "tb" / "barrierlab").glob("*/hparams.yml"))  # each process's, in a folder of its time
    assert len(hparams) == 2 and yaml.safe_load(hparams[-1].read_text())["optim.lr"] == 0.01

    # W&B: a run for each start of the stage (the killed one's offline file may hold nothing: W&B writes it from its
    # own process, which a SIGKILL leaves no time to flush), named after the folder, with the config; the second
    # holds steps 5 to 12, one history row a step
    killed, resumed = (wandb_run(folder) for folder in sorted((tmp_path / "wandb").glob("offline-run-*")))
    assert max(killed["history"], default=0) <= 7 and (resumed["name"], resumed["project"]) == ("run", "barrierlab")
    assert sorted(resumed["history"]) == sorted({r["step"] for r in rows if r["step"] > 4})
    for step, values in resumed["history"].items():
        assert values == pytest.approx({k: dict(v)[step] for k, v in expected.items() if step in dict(v)}, rel=1e-6)
    config = resumed["config"]
    assert (config["optim.lr"], config["reward.name"], config["run.report_to"]) == (0.01, "outcome", '["tensorboard", "wandb"]')


def test_the_trl_backend_logs_its_rows_to_the_trackers(tmp_path, tiny_base):
    from posttrain.__main__ import main

    run_dir = tmp_path / "trl"
    main(["--config", CONFIG, "--base", str(tiny_base), "--run.run_dir", str(run_dir), "--backend", "trl",
          "--optim.batch_size", "8", "--algo.group_size", "4", "--optim.max_steps", "3", "--eval.eval_every", "2"])
    scalars = tensorboard_scalars(run_dir / "tb" / "barrierlab")
    expected = tracked(metrics(run_dir))
    assert "train/loss" in scalars and {tag: [s for s, _ in v] for tag, v in scalars.items()} == {
        tag: [s for s, _ in v] for tag, v in expected.items()}


@pytest.mark.parametrize(("stage", "tracker", "says"), [
    ("posttrain", "wandb", "wandb is not installed; pip install wandb (or leave it out of run.report_to)"),
    ("pretrain", "tensorboard", "tensorboard is not installed; pip install tensorboard (or leave it out of run.report_to)"),
    ("pretrain", "tensorbord", "unknown tracker 'tensorbord'; allowed: tensorboard, wandb, trackio, mlflow (or [])"),
])
def test_a_tracker_not_installed_or_unknown_is_one_line_before_anything_is_written(tmp_path, stage, tracker, says):
    # the package is missing as Python sees it: None in sys.modules makes its import (and find_spec) fail
    script = f"import sys; sys.modules[{tracker!r}] = None; from {stage}.__main__ import main; main()"
    proc = subprocess.run([sys.executable, "-c", script, "--run.report_to", f"[{tracker}]", "--run.run_dir",
                           str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True)
    assert (proc.returncode, proc.stderr) == (2, f"error: command line: key 'run.report_to': {says}\n")
    assert not (tmp_path / "run").exists()

"""The run folder's bookkeeping: which checkpoint a resume trusts, pruning, and metrics a kill left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from barrierlab.errors import UserError
from barrierlab.models import LinearPolicyConfig, LinearPolicyLM
from barrierlab.rundir import RunDir, claim_output_dir, read_metrics, remove_run_folder
from barrierlab.tokenizer import build_tokenizer, vocab_size
from barrierlab.training import RunConfig
from pretrain.config import load_pretrain_config
from tests.conftest import ROOT, TINY, wait_for


@dataclass
class Cfg:
    run: RunConfig = field(default_factory=RunConfig)
    lr: float = 0.1


def model_with(value: float) -> LinearPolicyLM:
    model = LinearPolicyLM(LinearPolicyConfig(d=3, k=2, vocab_size=vocab_size(2)))
    with torch.no_grad():
        model.W1.fill_(value)
    return model


def make_run(tmp_path, keep: int = 2) -> RunDir:
    cfg = Cfg(RunConfig(run_dir=str(tmp_path / "run"), keep_checkpoints=keep, report_to=[]))
    return RunDir(cfg, cfg.run)


def test_checkpoints_are_pruned_and_resume_trusts_only_complete_ones(tmp_path):
    run, tokenizer = make_run(tmp_path), build_tokenizer(2)
    for step in (1, 2, 3):
        run.log(step, {"train/loss": float(step)})
        run.save_checkpoint(step, model_with(step), tokenizer, {"step": step}, {})
    assert sorted(p.name for p in run.ckpt_dir.iterdir()) == ["step_0000002", "step_0000003"]  # keep_checkpoints = 2
    # what a kill can leave: a newer folder still being written (no trainer_state.pt, written last), its temporary
    (run.ckpt_dir / "step_0000004").mkdir()
    (run.ckpt_dir / ".tmp_step_0000005").mkdir()
    run.log(4, {"train/loss": 4.0})
    with open(run.path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "train/lo')  # the line a kill cut short
    model = model_with(0.0)
    state = run.resume(model)
    assert state["step"] == 3 and torch.all(model.W1 == 3.0)
    assert [row["step"] for row in read_metrics(run.path / "metrics.jsonl")] == [1, 2, 3]  # work after step 3 is lost


def test_a_damaged_checkpoint_or_metrics_line_is_a_one_line_error(tmp_path):
    run = make_run(tmp_path)
    run.save_checkpoint(1, model_with(1.0), build_tokenizer(2), {"step": 1}, {})
    (run.ckpt_dir / "step_0000001" / "model.safetensors").write_bytes(b"\0" * 10)
    with pytest.raises(UserError, match="checkpoint '.*step_0000001' cannot be loaded .*delete that folder"):
        run.resume(model_with(0.0))
    path = run.path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1}) + "\n{oops\n" + json.dumps({"step": 2}) + "\n")
    with pytest.raises(UserError, match="line 2 is not JSON"):
        read_metrics(path)
    for row in ("{}", "5", '{"step": "1"}'):  # JSON, but no metrics row
        path.write_text(json.dumps({"step": 1}) + f"\n{row}\n")
        with pytest.raises(UserError, match="line 2 is not a metrics row \\(a JSON object with an integer step\\)"):
            read_metrics(path)


def test_a_drivers_run_that_failed_at_its_start_gives_way_too(tmp_path):
    from experiments.stages import plan_run

    args = ("--config", str(TINY / "pretrain.yaml"), "--run.run_dir", str(tmp_path / "base"))
    failed = load_pretrain_config([*args, "--train.steps", "7"])
    RunDir(failed, failed.run)  # started with another step count, stopped before its first step
    assert plan_run("pretrain", load_pretrain_config, tmp_path / "base", True, *args) is None  # not refused (finished)
    RunDir(failed, failed.run).log(5, {"train/loss": 1.0})  # one that got somewhere is refused
    with pytest.raises(UserError, match="already holds a run with a different config \\(key 'train.steps': 7 there"):
        plan_run("pretrain", load_pretrain_config, tmp_path / "base", True, *args)


def test_a_run_folder_refuses_another_config(tmp_path):
    make_run(tmp_path).log(1, {"train/loss": 1.0})  # a run that got somewhere
    other = Cfg(RunConfig(run_dir=str(tmp_path / "run"), keep_checkpoints=2, report_to=["tensorboard"]), lr=0.2)
    with pytest.raises(UserError, match="already holds a run with a different config \\(key 'lr': 0.1 there, 0.2 now\\)"):
        RunDir(other, other.run)
    other.lr = 0.1  # how the run reports itself is not part of the experiment
    RunDir(other, other.run)
    (tmp_path / "run").rename(tmp_path / "moved")  # nor where its folder is
    moved = Cfg(RunConfig(run_dir=str(tmp_path / "moved"), keep_checkpoints=2, report_to=[]))
    RunDir(moved, moved.run)

    for text in ("run: [\n", ""):  # config.yaml edited or damaged after the atomic write
        (tmp_path / "moved" / "config.yaml").write_text(text)
        with pytest.raises(UserError, match="config.yaml is not a saved config \\(damaged or edited\\); pass a new"):
            RunDir(moved, moved.run)


def test_a_run_that_stopped_before_its_first_step_gives_way_to_another_config(tmp_path, capsys):
    # e.g. out of memory at its first batch: the corrected command reuses the folder instead of being refused
    failed = ("from tests.test_run_dir import make_run; from pathlib import Path; "
              f"run = make_run(Path({str(tmp_path)!r})); run.log(0, {{'eval/likelihood': 0.5}}); (run.path / 'tb').mkdir()")
    subprocess.run([sys.executable, "-c", failed], cwd=ROOT, check=True)  # its own process, which held the lock
    folder = tmp_path / "run"
    other = Cfg(RunConfig(run_dir=str(tmp_path / "run"), keep_checkpoints=2, report_to=[]), lr=0.2)
    RunDir(other, other.run)
    assert capsys.readouterr().out == f"{folder} held a run of another config that stopped before its first step; started over there\n"
    assert "lr: 0.2" in (folder / "config.yaml").read_text()
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "config.yaml"]
    # the same in one process (stages called in-process): its own lock does not stand in the way
    third = Cfg(RunConfig(run_dir=str(folder), keep_checkpoints=2, report_to=[]), lr=0.3)
    RunDir(third, third.run)
    assert "lr: 0.3" in (folder / "config.yaml").read_text()
    # what a rerun could keep makes the folder the run's (a checkpoint, a final model, metrics past step 0), and so
    # do a user's files or a config.yaml that no run wrote: refused, nothing deleted
    for progress in ("checkpoint", "model", "metrics", "user_file", "damaged_config"):
        path = tmp_path / progress
        run = RunDir(Cfg(RunConfig(run_dir=str(path), report_to=[])), RunConfig(run_dir=str(path), report_to=[]))
        run.log(0, {"eval/likelihood": 0.5})
        if progress == "checkpoint":
            run.save_checkpoint(1, model_with(1.0), build_tokenizer(2), {"step": 1}, {})
        elif progress == "model":
            (path / "model").mkdir()
        elif progress == "metrics":
            run.log(1, {"train/loss": 1.0})
        elif progress == "user_file":
            (path / "notes.md").write_text("my notes")
        else:
            (path / "config.yaml").write_text("run: [\n")
        before = sorted(p.name for p in path.iterdir())
        other = Cfg(RunConfig(run_dir=str(path), report_to=[]), lr=0.2)
        words = "is not a saved config" if progress == "damaged_config" else \
            "already holds a run with a different config \\(key 'lr': 0.1 there"
        with pytest.raises(UserError, match=words):
            RunDir(other, other.run)
        assert sorted(p.name for p in path.iterdir()) == before, progress


def test_resuming_a_checkpoint_whose_metrics_lost_lines_is_refused(tmp_path):
    run = make_run(tmp_path)
    for step in (0, 1, 2):
        run.log(step, {"train/loss": float(step)})
    run.save_checkpoint(2, model_with(2.0), build_tokenizer(2), {"step": 2}, {})
    path = run.path / "metrics.jsonl"
    kept = path.read_text()
    for lost in ("".join(kept.splitlines(keepends=True)[1:]), None):  # a line deleted by hand, the whole file deleted
        path.write_text(lost) if lost is not None else path.unlink()
        with pytest.raises(UserError, match=f"metrics.jsonl holds {2 if lost else 0} of the 3 lines the run logged up "
                                            "to its checkpoint at step 2 \\(deleted or edited\\); put them back"):
            run.resume(model_with(0.0))
    path.write_text(kept)
    assert make_run(tmp_path).resume(model_with(0.0))["step"] == 2  # with the lines back it resumes


def test_a_folder_that_cannot_be_created_is_a_one_line_error(tmp_path):
    (tmp_path / "a_file").write_text("")
    inside = tmp_path / "a_file" / "run"  # a path under a file: no one can create it
    cfg = Cfg(RunConfig(run_dir=str(inside), report_to=[]))
    with pytest.raises(UserError, match=f"run.run_dir: cannot create '{inside}' \\(Not a directory\\); pass a folder"):
        RunDir(cfg, cfg.run)
    with pytest.raises(UserError, match=f"out_dir: cannot create '{inside}' \\(Not a directory\\)"):
        claim_output_dir(inside, "out_dir", "eval")


def test_output_folders_of_eval_and_the_drivers_are_their_own(tmp_path):
    claim = lambda path, kind="the scaling experiment": claim_output_dir(path, "out_dir", kind)  # noqa: E731
    assert claim(tmp_path / "new") == tmp_path / "new" and claim(tmp_path / "new") == tmp_path / "new"  # created, reclaimed
    with pytest.raises(UserError, match="holds the output of the scaling experiment, not of the alpha experiment"):
        claim(tmp_path / "new", "the alpha experiment")
    run = make_run(tmp_path)  # a run folder
    with pytest.raises(UserError, match="is a run folder \\(it has a config.yaml\\); pass a new or empty folder as out_dir"):
        claim(run.path)
    for name in ("notes.txt", "results.json"):  # an unmarked folder is not this command's, whatever it holds
        (tmp_path / name).mkdir()
        (tmp_path / name / name).write_text("")
        with pytest.raises(UserError, match="holds other files; pass a new or empty folder as out_dir"):
            claim(tmp_path / name)
    cfg = Cfg(RunConfig(run_dir=str(tmp_path / "new"), report_to=[]))
    with pytest.raises(UserError, match="holds the output of the scaling experiment, not a run"):
        RunDir(cfg, cfg.run)


def alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_a_stage_dies_with_its_driver_and_a_run_folder_has_one_writer(tmp_path):
    args = ["--config", str(TINY / "pretrain.yaml"), "--run.run_dir", str(tmp_path / "base"), "--train.steps", "1000000"]
    driver = f"from experiments.stages import run_stage; run_stage('pretrain', *{args!r})"  # as the experiment drivers
    proc = subprocess.Popen([sys.executable, "-c", driver], cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    cfg = load_pretrain_config(args)
    stage = None
    try:
        assert wait_for(lambda: (tmp_path / "base" / "metrics.jsonl").exists(), 120)
        stage = int((tmp_path / "base" / ".lock").read_text())
        assert stage != proc.pid and alive(stage)
        with pytest.raises(UserError, match=rf"in use by another process \(pid {stage}\); wait for it"):
            RunDir(cfg, cfg.run)  # a second writer (say, the driver's rerun) is refused while the stage runs
        with pytest.raises(UserError, match=rf"in use by another process \(pid {stage}\); wait for it"):
            remove_run_folder(tmp_path / "base")  # nor deleted under it (make bench redoes its runs)
        proc.kill()  # SIGKILL: the driver gets no chance to stop its child itself
        proc.wait()
        assert wait_for(lambda: not alive(stage), 30)
    finally:
        proc.kill()
        if stage is not None and alive(stage):  # a failure must not leave a million-step run behind
            os.kill(stage, 9)

    def free() -> bool:  # the lock goes with the last of the stage's threads, a moment after its main one
        try:
            return RunDir(cfg, cfg.run) is not None
        except UserError:
            return False

    assert wait_for(free, 10)  # the folder is free again


def test_a_run_folder_is_not_inside_another_run_nor_among_other_files(tmp_path):
    make_run(tmp_path)  # tmp_path/run
    for inside in ("run/model", "run/checkpoints/step_0000001", "run/a/b"):
        cfg = Cfg(RunConfig(run_dir=str(tmp_path / inside)))
        with pytest.raises(UserError, match=f"is inside the run folder '{tmp_path / 'run'}'; pass a folder outside it"):
            RunDir(cfg, cfg.run)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    cfg = Cfg(RunConfig(run_dir=str(tmp_path / "notes")))
    with pytest.raises(UserError, match="holds other files and no run \\(no config.yaml\\); pass a new or empty folder"):
        RunDir(cfg, cfg.run)
    assert [p.name for p in (tmp_path / "notes").iterdir()] == ["todo.txt"]
    (tmp_path / "proj").mkdir()  # a user's copy of a config is not a run folder
    (tmp_path / "proj" / "config.yaml").write_text("optim: {lr: 0.1}\n")
    (tmp_path / "proj" / "runs" / "r").mkdir(parents=True)
    (tmp_path / "proj" / "runs" / "r" / ".tmp_config.yaml").write_text("")  # hidden: a write in progress
    cfg = Cfg(RunConfig(run_dir=str(tmp_path / "proj" / "runs" / "r")))
    RunDir(cfg, cfg.run)
    out = claim_output_dir(tmp_path / "experiment", "out_dir", "make scaling")
    (out / "config.yaml").write_text("out_dir: x\n")  # a driver's output folder holds its runs
    cfg = Cfg(RunConfig(run_dir=str(out / "N4" / "base")))
    RunDir(cfg, cfg.run)


def test_a_tilde_in_a_config_path_is_refused_not_made_a_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = Cfg(RunConfig(run_dir="~/runs/x"))  # from a YAML file: no shell expanded it
    with pytest.raises(UserError, match="run.run_dir: '~/runs/x' starts with ~, which only a shell expands"):
        RunDir(cfg, cfg.run)
    assert not (tmp_path / "~").exists()

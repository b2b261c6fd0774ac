"""``python -m eval`` on a checkpoint trained from another base of the same task: refused in one line, or, with
``allow_other_base``, evaluated on this base's split and said so on screen and at the top of the report."""

from __future__ import annotations

import json
import shutil

import pytest

from eval.__main__ import main
from tests.conftest import TINY, one_line_error, run_stage


@pytest.fixture(scope="module")
def other_run(tmp_path_factory) -> tuple:
    """A tiny base of another seed (the same task, other weights) and a short outcome run post-trained from it."""
    root = tmp_path_factory.mktemp("other")
    run_stage("pretrain", "--config", str(TINY / "pretrain.yaml"), "--run.run_dir", str(root / "base"), "--run.seed", "1")
    run_stage("posttrain", "--config", str(TINY / "posttrain_outcome.yaml"), "--base", str(root / "base"),
              "--run.run_dir", str(root / "outcome"), "--optim.max_steps", "2")
    return root / "base", root / "outcome"


def test_a_checkpoint_of_another_base_is_refused_in_one_line(other_run, tiny_base, tmp_path, capsys):
    other_base, run = other_run
    args = ["--config", str(TINY / "eval.yaml"), "--base", str(tiny_base), "--out_dir", str(tmp_path / "e")]
    copied = shutil.copytree(run / "model", tmp_path / "copied")  # a model folder moved out of its run keeps its base
    for path in (run, run / "checkpoints" / "step_0000002", copied):  # a run folder (its model/), a checkpoint, a copy
        err = one_line_error(main, [*args, "--checkpoints.mine", str(path)], capsys)
        assert f"checkpoint 'mine' ({path if path != run else run / 'model'}) was trained from another base than " \
               f"'{tiny_base}' (its run's base: '{other_base}'" in err
        assert "pass that base with --base, or --allow_other_base true" in err and not (tmp_path / "e").exists()
    # a model that records no base (another pretraining run) is evaluated as before
    main([*args, "--checkpoints.q0", str(other_base), "--include_base", "false", "--n_samples", "2"])
    assert json.loads((tmp_path / "e" / "eval.json").read_text())["other_base"] == {}
    assert "another base" not in capsys.readouterr().out


def test_allow_other_base_evaluates_it_and_says_so(other_run, tiny_base, tmp_path, capsys):
    other_base, run = other_run
    out = tmp_path / "e"
    main(["--config", str(TINY / "eval.yaml"), "--base", str(tiny_base), "--out_dir", str(out), "--checkpoints.mine",
          str(run), "--allow_other_base", "true", "--n_samples", "2"])
    assert f"warning: checkpoint 'mine' was trained from another base ('{other_base}'), not '{tiny_base}'" \
           in capsys.readouterr().out
    results = json.loads((out / "eval.json").read_text())
    assert list(results["checkpoints"]) == ["base", "mine"] and results["other_base"] == {"mine": str(other_base)}
    assert (out / "report.md").read_text().splitlines()[:3] == [
        f"# Evaluation report: `{out}`", "",
        f"**Trained from another base than `{tiny_base}`**, evaluated anyway (allow_other_base) on this base's "
        f"on-/off-support split, not their own: `mine` (from `{other_base}`)."]

"""Run folders: the resolved config, metrics (JSONL + the trackers of run.report_to), atomic checkpoints and resume,
one writer at a time, and the output folders of the commands that are not runs (eval, the drivers).

Layout of ``runs/<name>/``::

    config.yaml        the resolved config (what actually ran)
    metrics.jsonl      one JSON object per logged step, stable metric names
    tb/                TensorBoard events (with run.report_to: [tensorboard], the default)
    checkpoints/       step_0000500/ ...: model (save_pretrained), tokenizer, trainer_state.pt
    model/             the final model, loadable with AutoModelForCausalLM.from_pretrained
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

import torch
import yaml

from barrierlab.config import dump_yaml
from barrierlab.errors import UserError
from barrierlab.loading import first_line, save_model_dir
from barrierlab.sections import RunConfig
from barrierlab.trackers import Trackers
from barrierlab.training import make_accelerator


# ---------------------------------------------------------------------------------------------- configs of a folder
class DifferentConfig(UserError):
    """A run folder holds a run of the same stage with another config."""


def check_same_config(path: Path, cfg, fix: str = "pass a new --run.run_dir, or delete the folder to start over") -> None:
    """Refuse, in one line ending in ``fix``, a run folder ``path`` whose config.yaml holds a config other than
    ``cfg``: resuming or reusing it would mix two experiments. Where the folder is (it may have been moved) and how
    the run shows its progress are not part of the experiment."""
    config_file = path / "config.yaml"
    if not config_file.exists():
        return
    try:
        old = yaml.safe_load(config_file.read_text())
    except yaml.YAMLError:
        old = None
    if not isinstance(old, dict):  # config.yaml is written atomically: this one was edited or damaged since
        raise UserError(f"{config_file} is not a saved config (damaged or edited); {fix}")
    new = yaml.safe_load(dump_yaml(cfg))
    if not set(old) & set(new) - {"run"}:  # every stage has a run section; nothing else in common: another stage's
        raise UserError(f"{path} already holds another kind of run (its config.yaml has {', '.join(map(str, old))}); {fix}")
    if isinstance(old.get("base"), str) and isinstance(new.get("base"), str) and \
            os.path.normpath(old["base"]) == os.path.normpath(new["base"]):
        old["base"] = new["base"]  # runs/base/ and ./runs/base name the same base
    diff = _first_difference(old, new, ignore={"run.run_dir", "run.progress", "run.report_to", "run.project"})
    if diff:
        key, was, now = diff
        raise DifferentConfig(f"{path} already holds a run with a different config (key '{key}': {_short(was)} there, "
                              f"{_short(now)} now); {fix}")


def _first_difference(old, new, ignore: set[str], prefix: str = "") -> tuple[str, object, object] | None:
    """(dotted key, old value, new value) of the first difference, or None."""
    if not (isinstance(old, dict) and isinstance(new, dict)):
        return None if old == new else (prefix.rstrip("."), old, new)
    for key in sorted(set(old) | set(new), key=str):
        if f"{prefix}{key}" not in ignore:
            diff = _first_difference(old.get(key), new.get(key), ignore, f"{prefix}{key}.")
            if diff:
                return diff
    return None


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


RUN_OUTPUTS = {"config.yaml", "metrics.jsonl", "tb", "data", "checkpoints"}  # what a run writes before its first step


def failed_at_start(path: Path, cfg) -> bool:
    """Whether ``path`` holds a run of the same stage with another config that ``stopped_before_first_step``: it
    holds nothing a rerun could keep, so the corrected command may take its place."""
    try:
        check_same_config(path, cfg)
    except DifferentConfig:
        return stopped_before_first_step(path)
    except UserError:  # damaged, or another stage's: leave it for the user to look at
        pass
    return False


def stopped_before_first_step(path: Path) -> bool:
    """Whether the run folder ``path`` holds nothing but what a run writes (no user's files), no checkpoint, no final
    model and no metrics after step 0, e.g. a run out of memory at its first batch."""
    entries = {p.name for p in path.iterdir() if not p.name.startswith(".")}
    ckpts = path / "checkpoints"
    if not _is_run_folder(path) or not entries <= RUN_OUTPUTS or \
            (ckpts.is_dir() and any(not p.name.startswith(".") for p in ckpts.iterdir())):
        return False
    try:
        return all(row["step"] <= 0 for row in read_metrics(path / "metrics.jsonl"))
    except UserError:  # damaged metrics: leave them for the user to look at
        return False


# ---------------------------------------------------------------------------------------------- one writer a folder
_held_locks: dict[tuple[int, int], int] = {}  # (device, inode) of a lock file this process holds -> its descriptor


def _lock(path: Path) -> int:
    """An open descriptor of ``path/.lock`` (created if missing) that holds its lock, or a one-line refusal naming
    the process that holds it."""
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise UserError(f"{path} is in use by another process (pid {holder}); wait for it to finish or stop it, "
                        "then rerun (a run resumes)") from None
    return fd


def _held_by_me(path: Path) -> tuple[int, int] | None:
    """The key in ``_held_locks`` of ``path/.lock`` if this process holds it (by its inode: the folder may have been
    moved since), else None."""
    try:
        st = os.stat(path / ".lock")
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino) if (st.st_dev, st.st_ino) in _held_locks else None


def lock_run_folder(path: Path) -> None:
    """Hold ``path/.lock`` for the rest of this process (the kernel lets go when it exits, however it exits), or
    fail in one line: two processes appending to one metrics.jsonl and checkpointing into one folder (a run
    started twice, a driver's orphaned stage still running) would interleave two runs."""
    if _held_by_me(path):
        return
    fd = _lock(path)
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    st = os.fstat(fd)
    _held_locks[st.st_dev, st.st_ino] = fd


def remove_run_folder(path: Path, only_if=None) -> bool:
    """Delete a run folder to redo it, or fail in one line if a process still holds it (see ``lock_run_folder``).
    ``only_if()``: checked once the lock is held (the run cannot move on meanwhile); False keeps the folder.
    Returns whether it was deleted."""
    if not path.is_dir():
        return False
    held = _held_by_me(path)  # a run this process started before (stages called in-process, as tests do)
    fd = None if held else _lock(path)
    try:
        if only_if is not None and not only_if():
            return False
        if held:
            os.close(_held_locks.pop(held))
        shutil.rmtree(path, ignore_errors=True)
        return True
    finally:
        if fd is not None:
            os.close(fd)


# ---------------------------------------------------------------------------------------------- where runs may be
def _is_run_folder(path: Path) -> bool:
    """A stage's run folder: its config.yaml, and what only runs write beside it (a config.yaml alone may be a
    user's copy of a config)."""
    return (path / "config.yaml").exists() and any((path / name).exists() for name in (".lock", "metrics.jsonl"))


def check_run_dir_place(path: Path) -> None:
    """Refuse a run folder inside another run's folder (the other run's rerun may replace it, and the two runs' files
    would mix) or a folder of other files (a run would write among them); a driver's output folder holds runs.
    Hidden files do not count as other files: the lock, a temporary file of a write in progress, NFS's leftovers."""
    for parent in path.resolve().parents:
        if (parent / OUTPUT_MARKER).exists():
            break
        if _is_run_folder(parent):
            raise UserError(f"run.run_dir: '{path}' is inside the run folder '{parent}'; pass a folder outside it")
    if path.is_dir() and not (path / "config.yaml").exists() and any(not p.name.startswith(".") for p in path.iterdir()):
        raise UserError(f"run.run_dir: '{path}' holds other files and no run (no config.yaml); pass a new or empty folder")


def output_dir(path, key: str, create: bool = True) -> Path:
    """The output folder ``path`` of config key ``key`` (created unless ``create`` is false), or one line saying
    that a file is in the way."""
    path = Path(path)
    if str(path).startswith("~"):  # a shell expands ~ on the command line; YAML does not
        raise UserError(f"{key}: '{path}' starts with ~, which only a shell expands; write the full path "
                        f"({path.expanduser()})")
    if path.exists() and not path.is_dir():
        raise UserError(f"{key}: '{path}' is a file, not a folder; pass another {key}")
    if create:
        make_dir(path, key)
    return path


def make_dir(path: Path, key: str) -> None:
    """Create the folder ``path`` of config key ``key`` (and its parents), or say in one line why it cannot be."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{key}: cannot create '{path}' ({err.strerror}); pass a folder you can write to") from None


OUTPUT_MARKER = ".barrierlab_output"  # in the folder of a command that is not a run (eval, the drivers): which one


def claim_output_dir(path, key: str, kind: str) -> Path:
    """The output folder ``path`` (config key ``key``) of the command ``kind``, created and marked as its own before
    anything is written there, or one line that refuses it: a run folder, another command's output, or a folder of
    other files would have files replaced."""
    path = output_dir(path, key, create=False)
    marker = path / OUTPUT_MARKER
    if marker.exists():
        owner = marker.read_text().strip()
        if owner != kind:
            raise UserError(f"{key}: '{path}' holds the output of {owner}, not of {kind}; pass another {key}")
        return path
    if path.is_dir() and any(path.iterdir()):
        what = "is a run folder (it has a config.yaml)" if (path / "config.yaml").exists() else "holds other files"
        raise UserError(f"{key}: '{path}' {what}; pass a new or empty folder as {key}")
    make_dir(path, key)
    atomic_write_text(marker, kind + "\n")
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """Write a file through a temporary sibling and a rename: a kill leaves the old text or the new, never half."""
    path = Path(path)
    tmp = path.with_name(f".tmp_{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- metrics rows
def read_metrics(path) -> list[dict]:
    """The rows of a metrics.jsonl (none if there is no such file). A kill can cut the last line short: that line is
    left out; a damaged line before it is a one-line error."""
    path = Path(path)
    lines = [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    rows = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i + 1 < len(lines):
                raise UserError(f"'{path}' line {i + 1} is not JSON; the file is damaged: delete the run folder to start "
                                "over") from None
            continue
        if not isinstance(row, dict) or type(row.get("step")) is not int:
            raise UserError(f"'{path}' line {i + 1} is not a metrics row (a JSON object with an integer step); the file "
                            "was edited or damaged: restore it, or delete the run folder to start over")
        rows.append(row)
    return rows


def last_row(run_dir, key: str, upto: int | None = None) -> dict | None:
    """The last row of ``run_dir``'s metrics.jsonl that has ``key`` (``done/steps``: the run finished;
    ``eval/likelihood``: its latest evaluation), at step ``upto`` or before if given (None: none, or no metrics)."""
    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    return next((r for r in reversed(rows) if key in r and (upto is None or r["step"] <= upto)), None)


def _plain(value):
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


# ---------------------------------------------------------------------------------------------- the run folder
class RunDir:
    """One run folder: refuses to mix runs of different configs, resumes a run of the same config, and is written
    by one process at a time (the main one of ``acc``, the run's ``make_accelerator``, one made here if None; the
    others only read). Its rows go to metrics.jsonl and to the accelerator's trackers."""

    def __init__(self, cfg, run: RunConfig, acc=None):
        acc = make_accelerator(run) if acc is None else acc
        self.path = output_dir(run.run_dir, "run.run_dir", create=False)
        self.is_main = is_main = acc.is_main_process
        self.ckpt_dir = self.path / "checkpoints"
        self.keep = run.keep_checkpoints
        if (self.path / OUTPUT_MARKER).exists():
            raise UserError(f"run.run_dir: '{self.path}' holds the output of "
                            f"{(self.path / OUTPUT_MARKER).read_text().strip()}, not a run; pass another run.run_dir")
        check_run_dir_place(self.path)  # every process: each refuses in its own one line
        if is_main and failed_at_start(self.path, cfg) and \
                remove_run_folder(self.path, only_if=lambda: failed_at_start(self.path, cfg)):  # again, under the lock
            print(f"{self.path} held a run of another config that stopped before its first step; started over there")
        acc.wait_for_everyone()  # the other processes compare configs once the main one has cleared the folder
        check_same_config(self.path, cfg)
        if is_main:
            make_dir(self.path, "run.run_dir")
            lock_run_folder(self.path)
            check_same_config(self.path, cfg)  # again: the process that held the lock may have just written it
            text, config_file = dump_yaml(cfg), self.path / "config.yaml"
            if not config_file.exists() or config_file.read_text() != text:  # a moved folder records where it is now
                atomic_write_text(config_file, text)
        self._trackers = Trackers(acc, cfg, run, self.path)
        self._lines = 0  # metric lines in metrics.jsonl (this process writes them all): checkpoints record it

    def log(self, step: int, metrics: dict) -> None:
        """Append one row to metrics.jsonl, then give its finite numbers to the trackers."""
        if not self.is_main:
            return
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        self._lines += 1
        self._trackers.log(step, row)

    def close(self) -> None:
        self._trackers.close()

    def _truncate_metrics(self, after_step: int, logged: int) -> None:
        """Drop the metric lines logged after ``after_step`` (work lost in a kill). ``logged``: how many lines the run
        had written by then; fewer left in the file is a one-line refusal, as the resumed curves would start mid-run."""
        self._trackers.purge_step = after_step + 1
        if not self.is_main:
            return
        path = self.path / "metrics.jsonl"
        kept = [row for row in read_metrics(path) if row["step"] <= after_step]
        if len(kept) < logged:
            raise UserError(f"{path} holds {len(kept)} of the {logged} lines the run logged up to its checkpoint at "
                            f"step {after_step} (deleted or edited); put them back to resume, or delete the folder "
                            "to start over")
        self._lines = len(kept)
        if path.exists():
            atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in kept))

    def resume(self, model, optimizer=None, check=None) -> dict | None:
        """Load the latest checkpoint's weights and optimiser state into ``model`` and ``optimizer`` (None: the
        caller loads ``state["optimizer"]`` itself), drop the metric lines logged after it, and return its trainer
        state (None: no checkpoint, start afresh, without the lines of a run killed before its first checkpoint).
        ``check(state)`` may refuse the state (a UserError) before any line is dropped."""
        ckpt = self.latest_checkpoint()
        if ckpt is None:
            self._truncate_metrics(-1, 0)
            return None
        from safetensors.torch import load_file

        def damaged(err: Exception) -> UserError:
            return UserError(f"checkpoint '{ckpt}' cannot be loaded ({first_line(err)}); delete that folder to resume "
                             "from the one before it")

        try:  # checkpoints are written atomically: one that fails to load was damaged afterwards
            state = torch.load(ckpt / "trainer_state.pt", weights_only=True)  # tensors, numbers, strings and containers only
        except Exception as err:
            raise damaged(err) from None
        if check is not None:  # before the weights: a run of another model would fail to load them, misleadingly
            check(state)
        try:
            model.load_state_dict(load_file(str(ckpt / "model.safetensors")))
            if optimizer is not None:
                optimizer.load_state_dict(state["optimizer"])
        except Exception as err:
            raise damaged(err) from None
        self._truncate_metrics(state["step"], state["metric_lines"])
        return state

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint (its trainer_state.pt is written last), or None."""
        if not self.ckpt_dir.is_dir():
            return None
        done = sorted(p for p in self.ckpt_dir.iterdir() if p.name.startswith("step_") and (p / "trainer_state.pt").exists())
        return done[-1] if done else None

    def save_checkpoint(self, step: int, model, tokenizer, state: dict, files: dict[str, str]):
        """Write ``checkpoints/step_N`` atomically (temporary folder, then rename) and prune old ones. ``files``
        (task.json) make it a model folder that ``eval`` reads like the final ``model/``."""
        if not self.is_main:
            return
        final = self.ckpt_dir / f"step_{step:07d}"
        save_model_dir(final, model, tokenizer, files, state={**state, "metric_lines": self._lines})
        old = sorted(p for p in self.ckpt_dir.iterdir() if p.name.startswith("step_"))
        for p in old[: -self.keep]:
            shutil.rmtree(p, ignore_errors=True)

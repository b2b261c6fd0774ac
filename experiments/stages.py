"""Running stages from the experiment drivers: each stage is its own process, handing files to the next. Checking a
stage's config needs no torch; planning and running a stage (``plan_run``, ``run_stage``) import it."""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import traceback
from pathlib import Path

from barrierlab.config import load_config, parse_overrides
from barrierlab.errors import PARENT_PID_ENV, UserError
from experiments.cluster import Job
from pretrain.config import load_pretrain_config

DRIVER_KEYS = ("base", "run.run_dir")  # where a driver's stage reads and writes: the driver sets them for each run


def check_stage_args(stage_config: type, config: str, args: list[str], *, user_args: list[str], config_key: str,
                     user_key: str):
    """The config a stage will run with the overrides ``args``, or one line, before any run starts or is reused,
    when the stage config file ``config`` (the driver's key ``config_key``) is missing, or the user's overrides
    ``user_args`` (the driver's key ``user_key``) set what the driver sets for each run (the rest of ``args``, and
    where the run reads and writes) or do not fit the config. ``args`` ends with ``user_args``, so the user's win."""
    if not Path(config).is_file():
        raise UserError(f"{config_key}: config file '{config}' not found; fix {config_key}")
    driver_args = args[: len(args) - len(user_args)]
    assert driver_args + user_args == args, "args must end with user_args"
    config_given, user, wants_help = parse_overrides(user_args)
    if config_given is not None or wants_help:
        raise UserError(f"{user_key}: holds {'--config' if config_given else '--help'}, which is not an override; leave it out")
    by_driver = {name for name, _ in parse_overrides(driver_args)[1]} | set(DRIVER_KEYS)
    for name, _ in user:
        clash = sorted(d for d in by_driver if d == name or d.startswith(name + "."))  # a section holds its keys
        if clash:
            raise UserError(f"{user_key}: --{name} would override {', '.join(clash)}, which the driver sets for each run "
                            "(see its own settings: --help); leave it out")
    try:
        return load_config(stage_config, ["--config", config, *args])
    except UserError as err:
        try:  # whose error: the file's own, or the overrides'
            load_config(stage_config, ["--config", config])
        except UserError as own:
            raise UserError(f"{config_key}: {own}") from None
        raise UserError(f"{user_key}: {err}") from None


class StageFailed(UserError):
    """A stage run that exited with an error: the stage's own last line, and ``tail``, its log's last lines."""

    def __init__(self, message: str, tail: str):
        super().__init__(message)
        self.tail = tail


def run_stage(stage: str, *args: str, threads: int | None = None) -> None:
    """``python -m <stage> args`` in a forked child that dies with this process, with ``threads`` CPU threads (None:
    torch's default); a failure is a ``StageFailed`` carrying the stage's own last line.

    A fork, not a new interpreter: the stage's imports (torch, transformers: seconds each time) are done once here and
    inherited, so a sweep of a hundred short runs does not spend most of its time importing. The child is still its
    own process (its own memory, seeds, accelerator state, exit code), as ``python -m`` would give. This process
    itself computes nothing with torch, so the child inherits no thread pool."""
    import torch

    main = importlib.import_module(f"{stage}.__main__").main
    importlib.import_module(f"{stage}.stage")  # the stage's body, which its main imports: here once, then inherited
    sys.stdout.flush()
    sys.stderr.flush()
    with tempfile.TemporaryFile("w+") as log:
        pid = os.fork()
        if pid == 0:  # the child: the stage's main with its output in the log, then exit without the parent's cleanup
            code = 1
            try:
                os.dup2(log.fileno(), 1)
                os.dup2(log.fileno(), 2)
                os.environ[PARENT_PID_ENV] = str(os.getppid())
                if threads is not None:
                    os.environ["OMP_NUM_THREADS"] = str(threads)  # for what the run starts itself
                    torch.set_num_threads(threads)
                main(list(args))
                code = 0
            except SystemExit as done:
                code = done.code if isinstance(done.code, int) else 1
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        try:
            _, status = os.waitpid(pid, 0)
        except KeyboardInterrupt:  # the child got the same Ctrl-C: let it close its run folder first
            os.waitpid(pid, 0)
            raise
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            log.seek(0)
            lines = log.read().strip().splitlines() or ["(no output)"]
            raise StageFailed(f"{stage} {' '.join(args[:4])} ... failed: {lines[-1]}", "\n".join(lines[-20:]))


def plan_run(stage: str, saved_config, run_dir: Path, finished: bool, *args: str) -> Job | None:
    """The job that runs ``python -m <stage> args`` (writing ``run_dir``), or None if the run there is ``finished``: a
    driver rerun reuses what it has (an unfinished run resumes), but never a run of other settings, which is refused
    here, before any job starts (unless it stopped before its first step: the stage then starts over there, see
    ``run.failed_at_start``). ``saved_config(args)``: the config the stage would run and save for ``args``."""
    from barrierlab.rundir import DifferentConfig, check_same_config, stopped_before_first_step

    cfg = saved_config(list(args))
    try:
        check_same_config(run_dir, cfg, fix="pass a new --out_dir, or delete that folder to rerun it")
    except DifferentConfig:
        if not stopped_before_first_step(run_dir):
            raise  # else it gives way to the stage (which says so)
    return None if finished else Job(stage, run_dir, tuple(args))


def base_job(pretrain_config: str, run_dir: Path, *overrides: str) -> Job | None:
    """The job that pretrains a base into ``run_dir``, or None if it is already there (of the same config)."""
    return plan_run("pretrain", load_pretrain_config, run_dir, (run_dir / "support.json").exists(), "--config",
                    pretrain_config, "--run.run_dir", str(run_dir), "--run.progress", "false", *overrides)


def posttrain_job(run_dir: Path, *args: str) -> Job | None:
    """The job that post-trains into ``run_dir`` (``python -m posttrain args``, which name it), or None if the run
    there finished (its done/ row)."""
    from barrierlab.rundir import last_row
    from posttrain.config import load_posttrain_config

    return plan_run("posttrain", load_posttrain_config, run_dir, last_row(run_dir, "done/steps") is not None, *args)


def ensure_base(pretrain_config: str, run_dir: Path, *overrides: str) -> dict:
    """Pretrain a base into ``run_dir`` here and now unless it is already there (of the same config); its support.json."""
    job = base_job(pretrain_config, run_dir, *overrides)
    if job is not None:
        run_stage(job.stage, *job.args)
    return json.loads((run_dir / "support.json").read_text())


def check_trl_run(run_cfg, where: str) -> None:
    """What the TRL backend refuses in a driver's run config, as one line before any run starts (and before torch)."""
    from posttrain.config import check_trl_config

    try:
        check_trl_config(run_cfg)
    except UserError as err:
        raise UserError(f"{where}: {err}") from None

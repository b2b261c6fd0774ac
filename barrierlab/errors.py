"""User-facing errors: one line, exit code 2, no traceback."""

from __future__ import annotations

import errno
import functools
import math
import os
import signal
import sys


class UserError(Exception):
    """Bad input from the user (config, path, dataset, flag). Printed as one line; exit code 2."""


def cli_entry(main):
    """Wrap a stage's ``main(argv)`` so a ``UserError`` becomes one line on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        signal.signal(signal.SIGINT, signal.default_int_handler)  # imports are done: Ctrl-C is a KeyboardInterrupt again
        die_with_parent()
        quiet_libraries()
        try:
            return main(sys.argv[1:] if argv is None else argv)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted: the last checkpoint is intact; re-run the same command to resume", file=sys.stderr)
            raise SystemExit(130) from None
        except (MemoryError, OSError, RuntimeError) as err:
            problem = out_of_resources(err)
            if problem is None:
                raise
            print(f"error: {problem}", file=sys.stderr)
            raise SystemExit(1) from None

    return wrapper


def out_of_resources(err: BaseException) -> str | None:
    """What the machine ran out of, and what to do, for a failure that is the machine's and not the code's (memory,
    disk); None for any other error, which keeps its traceback. Checkpoints are atomic, so the run stays resumable."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return (f"no space left on the device ({err.filename or text}); free some and re-run the same command: the run "
                "resumes from its last checkpoint")
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError" or "can't allocate memory" in text:
        return (f"out of memory ({text}); lower the batch size (optim.batch_size, eval's batch_size) or the model, "
                "in a new run folder (this one's config is kept)")
    return None


def stop_if_diverged(loss: float, step: int, lr_key: str, model=None) -> None:
    """Stop in one line once the loss (or, given a ``model``, a weight after the step) is no longer finite, a learning
    rate too high, usually: every later step would train NaN weights, and the run would end 'successfully' with nan
    likelihoods (or, under TRL, fail deep in its sampling)."""
    what = None if math.isfinite(loss) else f"train/loss is {loss}"
    if what is None and model is not None and not all(bool(p.isfinite().all()) for p in model.parameters()):
        what = "the weights are no longer finite"
    if what is not None:
        raise UserError(f"training diverged: {what} at step {step}; lower {lr_key} and rerun in a new run_dir")


def quiet_interrupts_while_starting() -> None:
    """Ctrl-C in a stage's first seconds, while ``python -m <stage>`` imports torch and transformers, exits with one
    line and code 130 instead of a traceback from inside some import; nothing is written before ``main`` runs, and
    ``cli_entry`` puts Python's own handler back then. Only for a stage started as ``python -m``: while Python
    imports the package of the module to run, ``sys.argv[0]`` is "-m" (a test or a script importing a stage's
    modules keeps its own Ctrl-C)."""
    if sys.argv[:1] != ["-m"]:
        return

    def stop(signum, frame):
        print("interrupted while starting, before anything was written", file=sys.stderr)
        os._exit(130)  # not an exception: it would surface as a traceback from the import it interrupts

    signal.signal(signal.SIGINT, stop)


def quiet_libraries() -> None:
    """Keep the terminal to our own progress bar: no per-save bars or deprecation chatter."""
    import warnings

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)


PARENT_PID_ENV = "BARRIERLAB_PARENT_PID"


def die_with_parent() -> None:
    """In a stage that an experiment driver started (it sets ``PARENT_PID_ENV``), ask Linux for a SIGTERM when the
    driver dies: a driver killed outright cannot stop its child itself, and the orphan would go on writing the run
    folder that the driver's rerun resumes."""
    parent = os.environ.pop(PARENT_PID_ENV, None)
    if parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):  # the driver died before the request took effect
        raise SystemExit(143)

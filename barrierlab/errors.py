"""User-facing errors: one line, no traceback; exit code 2 for bad input, 1 for a machine out of memory or disk,
130 for Ctrl-C."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
import sys


class UserError(Exception):
    """Bad input from the user (config, path, dataset, flag). Printed as one line; exit code 2."""


def cli_entry(main):
    """Wrap a stage's ``main(argv)`` so a ``UserError`` becomes one line on stderr and exit code 2 (running out of
    memory or disk: 1, Ctrl-C: 130), with Python's own Ctrl-C handling back from ``quiet_interrupts_while_starting``."""

    @functools.wraps(main)
    def wrapper(argv=None):
        if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # a stage started with Ctrl-C ignored keeps it so
            signal.signal(signal.SIGINT, signal.default_int_handler)  # imports are done: a KeyboardInterrupt again
        die_with_parent()
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
        return (f"out of memory ({text}); lower the batch size (optim.batch_size, eval's batch_size) or the model "
                "and re-run (a run that had not finished its first step starts over under the new config)")
    return None


def quiet_interrupts_while_starting() -> None:
    """Ctrl-C in a stage's first seconds, while ``python -m <stage>`` imports torch and transformers, exits with one
    line and code 130 instead of a traceback from inside some import; nothing is written before ``main`` runs, and
    ``cli_entry`` puts Python's own handler back then. Only for a stage started as ``python -m``: while Python
    imports the package of the module to run, ``sys.argv[0]`` is "-m" (a test or a script importing a stage's
    modules keeps its own Ctrl-C)."""
    if sys.argv[:1] != ["-m"] or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:  # nohup, a script's `cmd &`
        return
    signal.signal(signal.SIGINT, _stop_while_starting)


def _stop_while_starting(signum, frame):
    print("interrupted while starting, before anything was written", file=sys.stderr)
    os._exit(130)  # not an exception: it would surface as a traceback from the import it interrupts


@contextlib.contextmanager
def loading_libraries():
    """Around a stage's import of its body once its config is loaded and checked (``--help`` and a config error
    need none of it): torch and transformers take seconds to import, and Ctrl-C meanwhile exits with one line and
    code 130, as nothing is written yet, instead of a traceback from inside some import. Then the libraries are
    quieted and Ctrl-C is a KeyboardInterrupt again (unless it was ignored)."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _stop_while_starting)
    try:
        yield
        quiet_libraries()
    finally:
        signal.signal(signal.SIGINT, previous)


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

"""User-facing errors: one line, exit code 2, no traceback."""

from __future__ import annotations

import functools
import sys


class UserError(Exception):
    """Bad input from the user (config, path, dataset, flag). Printed as one line; exit code 2."""


def cli_entry(main):
    """Wrap a stage's ``main(argv)`` so a ``UserError`` becomes one line on stderr and exit code 2."""

    @functools.wraps(main)
    def wrapper(argv=None):
        quiet_libraries()
        try:
            return main(sys.argv[1:] if argv is None else argv)
        except UserError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("interrupted: the last checkpoint is intact; re-run the same command to resume", file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper


def quiet_libraries() -> None:
    """Keep the terminal to our own progress bar: no per-save bars or deprecation chatter."""
    import warnings

    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)

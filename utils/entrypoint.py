"""How every script's main runs and ends: the log format set up, a user error as one line (traceback only
with --debug), and the closing JSON line of results.

Paddle-free, so the tools' helper processes that run under another Python (the benchmarks' torch and timm
sides) report errors the same way; `cli` hands it to the scripts with the rest of their plumbing.
"""
import json
import sys
from typing import Callable, Optional, Sequence

from .fileio import StorageError, write_json
from .logger import setup_console_logging

# Errors a user can cause with input (missing files, bad YAML, wrong checkpoints, unknown names) or
# fix on the machine (a full disk, a read-only output folder).
USER_ERRORS = (ValueError, FileNotFoundError, KeyError, IsADirectoryError, NotADirectoryError, PermissionError,
               ConnectionError, StorageError)

# Exit status of a run that stopped on a signal after saving checkpoint-latest.pd: re-running the
# same command resumes it. 75 is EX_TEMPFAIL of sysexits.h ("temporary failure, retry later"), apart
# from failures (1), the non-finite-loss stop (2), diverged ranks (3) and an unsaved Ctrl-C (130).
# Here, Paddle-free, for tools/launch.py: the launcher must not import utils.env (training/ does), which
# would set OMP_NUM_THREADS for the ranks it starts.
EXIT_PREEMPTED = 75


def run_main(main: Callable[[Optional[Sequence[str]]], Optional[int]], argv: Optional[Sequence[str]] = None) -> None:
    """Run `main(argv)` with the scripts' log format set up; a user error becomes `error: <message>` on
    stderr and exit status 1.

    `--debug` anywhere in argv shows the full traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_console_logging()
    try:
        code = main(argv)
    except USER_ERRORS as e:
        if '--debug' in argv:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f'error: {message}', file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def report(result, output_json: Optional[str] = None) -> None:
    """Print `result` as the script's closing JSON line and, when asked, write it to `output_json`."""
    print(json.dumps(result, ensure_ascii=False))
    if output_json:
        write_json(output_json, result)

"""Running the repo's scripts in-process from tests: their main(), and a user error's one line."""
import runpy
from pathlib import Path

import pytest

from cli import run_main

ROOT = Path(__file__).resolve().parents[1]


def script_main(path: str):
    """`main` of a script at `path` (relative to the repo root), loaded without running it."""
    return runpy.run_path(str(ROOT / path))['main']


def one_line_error(path: str, argv, capsys) -> str:
    """Run the script as its CLI would; it must exit 1 with one `error: ...` line, which is returned."""
    with pytest.raises(SystemExit) as exit_info:
        run_main(script_main(path), argv)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and len(err.splitlines()) == 1, err
    return err

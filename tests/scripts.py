"""Running the repo's scripts in-process from tests: their main(), a user error's one line, and the flags
its hints name, checked against the parser of the script each belongs to."""
import functools
import re
import runpy
from pathlib import Path

import pytest

import paddle

from cli import run_main
from models import create_model
from utils.logger import LOG_LINE

ROOT = Path(__file__).resolve().parents[1]


def without_log_lines(text: str) -> list:
    """The lines of `text` that are not project log lines (weights loaded, progress, ...)."""
    return [line for line in text.strip().splitlines() if not LOG_LINE.match(line)]


def script_main(path: str):
    """`main` of a script at `path` (relative to the repo root), loaded without running it."""
    return runpy.run_path(str(ROOT / path))['main']


def one_line_error(path: str, argv, capsys) -> str:
    """Run the script as its CLI would; it must exit 1 with one `error: ...` line, which is returned."""
    with pytest.raises(SystemExit) as exit_info:
        run_main(script_main(path), argv)
    assert exit_info.value.code == 1
    err = without_log_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith('error: '), err
    return err[0]


@functools.lru_cache(maxsize=None)
def script_flags(script: str) -> frozenset:
    """Every option string of a script's parser (path relative to the repo root), as a user can type it."""
    if script == 'train.py':
        from training.args import build_train_parser
        parser = build_train_parser()
    else:
        parser = runpy.run_path(str(ROOT / script))['build_parser']()
    return frozenset(flag for action in parser._actions for flag in action.option_strings)


# A flag (`--name`), or an option spelt as a Python keyword (`name='value'`), which a user would type as `--name`.
_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9_]*)|\b([a-z][a-z0-9_]*)='")
_CLAUSE_END = re.compile(r'[;()\n]|, ')
_SCRIPT = re.compile(r'(?<![\w/.-])((?:tools/)?[a-z_]+\.py)\b')


def assert_hint_flags_accepted(script: str, message: str) -> set:
    """Every flag `message` names must be one its script accepts: the script named last before the flag in
    its clause (`, or train.py --finetune`), else `script`, the one that printed it. Returns the flags found."""
    found = set()
    for match in _FLAG.finditer(message):
        flag = '--' + (match.group(1) or match.group(2))
        clause = _CLAUSE_END.split(message[:match.start()])[-1]
        named = _SCRIPT.findall(clause)
        owner = named[-1] if named else script
        assert flag in script_flags(owner), f'{owner} has no {flag}, named in: {message}'
        found.add(flag)
    return found


def export_tiny(root: Path, num_classes: int, *flags: str) -> Path:
    """A seeded cvt_tiny checkpoint written to root/ckpt.pd and exported by export_model.py (with `flags`)
    into root/inference, which is returned."""
    paddle.seed(0)
    paddle.save({'model': create_model('cvt_tiny', num_classes=num_classes).state_dict()}, str(root / 'ckpt.pd'))
    out = root / 'inference'
    assert script_main('export_model.py')(['--model', 'cvt_tiny', '--num_classes', str(num_classes), '--resume',
                                            str(root / 'ckpt.pd'), '--output', str(out), *flags]) == 0
    return out


def onnx_export_available() -> bool:
    """Whether export_model.py --onnx and ONNX Runtime can run here."""
    try:
        import onnxruntime  # noqa: F401
        import onnx_graphsurgeon  # noqa: F401
        import paddle2onnx  # noqa: F401
    except (ImportError, ValueError):  # paddle2onnx 2.x refuses Paddle 2.x at import
        return False
    return True


def runtime_available(backend: str) -> bool:
    """Whether a checkpoint can run on `backend` (paddle, onnxruntime, openvino) through its export here."""
    if backend == 'paddle':
        return True
    if not onnx_export_available():
        return False
    try:
        __import__(backend)
    except ImportError:
        return False
    return True

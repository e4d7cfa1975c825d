"""Running the repo's scripts in-process from tests: their main(), and a user error's one line."""
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

"""Quiet by default: the scripts print none of the framework's known noise, the descriptor-level filter
drops only the lines it names, and every script's log lines share train.py's format."""
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip('sklearn', reason='the digits dataset comes from scikit-learn (requirements-dev.txt)')
from tools.make_demo_dataset import write_digits_dataset  # noqa: E402
from deploy.export import check_onnx_export_available  # noqa: E402

# Framework messages these scripts used to print on every run (Paddle, paddle2onnx, Polygraphy).
NOISE = re.compile('|'.join(re.escape(m) for m in (
    'WARNING: OMP_NUM_THREADS', 'PLEASE USE OMP', 'When training, we now always track', 'UserWarning',
    'not support input out tensor', 'New Executor is Running', 'LAUNCH INFO', '[Paddle2ONNX]',
    'Consider installing ONNX-Runtime', 'Folding Constants', 'ONNX model saved in')))
TRAIN_LOG_LINE = re.compile(r'\[\d\d/\d\d \d\d:\d\d:\d\d (INFO|WARNING|ERROR)\] ')
PADDLE_LOG_LINE = re.compile(r'\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\] \[ *[A-Z]+\] ')


def _onnx_export_usable() -> bool:
    try:
        check_onnx_export_available()
    except ValueError:  # not installed, or paddle2onnx 2.x under Paddle 2.x
        return False
    return importlib.util.find_spec('onnxruntime') is not None


def _run(*args):
    # OMP_NUM_THREADS > 1 is what makes `import paddle` warn; utils.env sets it so on a multi-core machine
    env = {**os.environ, 'OMP_NUM_THREADS': '2'}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope='module')
def script_runs(tmp_path_factory):
    """stdout and stderr of train.py, eval.py, export_model.py (--onnx when paddle2onnx works) and infer.py
    on a tiny model and dataset, each run as a user runs it."""
    tmp = tmp_path_factory.mktemp('quiet')
    data, out = tmp / 'digits', tmp / 'runs'
    write_digits_dataset(str(data), image_size=32, per_class=4)
    ckpt = out / 'run' / 'checkpoint-latest.pd'
    weights = ['--model', 'cvt_tiny', '--resume', str(ckpt)]
    onnx = ['--onnx'] if _onnx_export_usable() else []
    return {
        'train.py': _run('train.py', str(data), '--output', str(out), '--experiment', 'run', '--model', 'cvt_tiny',
                         '--input_size', '32', '--epochs', '1', '--batch_size', '8', '--num_workers', '1',
                         '--aa', 'none', '--no_amp', '--print_freq', '1'),
        'eval.py': _run('eval.py', str(data), *weights),
        'export_model.py': _run('export_model.py', *weights, '--output', str(tmp / 'export'), *onnx),
        'infer.py': _run('infer.py', '--model_dir', str(tmp / 'export'), '--input_file', str(data / 'val'),
                         *(['--backend', 'onnxruntime'] if onnx else [])),
    }


@pytest.mark.parametrize('script', ['train.py', 'eval.py', 'export_model.py', 'infer.py'])
def test_scripts_print_no_framework_noise(script_runs, script):
    proc = script_runs[script]
    noisy = [line for line in (proc.stdout + proc.stderr).splitlines() if NOISE.search(line)]
    assert not noisy, '\n'.join(noisy)


def test_log_lines_of_every_script_have_the_train_format(script_runs):
    train_lines = script_runs['train.py'].stdout.splitlines()
    assert train_lines and all(TRAIN_LOG_LINE.match(line) for line in train_lines)
    eval_err = script_runs['eval.py'].stderr.splitlines()
    assert any(TRAIN_LOG_LINE.match(line) and 'val split: ' in line for line in eval_err), eval_err
    for proc in script_runs.values():  # what libraries log through the root logger too
        assert not [line for line in proc.stderr.splitlines() if PADDLE_LOG_LINE.match(line)], proc.stderr


def test_dropped_output_lines_passes_on_everything_it_does_not_name():
    # In a real process: the filter works on file descriptors 1 and 2, which pytest's capture replaces.
    code = textwrap.dedent('''
        import ctypes, logging, os, sys
        from utils.env import dropped_output_lines
        with dropped_output_lines(['NOISE']):
            print('NOISE from Python'); print('kept stdout')
            print('kept stderr', file=sys.stderr); print('a NOISE line', file=sys.stderr)
            os.write(2, b'W0101 eager.cc:1] NOISE from C++\\nkept from C++\\n')
            ctypes.CDLL(None).printf(b'NOISE, buffered by C stdio\\n')  # stdout is a pipe: held in libc's buffer
            late = logging.StreamHandler()  # bound to sys.stderr inside the block, as Paddle's import does
        late.handle(logging.makeLogRecord({'msg': 'logged afterwards'}))
    ''')
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ['kept stdout']
    assert proc.stderr.splitlines() == ['kept stderr', 'kept from C++', 'logged afterwards']


def test_a_process_without_stderr_still_imports_and_prints():
    code = 'import os; os.close(2); import utils.env; print("printed")'
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=120)
    assert (proc.returncode, proc.stdout) == (0, 'printed\n')

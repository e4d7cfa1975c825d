"""Scripts with loader workers end on an error after the workers started (one line, non-zero status, no
worker left), and their workers end when the script is killed outright.

predict.py and infer.py read their images in the main process (deploy.classify.classify_images): no workers there.
Each script runs as a subprocess whose workers record their PIDs; a hang fails the test at its timeout.
"""
import glob
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image

from models import create_model
from tests.scripts import ROOT, without_log_lines

pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='reads /proc; parent-death signal')

RUN_TIMEOUT_S = 60  # generous: a run takes seconds, a hang takes forever
GONE_TIMEOUT_S = 30
TRAIN = ['--model', 'cvt_tiny', '--input_size', '32', '--crop_pct', '1', '--aa', 'none', '--reprob', '0',
         '--mixup', '0', '--cutmix', '0', '--no_amp', '--num_workers', '2', '--batch_size', '4', '--lr', '1e-3',
         '--warmup_epochs', '0', '--experiment', 'run']

# Runs `script` as its CLI would, after `patch` (Python source), with each loader worker writing its PID
# into the folder `pids` as it starts.
_LAUNCH = '''
import os, runpy, sys
script, pids, patch, *args = sys.argv[1:]
sys.argv = [script, *args]
import datasets.worker_signals
init_worker = datasets.worker_signals.ignore_stop_signals
def recorded(worker_id):
    open(os.path.join(pids, str(os.getpid())), 'w').close()
    init_worker(worker_id)
datasets.worker_signals.ignore_stop_signals = recorded  # before datasets.loader takes it
exec(patch)
runpy.run_path(script, run_name='__main__')
'''

# A full disk when the first checkpoint is written (after an epoch, so both loaders' workers run).
_FULL_DISK_ON_CHECKPOINT = '''
import errno, os, utils.fileio
fsync = utils.fileio._fsync
def full_disk(path):
    if os.path.basename(path).startswith('.checkpoint'):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    fsync(path)
utils.fileio._fsync = full_disk
'''

# Ctrl-C once the pass is over (the workers are idle, kept for the next pass): results are reported slowly,
# after a file `reporting` next to the PID folder says so.
_SLOW_REPORT = '''
import os, time, utils.entrypoint
def slow_report(*args, **kwargs):
    open(os.path.join(pids, os.pardir, 'reporting'), 'w').close()
    time.sleep(RUN_TIMEOUT_S)
utils.entrypoint.report = slow_report  # before eval.py takes it
'''.replace('RUN_TIMEOUT_S', str(RUN_TIMEOUT_S))


def _write_images(folder: Path, count: int, rng) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(rng.randint(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f'{i}.png')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    rng = np.random.RandomState(0)
    for label in range(2):
        _write_images(root / 'train' / f'class_{label}', 8, rng)
        _write_images(root / 'val' / f'class_{label}', 6, rng)
    return root


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp('ckpt') / 'model.pd'
    paddle.seed(0)
    paddle.save({'model': create_model('cvt_tiny', num_classes=2).state_dict()}, str(path))
    return path


def _alive(pid: int) -> bool:
    try:
        with open(f'/proc/{pid}/stat') as f:
            state = f.read().rsplit(')', 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ('Z', 'X')  # a zombie has ended; its new parent reaps it


class _Script:
    """A script started in its own session (so everything it forks can be cleaned up) and its workers."""

    def __init__(self, tmp_path: Path, script: str, args, patch: str = ''):
        self.pids = tmp_path / 'worker-pids'
        self.pids.mkdir(parents=True)
        self.proc = subprocess.Popen([sys.executable, '-c', _LAUNCH, script, str(self.pids), patch, *map(str, args)],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)

    def workers(self):
        return [int(p.name) for p in self.pids.iterdir()]

    def wait_for_workers(self, count: int) -> None:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while len(self.workers()) < count:
            assert self.proc.poll() is None, f'ended before {count} workers started: {self.proc.communicate()}'
            assert time.monotonic() < deadline, f'{count} workers did not start'
            time.sleep(0.1)

    def finish(self):
        """(exit status, the stderr lines that are not log lines); a run that does not end fails."""
        try:
            _, err = self.proc.communicate(timeout=RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f'still running {RUN_TIMEOUT_S} s later (workers: {self.workers()})')
        return self.proc.returncode, without_log_lines(err)

    def workers_left(self):
        deadline = time.monotonic() + GONE_TIMEOUT_S
        while time.monotonic() < deadline and any(map(_alive, self.workers())):
            time.sleep(0.2)
        return [pid for pid in self.workers() if _alive(pid)]

    def kill_all(self) -> None:
        with_workers = [self.proc.pid] + [pid for pid in self.workers() if _alive(pid)]
        for pid in with_workers:  # the session first, then any worker that left it
            try:
                os.killpg(pid, signal.SIGKILL) if pid == self.proc.pid else os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        for pid in [self.proc.pid, *self.workers()]:  # the batches a killed process had in shared memory
            for path in glob.glob(f'/dev/shm/paddle_{pid}_*'):
                os.remove(path)


@pytest.fixture
def run_script(tmp_path):
    started = []

    def run(script, args, patch=''):
        started.append(_Script(tmp_path / str(len(started)), script, args, patch))
        return started[-1]
    yield run
    for script in started:
        script.kill_all()


def test_eval_exits_on_an_unwritable_output_json(run_script, data_dir, checkpoint):
    target = '/sys/result.json'  # sysfs: no one may create files there, root included
    script = run_script('eval.py', [data_dir, '--model', 'cvt_tiny', '--num_classes', '2', '--resume', checkpoint,
                                    '--input_size', '32', '--num_workers', '2', '--output_json', target])
    status, err = script.finish()
    assert (status, err) == (1, [f'error: {target}: cannot write (permission denied); the previous file, if any, '
                                 'is unchanged']), err
    assert len(script.workers()) == 2 and script.workers_left() == []


def test_eval_exits_on_an_unreadable_image(run_script, data_dir, checkpoint, tmp_path):
    broken = tmp_path / 'broken'
    shutil.copytree(data_dir / 'val', broken / 'val')
    bad = broken / 'val' / 'class_1' / '9.png'
    bad.write_bytes(b'not a png')
    script = run_script('eval.py', [broken, '--model', 'cvt_tiny', '--num_classes', '2', '--resume', checkpoint,
                                    '--input_size', '32', '--num_workers', '2', '--batch_size', '2'])
    status, err = script.finish()
    assert status == 1 and len(err) == 1 and err[0].startswith(f'error: {bad}: unreadable image'), err
    assert len(script.workers()) == 2 and script.workers_left() == []


def test_eval_exits_on_ctrl_c_after_the_pass(run_script, data_dir, checkpoint):
    script = run_script('eval.py', [data_dir, '--model', 'cvt_tiny', '--num_classes', '2', '--resume', checkpoint,
                                    '--input_size', '32', '--num_workers', '2'], patch=_SLOW_REPORT)
    reporting = script.pids.parent / 'reporting'
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not reporting.exists():
        assert script.proc.poll() is None and time.monotonic() < deadline, 'eval.py did not reach its report'
        time.sleep(0.1)
    os.killpg(script.proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the script and its workers
    status, err = script.finish()
    assert (status, err) == (130, ['interrupted']), err
    assert len(script.workers()) == 2 and script.workers_left() == []


def test_train_exits_on_a_full_disk(run_script, data_dir, tmp_path):
    script = run_script('train.py', [data_dir, '--output', tmp_path / 'out', *TRAIN, '--epochs', '2'],
                        patch=_FULL_DISK_ON_CHECKPOINT)
    status, err = script.finish()
    checkpoint = tmp_path / 'out' / 'run' / 'checkpoint-latest.pd'
    assert (status, err) == (1, [f'error: {checkpoint}: cannot write (no space left on the device); the previous '
                                 'file, if any, is unchanged']), err
    assert len(script.workers()) == 4 and script.workers_left() == []  # 2 train, 2 val


def test_workers_end_when_train_is_killed(run_script, data_dir, tmp_path):
    # What the OOM killer and a scheduler's SIGKILL after the grace period do.
    script = run_script('train.py', [data_dir, '--output', tmp_path / 'out', *TRAIN, '--epochs', '1000'])
    script.wait_for_workers(2)
    os.kill(script.proc.pid, signal.SIGKILL)
    script.proc.wait()
    assert script.workers_left() == []


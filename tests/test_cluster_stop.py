"""Preemption as clusters deliver it, in a PID namespace: as in a container or a SLURM step, everything left
dies when the job's main process exits. A 2-rank run with a checkpoint save slower than the launcher's 3 s
is stopped by a signal to the launcher only (Kubernetes), to every process (SLURM), or to one rank only
(one node of a multi-node job); each must exit 75 with the stop position on disk and resume exactly."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.test_train import PLAIN, ROOT, _alive, _descendants, _final_weights, _launch, digits  # noqa: F401
from utils.checkpoint import LATEST, LOCK, load_training_state
from utils.preemption import EXIT_PREEMPTED


def _pid_namespaces_work() -> bool:
    if shutil.which('unshare') is None:
        return False
    return subprocess.run(['unshare', '--pid', '--fork', 'true'], capture_output=True).returncode == 0


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sys.platform != 'linux' or not _pid_namespaces_work(),
                                 reason='needs `unshare --pid --fork` (Linux, root or user namespaces)')]

FLAGS = [*PLAIN, '--epochs', '2', '--batch_size', '8', '--lr', '1e-3', '--num_workers', '1']
SAVE_SECONDS = 4  # longer than the 3 s the launcher gives the other ranks once one has exited

# train.py whose checkpoint writes take SAVE_SECONDS longer (a multi-GB checkpoint on network storage).
SLOW_SAVE_TRAIN = f'''
import sys, time
sys.path.insert(0, {str(ROOT)!r})
import train
from cli import run_main
from utils import checkpoint

save = checkpoint.save_checkpoint


def slow_save(state, path):
    time.sleep({SAVE_SECONDS})
    save(state, path)


checkpoint.save_checkpoint = slow_save
run_main(train.main)
'''

STOP_LINE = re.compile(r'stopped by (.+) at epoch (\d+) step (\d+) \((\d+) updates\): (\S+) holds this position')


@pytest.fixture(scope='module')
def straight(digits, tmp_path_factory):  # noqa: F811
    """The uninterrupted run's final weights (plain launcher, no namespace)."""
    out = tmp_path_factory.mktemp('straight')
    run = _launch([str(digits), '--output', str(out), *FLAGS, '--experiment', 'run'], out / 'logs')
    assert run.wait(timeout=300) == 0, (out / 'logs' / 'workerlog.0').read_text()[-3000:]
    return _final_weights(out / 'run')


def _start_in_pid_namespace(script, flags, log_dir):
    """tools/launch.py as the main process of a fresh PID namespace (`sh` is its init and only waits)."""
    env_unset = ['env', '-u', 'CUDA_VISIBLE_DEVICES']  # a set (even empty) value means GPU jobs
    command = [sys.executable, 'tools/launch.py', '--nproc_per_node', '2', '--log_dir', str(log_dir),
               str(script), *flags]
    return subprocess.Popen([*env_unset, 'unshare', '--pid', '--fork', 'sh', '-c', '"$@"; exit $?', 'sh',
                             *command], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _ranks(main_pid):
    """{rank: pid} of the launcher's children."""
    ranks = {}
    for pid in _descendants(main_pid):
        with open(f'/proc/{pid}/stat') as f:
            parent = int(f.read().rsplit(')', 1)[1].split()[1])
        with open(f'/proc/{pid}/environ', 'rb') as f:
            env = dict(item.split(b'=', 1) for item in f.read().split(b'\0') if b'=' in item)
        if parent == main_pid:
            ranks[int(env[b'PADDLE_TRAINER_ID'])] = pid
    return ranks


@pytest.mark.parametrize('delivery', ['launcher only', 'every process', 'one rank only'])
def test_a_stop_however_delivered_saves_before_the_job_ends_and_resumes_exactly(digits, straight, tmp_path,  # noqa: F811
                                                                               delivery):
    script = tmp_path / 'slow_save_train.py'
    script.write_text(SLOW_SAVE_TRAIN)
    flags = [str(digits), '--output', str(tmp_path), *FLAGS, '--experiment', 'run']
    job = _start_in_pid_namespace(script, flags, tmp_path / 'logs')
    try:
        log = tmp_path / 'logs' / 'workerlog.0'
        deadline = time.time() + 120
        while time.time() < deadline and not (log.exists() and 'Epoch: [0]  [ 3/20]' in log.read_text()):
            time.sleep(0.05)
        shell, main = _descendants(job.pid)[:2]
        ranks = _ranks(main)
        started = _descendants(shell)
        assert len(ranks) == 2 and len(started) >= 1 + 2 * 2  # launcher, 2 ranks, a loader worker each
        if delivery == 'launcher only':  # Kubernetes: SIGTERM to PID 1
            targets, signum = [main], signal.SIGTERM
        elif delivery == 'every process':  # SLURM's --signal=USR1@120: every process of the step
            targets, signum = started, signal.SIGUSR1
        else:  # the ranks of one node of a multi-node job; rank 0 never gets a signal
            targets, signum = [ranks[1]], signal.SIGTERM
        for pid in targets:
            os.kill(pid, signum)
        status = job.wait(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()  # SIGKILL reaches the namespace's init, which takes everything with it
    logs = {rank: (tmp_path / 'logs' / f'workerlog.{rank}').read_text() for rank in (0, 1)}
    assert status == EXIT_PREEMPTED, logs[0][-3000:]
    assert not _alive(started)
    run_dir = tmp_path / 'run'
    assert not (run_dir / LOCK).exists()
    state = load_training_state(str(run_dir / LATEST))
    for rank, text in logs.items():
        last = STOP_LINE.search(text.strip().splitlines()[-1])
        assert last, f'rank {rank} ended with: {text.strip().splitlines()[-1]}'
        reason, epoch, step, updates, path = last.groups()
        assert (int(epoch), int(step), int(updates)) == (state['epoch'], state['step_in_epoch'],
                                                         state['global_step'])
        assert path == str(run_dir / LATEST)
    assert 'done:' not in logs[0] and state['step_in_epoch'] >= 3
    if delivery == 'one rank only':
        assert STOP_LINE.search(logs[0]).group(1) == 'a stop signal to another rank'
    resumed = _launch(flags, tmp_path / 'logs-resumed')
    assert resumed.wait(timeout=300) == 0, (tmp_path / 'logs-resumed' / 'workerlog.0').read_text()[-3000:]
    assert 'resumed from' in (tmp_path / 'logs-resumed' / 'workerlog.0').read_text()
    weights = _final_weights(run_dir)
    for name in straight:
        np.testing.assert_array_equal(weights[name], straight[name], err_msg=name)

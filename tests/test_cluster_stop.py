"""Preemption as clusters deliver it, in a PID namespace: as in a container or a SLURM step, everything left
dies when the job's main process exits. A 2-rank run whose checkpoint save takes longer than the launcher
gives is stopped by a signal to the launcher only (Kubernetes), to every process of a SLURM step (through
tools/slurm/train.sbatch, with sbatch/srun/scontrol faked), or to one rank only (one node of a multi-node
job); each must exit 75 with the stop position on disk, requeue under SLURM, and resume exactly."""
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.test_train import PLAIN, ROOT, _alive, _descendants, _final_weights, _launch, digits  # noqa: F401
from training.checkpoint import LATEST, LOCK, load_training_state
from utils.entrypoint import EXIT_PREEMPTED
from utils.logger import LOG_LINE


# A container's process tree: a PID namespace with its own /proc (as a container mounts one, so PIDs and
# process start times read inside match); everything in it dies when its first process exits.
NAMESPACE = ['unshare', '--pid', '--fork', '--mount-proc']


def _pid_namespaces_work() -> bool:
    if shutil.which('unshare') is None:
        return False
    return subprocess.run(NAMESPACE + ['true'], capture_output=True).returncode == 0


pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(sys.platform != 'linux' or not _pid_namespaces_work(),
                                 reason='needs `unshare --pid --fork --mount-proc` (Linux, as root)')]

FLAGS = [*PLAIN, '--epochs', '1', '--batch_size', '8', '--lr', '1e-3', '--num_workers', '1']
# Longer than the launcher gives the other ranks once one has exited: its next poll (1 s), SIGTERM three
# times 0.2 s apart, then 3 s before SIGKILL, counted from the exit of a rank that left at once (~2 s here).
SAVE_SECONDS = 10

# Imported by every Python of the job (PYTHONPATH): in the ranks, checkpoint writes take SAVE_SECONDS longer,
# as a multi-GB checkpoint on network storage does.
SLOW_SAVE_SITECUSTOMIZE = f'''
import os
if 'PADDLE_TRAINER_ID' in os.environ:
    import time
    import utils.env
    from training import checkpoint

    save = checkpoint.save_checkpoint

    def slow_save(state, path):
        time.sleep({SAVE_SECONDS})
        save(state, path)

    checkpoint.save_checkpoint = slow_save
'''

# sbatch runs the script as a one-node job (SLURM_JOB_ID from the test); srun runs its command as the step;
# scontrol names this host and records what else it is asked (the requeue).
FAKE_SLURM = {
    'sbatch': 'export SLURM_JOB_NUM_NODES=1 SLURM_JOB_NODELIST=node1 SLURM_GPUS_ON_NODE=2\n'
              'exec bash "$@"\n',
    'srun': 'exec "$@"\n',
    'scontrol': 'if [ "$1 $2" = "show hostnames" ]; then echo 127.0.0.1\n'
                'else echo "$@" >> "$(dirname "$0")/calls"; fi\n',
}

STOP_LINE = re.compile(r'stopped by (.+) at epoch (\d+) step (\d+) \((\d+) updates\): (\S+) holds this position')


@pytest.fixture(scope='module')
def straight(digits, tmp_path_factory):  # noqa: F811
    """The uninterrupted run's final weights (the launcher alone, no namespace, no slow save)."""
    out = tmp_path_factory.mktemp('straight')
    run = _launch([str(digits), '--output', str(out), *FLAGS, '--experiment', 'run'], out / 'logs')
    assert run.wait(timeout=300) == 0, (out / 'logs' / 'workerlog.0').read_text()[-3000:]
    return _final_weights(out / 'run')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _fake_slurm(folder):
    folder.mkdir()
    for name, body in {**FAKE_SLURM, 'python': f'exec {sys.executable} "$@"\n'}.items():
        (folder / name).write_text('#!/bin/sh\n' + body)
        (folder / name).chmod(0o755)
    return folder


def _parent(pid):
    with open(f'/proc/{pid}/stat') as f:
        return int(f.read().rsplit(')', 1)[1].split()[1])


def _ranks(pids):
    """{rank: pid} among `pids`: the launcher's children (their loader workers carry the same
    PADDLE_TRAINER_ID, so a rank is the one whose parent has none)."""
    def rank_of(pid):
        with open(f'/proc/{pid}/environ', 'rb') as f:
            env = dict(item.split(b'=', 1) for item in f.read().split(b'\0') if b'=' in item)
        return env.get(b'PADDLE_TRAINER_ID')
    return {int(rank_of(pid)): pid for pid in pids if rank_of(pid) is not None and rank_of(_parent(pid)) is None}


@pytest.mark.parametrize('delivery', ['launcher only', 'every process (SLURM)', 'one rank only'])
def test_a_stop_however_delivered_is_saved_before_the_job_ends_and_resumes_exactly(
        digits, straight, tmp_path, delivery):  # noqa: F811
    hook = tmp_path / 'hook'
    hook.mkdir()
    (hook / 'sitecustomize.py').write_text(SLOW_SAVE_SITECUSTOMIZE)
    slurm = _fake_slurm(tmp_path / 'slurm')
    env = {k: v for k, v in os.environ.items() if k != 'CUDA_VISIBLE_DEVICES'}  # a set value means GPU jobs
    env.update(PYTHONPATH=os.pathsep.join([str(hook), str(ROOT)]), PATH=os.pathsep.join([str(slurm), env['PATH']]),
               MASTER_PORT=str(_free_port()), SLURM_JOB_ID=str(os.getpid()))
    flags = [str(digits), '--output', str(tmp_path), *FLAGS, '--experiment', 'run']
    if delivery.startswith('every process'):
        command, log_dir = ['sbatch', 'tools/slurm/train.sbatch', *flags], ROOT / 'log' / env['SLURM_JOB_ID']
    else:
        log_dir = tmp_path / 'logs'
        command = ['python', 'tools/launch.py', '--nproc_per_node', '2', '--log_dir', str(log_dir), 'train.py', *flags]
    shutil.rmtree(log_dir, ignore_errors=True)
    # The job's main process in a fresh PID namespace, whose init (sh) only waits for it.
    job = subprocess.Popen([*NAMESPACE, 'sh', '-c', '"$@"; exit $?', 'sh', *command], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        log = log_dir / 'workerlog.0'
        deadline = time.time() + 120
        while time.time() < deadline and not (log.exists() and 'Epoch: [0]  [ 3/20]' in log.read_text()):
            time.sleep(0.05)
        started = _descendants(job.pid)[1:]  # below the namespace's init
        ranks = _ranks(started)
        launcher = _parent(ranks[0])
        if delivery == 'launcher only':  # Kubernetes: SIGTERM to PID 1, the launcher
            targets, signum = [launcher], signal.SIGTERM
        elif delivery.startswith('every process'):  # --signal=USR1@120: every process of the step
            targets, signum = [launcher] + _descendants(launcher), signal.SIGUSR1
        else:  # the ranks of one node of a multi-node job: rank 0 gets no signal
            targets, signum = [ranks[1]], signal.SIGTERM
        for pid in targets:
            os.kill(pid, signum)
        status = job.wait(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()  # SIGKILL reaches the namespace's init, which takes everything with it
    logs = {rank: (log_dir / f'workerlog.{rank}').read_text() for rank in (0, 1)}
    shutil.rmtree(log_dir, ignore_errors=True)
    assert status == EXIT_PREEMPTED, logs[0][-3000:]
    assert not _alive(started)
    run_dir = tmp_path / 'run'
    assert not (run_dir / LOCK).exists()
    state = load_training_state(str(run_dir / LATEST))
    for rank, text in logs.items():  # every rank's last line is true: the file holds the position it names
        ending = [line for line in text.splitlines() if LOG_LINE.match(line)][-1]  # Paddle 2.6's TCP store logs after
        last = STOP_LINE.search(ending)
        assert last, f'rank {rank} ended with: {ending}'
        reason, epoch, step, updates, path = last.groups()
        assert (int(epoch), int(step), int(updates)) == (state['epoch'], state['step_in_epoch'], state['global_step'])
        assert path == str(run_dir / LATEST)
    assert 'done:' not in logs[0] and state['step_in_epoch'] >= 3
    if delivery == 'one rank only':
        assert STOP_LINE.search(logs[0]).group(1) == 'a stop signal to another rank'
    calls = (slurm / 'calls').read_text().splitlines() if (slurm / 'calls').exists() else []
    assert calls == ([f"requeue {env['SLURM_JOB_ID']}"] if delivery.startswith('every process') else [])
    resumed = _launch(flags, tmp_path / 'logs-resumed')
    assert resumed.wait(timeout=300) == 0, (tmp_path / 'logs-resumed' / 'workerlog.0').read_text()[-3000:]
    assert 'resumed from' in (tmp_path / 'logs-resumed' / 'workerlog.0').read_text()
    weights = _final_weights(run_dir)
    for name in straight:
        np.testing.assert_array_equal(weights[name], straight[name], err_msg=name)

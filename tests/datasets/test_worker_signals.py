"""DataLoader workers under stop signals: they serve through a SIGTERM until ended, and leave on their own;
and with their parent when it dies."""
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import numpy as np
import paddle
import pytest

from datasets import worker_signals
from datasets.worker_signals import ignore_stop_signals

pytestmark = pytest.mark.skipif(sys.platform == 'win32', reason='POSIX signals')


def test_workers_ignore_stop_signals():
    code = ('import os, signal, sys; sys.path.insert(0, "."); from datasets.worker_signals import ignore_stop_signals; '
            'ignore_stop_signals(0); [os.kill(os.getpid(), s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)];'
            ' print("alive")')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, 'alive\n')



class _Numbers(paddle.io.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, index):
        return np.full([2], index, 'float32')


def _loader_workers():
    return [p for p in multiprocessing.active_children() if p.is_alive()]


def _served_by_both(batches):
    # Workers take batches in turn: once each served one, both run with their worker_init_fn's handlers (a
    # SIGTERM before that meets Paddle's, which kills the worker).
    assert [next(batches).numpy()[:, 0].tolist() for _ in range(2)] == [[0, 1], [2, 3]]


def test_loader_workers_serve_through_a_sigterm_until_ended():
    batches = iter(paddle.io.DataLoader(_Numbers(), batch_size=2, num_workers=2, worker_init_fn=ignore_stop_signals))
    try:
        _served_by_both(batches)
        workers = _loader_workers()
        assert len(workers) == 2
        for worker in workers:  # as the launcher's killpg or SLURM's signal to every process delivers it
            os.kill(worker.pid, signal.SIGTERM)
        time.sleep(0.5)
        assert next(batches).numpy()[:, 0].tolist() == [4, 5]  # no SystemError: the next batch, in order
    finally:
        batches._try_shutdown_all()  # what the loader's shutdown_workers() calls
    assert _loader_workers() == []


def test_loader_workers_leave_on_their_own_if_never_ended(monkeypatch):
    # multiprocessing's exit hook SIGTERMs daemonic workers and joins them: they must not outlive that forever.
    monkeypatch.setattr(worker_signals, 'WORKER_GRACE_S', 0.5)  # forked workers inherit it
    batches = iter(paddle.io.DataLoader(_Numbers(), batch_size=2, num_workers=2, worker_init_fn=ignore_stop_signals))
    try:
        _served_by_both(batches)
        workers = _loader_workers()
        for worker in workers:
            os.kill(worker.pid, signal.SIGTERM)
        for worker in workers:
            worker.join(timeout=20)
        assert [worker.exitcode for worker in workers] == [0, 0]
    finally:
        batches._try_shutdown_all()  # what the loader's shutdown_workers() calls


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='the parent-death signal is Linux only')
def test_a_worker_whose_parent_died_before_the_prctl_leaves(monkeypatch):
    fork = multiprocessing.get_context('fork')
    served = fork.Process(target=worker_signals.end_with_parent)
    served.start()
    served.join(timeout=60)
    monkeypatch.setattr(os, 'getppid', lambda: 1)  # as after the parent's death: reparented to init
    orphan = fork.Process(target=worker_signals.end_with_parent)
    orphan.start()
    orphan.join(timeout=60)
    assert (served.exitcode, orphan.exitcode) == (0, 1)  # no parent-death signal would ever come for the orphan

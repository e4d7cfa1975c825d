"""DataLoader workers under stop signals: they serve through a SIGTERM until ended, and leave on their own."""
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


def test_loader_workers_serve_through_a_sigterm_until_ended():
    batches = iter(paddle.io.DataLoader(_Numbers(), batch_size=2, num_workers=2, worker_init_fn=ignore_stop_signals))
    try:
        assert next(batches).numpy()[:, 0].tolist() == [0, 1]
        workers = _loader_workers()
        assert len(workers) == 2
        for worker in workers:  # as the launcher's killpg or SLURM's signal to every process delivers it
            os.kill(worker.pid, signal.SIGTERM)
        time.sleep(0.5)
        assert next(batches).numpy()[:, 0].tolist() == [2, 3]  # no SystemError: the next batch, in order
    finally:
        batches._try_shutdown_all()  # what the loader's shutdown_workers() calls
    assert _loader_workers() == []


def test_loader_workers_leave_on_their_own_if_never_ended(monkeypatch):
    # multiprocessing's exit hook SIGTERMs daemonic workers and joins them: they must not outlive that forever.
    monkeypatch.setattr(worker_signals, 'WORKER_GRACE_S', 0.5)  # forked workers inherit it
    batches = iter(paddle.io.DataLoader(_Numbers(), batch_size=2, num_workers=2, worker_init_fn=ignore_stop_signals))
    try:
        next(batches)
        workers = _loader_workers()
        for worker in workers:
            os.kill(worker.pid, signal.SIGTERM)
        for worker in workers:
            worker.join(timeout=20)
        assert [worker.exitcode for worker in workers] == [0, 0]
    finally:
        batches._try_shutdown_all()  # what the loader's shutdown_workers() calls

"""Preemption signals: a stop request instead of death, repeats that never break a save, handlers restored."""
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import numpy as np
import paddle
import pytest

from utils import preemption
from utils.preemption import PreemptionHandler, ignore_stop_signals

pytestmark = pytest.mark.skipif(sys.platform == 'win32', reason='POSIX signals')


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1])
def test_a_signal_requests_a_stop_instead_of_ending_the_process(signum):
    with PreemptionHandler() as preemption:
        assert not preemption.requested
        assert preemption.reason() == 'a stop signal to another rank'  # what a rank stopping with the others says
        os.kill(os.getpid(), signum)  # the handler runs before the next bytecode
        assert preemption.requested and preemption.received == signum
        assert preemption.reason() == signal.Signals(signum).name


@pytest.mark.parametrize('sigint_before', [signal.default_int_handler, signal.SIG_IGN],
                         ids=['interactive', 'background'])
def test_previous_handlers_come_back(sigint_before):
    # Set, not inherited: a shell starts a background job with SIGINT ignored, which Python keeps.
    def mine(signum, frame):
        pass
    previous = {signum: signal.signal(signum, handler)
                for signum, handler in ((signal.SIGUSR1, mine), (signal.SIGINT, sigint_before))}
    try:
        with PreemptionHandler():
            assert signal.getsignal(signal.SIGUSR1) is not mine
            assert signal.getsignal(signal.SIGINT) is not sigint_before
        assert signal.getsignal(signal.SIGUSR1) is mine
        assert signal.getsignal(signal.SIGINT) is sigint_before
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_repeated_sigterm_is_only_counted():
    # paddle.distributed.launch sends SIGTERM up to three times, 0.2 s apart: none may abort the save.
    with PreemptionHandler() as preemption:
        for _ in range(4):
            os.kill(os.getpid(), signal.SIGTERM)
        assert preemption.received == signal.SIGTERM


def test_a_sigint_after_the_launchers_sigterm_is_the_same_request():
    with PreemptionHandler() as preemption:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
        assert preemption.received == signal.SIGTERM


def test_second_ctrl_c_quits_but_never_inside_a_save():
    with PreemptionHandler() as preemption:
        os.kill(os.getpid(), signal.SIGINT)
        written = []
        with pytest.raises(KeyboardInterrupt):
            with preemption.saving():
                os.kill(os.getpid(), signal.SIGINT)
                written.append('checkpoint')  # the save runs to its end before the interrupt surfaces
        assert written == ['checkpoint']
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


def test_a_forked_child_ignores_an_inherited_handler():
    with PreemptionHandler() as preemption:
        pid = os.fork()
        if pid == 0:  # the child: a SIGTERM must neither kill it nor count as its parent's request
            os.kill(os.getpid(), signal.SIGTERM)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert not preemption.requested


def test_workers_ignore_stop_signals():
    code = ('import os, signal, sys; sys.path.insert(0, "."); from utils.preemption import ignore_stop_signals; '
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
    monkeypatch.setattr(preemption, 'WORKER_GRACE_S', 0.5)  # forked workers inherit it
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
    served = fork.Process(target=preemption.end_with_parent)
    served.start()
    served.join(timeout=60)
    monkeypatch.setattr(os, 'getppid', lambda: 1)  # as after the parent's death: reparented to init
    orphan = fork.Process(target=preemption.end_with_parent)
    orphan.start()
    orphan.join(timeout=60)
    assert (served.exitcode, orphan.exitcode) == (0, 1)  # no parent-death signal would ever come for the orphan

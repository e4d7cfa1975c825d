"""Preemption signals: a stop request instead of death, repeats that never break a save, handlers restored."""
import os
import signal
import sys

import pytest

from training.preemption import PreemptionHandler

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

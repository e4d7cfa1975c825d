"""DataLoader workers under stop signals: they keep serving until their parent shuts them down, leave on
their own a grace period after a SIGTERM it never follows up, and die with a parent that dies outright
(training/preemption.py tells why)."""
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
from typing import Optional


# How long a DataLoader worker outlives a SIGTERM its parent did not follow up by shutting it down:
# longer than the launcher's and SLURM's 30 s grace, so it never dies under a rank still saving.
WORKER_GRACE_S = 60.0


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader `worker_init_fn` (it runs after Paddle's worker signal setup): workers keep serving
    through stop signals until their parent shuts them down (`InlineReadDataLoader.shutdown_workers`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_sigterm)


def _worker_sigterm(signum: int, frame) -> None:
    # multiprocessing ends daemonic workers with SIGTERM at interpreter exit and then joins them: a parent
    # that did not shut its loader down would wait forever, so a worker leaves on its own after a grace.
    # Exit status 0: Paddle's SIGCHLD check in the parent raises only for workers killed or failed.
    global _worker_exit_timer
    if _worker_exit_timer is None:
        _worker_exit_timer = threading.Timer(WORKER_GRACE_S, os._exit, args=(0,))
        _worker_exit_timer.daemon = True
        _worker_exit_timer.start()


_worker_exit_timer: Optional[threading.Timer] = None

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
# Looked up here, in the parent: a forked child must not dlopen (another thread may hold the loader's lock).
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith('linux') else None


def end_with_parent() -> None:
    """In a multiprocessing child (a DataLoader worker): have the kernel SIGKILL this process when its parent
    dies, which no signal handler can catch (Linux; elsewhere nothing).

    The signal comes when the thread that started the child ends: start workers from the main thread.
    """
    parent = multiprocessing.parent_process()
    if parent is None or _prctl is None:
        return
    if _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), 'prctl(PR_SET_PDEATHSIG) failed')
    if os.getppid() != parent.pid:  # the parent died between the fork and the prctl: no signal will come
        os._exit(1)

"""DataLoader workers under stop signals: they keep serving until their parent shuts them down, and leave
on their own a grace period after a SIGTERM it never follows up (training/preemption.py tells why)."""
import os
import signal
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

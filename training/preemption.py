"""Preemption: SIGTERM, SIGINT and SIGUSR1 become a stop request that training honours at the next
optimizer update, so rank 0 can save the exact position and every process can exit cleanly.

Schedulers ask politely before they kill, and deliver the request to different processes:
Kubernetes sends SIGTERM to the container's PID 1 (the launcher) and SIGKILLs everything after
`terminationGracePeriodSeconds`; SLURM sends `--signal=USR1@<s>` ahead of the time limit, and SIGTERM
on scancel or preemption, to every process of the step; a multi-node job may lose one node, whose
ranks alone get the signal. `paddle.distributed.launch` (measured on Paddle 3.3 and 2.6, which share this
code) starts each rank in its own session (`os.setsid`), forwards SIGTERM and SIGINT to each rank's
process group as SIGTERM, up to three times 0.2 s apart, SIGKILLs a rank still alive 30 s later and
exits with the signal's number; it has no SIGUSR1 handler, so SIGUSR1 kills it at once; and when a
rank exits non-zero it SIGTERMs the others and SIGKILLs them 3 s later. In a container or a SLURM
step whatever is left when the main process exits is killed. So:

- the first signal only sets `requested`; the loop reads it at the per-step host sync it already does
  (all ranks sum it with the loss, so all stop after the same update, also a rank that got no signal);
- after rank 0's save every rank waits in one more collective (train.py), so no rank exits, and none
  says "checkpoint-latest.pd holds this position", before the file is on disk; they then exit 75
  together and the launcher has nothing to kill;
- `tools/launch.py` runs the launcher with SIGUSR1 handled as its SIGTERM and exits 75 when the
  ranks did, so the job's main process outlives the save and reports it;
- repeated SIGTERM / SIGUSR1 are expected (the launcher repeats them) and only logged;
- a second SIGINT is a user pressing Ctrl-C again: it raises KeyboardInterrupt, but never inside
  `saving()`: there it waits until the checkpoint is on disk (writes are atomic in any case). One
  SIGINT after a SIGTERM is not that (`kill -INT` to a launch job reaches a rank after the launcher's
  SIGTERM) and is only logged;
- DataLoader workers must outlive the signal (datasets/worker_signals.py's `ignore_stop_signals` as
  `worker_init_fn`): the launcher signals each rank's whole process group, and Paddle's worker setup gives
  SIGTERM a C++ handler that kills the worker, whereupon the parent's SIGCHLD handler raises `SystemError:
  DataLoader process ... is killed by signal: Terminated` in the middle of the step or the save; a second
  SIGTERM arriving inside that C++ handler deadlocks the worker on its shared-memory mutex, which is how
  workers are left behind with PPID 1. They serve the parent until it ends them (the loader's
  `shutdown_workers`, which train.py calls as the run ends and the loader's exit hook at any exit), and
  leave on their own `WORKER_GRACE_S` after a SIGTERM if it never does (an orphan's ParentWatchDog exit
  blocks flushing its result queue). A parent that dies outright (SIGKILL, the OOM killer) takes them with
  it (`end_with_parent`, the kernel's parent-death signal).

Paddle installs a C++ handler for SIGTERM at import (the `FatalError: Termination signal` dump);
installing this handler after `import paddle` replaces it. Do not call `paddle.disable_signal_handler()`
after installing: it resets SIGTERM to the default action underneath Python.
"""
import contextlib
import os
import signal
from typing import Dict, Iterator, Optional

from utils.logger import get_logger

_logger = get_logger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)


class PreemptionHandler:
    """Turns stop signals into `requested`; use as `with PreemptionHandler() as preemption:` in the main thread.

    Install it after `import paddle` and before the DataLoader starts its workers; the previous
    handlers come back on exit (Paddle's C++ SIGTERM handler, which Python cannot hand back, becomes
    the default action).
    """

    def __init__(self, signals=STOP_SIGNALS):
        self.signals = tuple(signals)
        self.received: Optional[signal.Signals] = None  # the first stop signal
        self._count = 0
        self._interrupts = 0
        self._saving = False
        self._interrupt_after_save = False
        self._owner_pid = os.getpid()
        self._previous: Dict[int, object] = {}

    @property
    def requested(self) -> bool:
        """A stop was asked for on this process (combine across ranks before acting on it)."""
        return self.received is not None

    def reason(self) -> str:
        """What stopped the run, for its last line: the signal, or another rank's (ranks stop together)."""
        return self.received.name if self.received is not None else 'a stop signal to another rank'

    def install(self) -> 'PreemptionHandler':
        self._owner_pid = os.getpid()
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            # None: the previous handler was not installed from Python (Paddle's C++ one).
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    def __enter__(self) -> 'PreemptionHandler':
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()

    @contextlib.contextmanager
    def saving(self) -> Iterator[None]:
        """Wrap the checkpoint write: a forced stop (second SIGINT) arriving meanwhile waits for it to finish."""
        self._saving = True
        try:
            yield
        finally:
            self._saving = False
        if self._interrupt_after_save:
            raise KeyboardInterrupt

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self._owner_pid:
            return  # a forked child that kept the inherited handler: its parent decides when it ends
        self._count += 1
        name = signal.Signals(signum).name
        if signum == signal.SIGINT:
            self._interrupts += 1
        if self.received is None:
            self.received = signal.Signals(signum)
            _logger.warning('%s received: stopping after the current optimizer update and saving the position '
                            '(Ctrl-C again to quit without saving)', name)
            return
        if self._interrupts >= 2:  # only Ctrl-C twice: a SIGINT after the launcher's SIGTERM is the same request
            if self._saving:
                self._interrupt_after_save = True
                _logger.warning('SIGINT again: quitting once the checkpoint being written is on disk')
                return
            raise KeyboardInterrupt
        _logger.info('%s again (%d stop signals so far): already stopping', name, self._count)

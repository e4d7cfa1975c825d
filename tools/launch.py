"""`paddle.distributed.launch` as clusters stop it: SIGUSR1 handled as its SIGTERM, and exit status 75 when
the ranks stopped on a signal with their position saved.

    python tools/launch.py --nproc_per_node 8 train.py /data/imagenet --config configs/train/cvt/cvt_13_224x224.yaml

It takes the flags of `python -m paddle.distributed.launch` and runs that launcher in this process, so this
is the job's main process (PID 1 of a container, the task of a SLURM step). Two things differ:

- SIGUSR1 (SLURM's `--signal=USR1@<s>` warning, which reaches every process of the step) goes to the
  launcher's SIGTERM handler: forwarded to every rank's process group as SIGTERM, then the launcher waits
  up to 30 s for the ranks. Paddle's launcher has no SIGUSR1 handler and dies at once, and the container
  or step kills the ranks with it, mid-save.
- The exit status is 75 (`utils.entrypoint.EXIT_PREEMPTED`) when a rank exited 75: train.py's ranks exit
  75 only once rank 0's `checkpoint-latest.pd` is on disk, so 75 means "run the same command again to
  resume". The launcher itself exits with the signal's number (15 after SIGTERM) whatever its ranks did.

Every other exit status is the launcher's. The repo root is put on sys.path without `utils.env`: the
ranks set their CPU threads themselves, from a clean environment, as under the launcher alone.
"""
import os
import signal
import sys
from typing import List, Optional, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.entrypoint import EXIT_PREEMPTED  # noqa: E402


def launch(argv: Sequence[str]) -> int:
    """Run `python -m paddle.distributed.launch ARGV` in this process; returns its exit status (see above)."""
    from paddle.distributed.launch import controllers
    from paddle.distributed.launch.main import launch as paddle_launch

    started: List = []
    build = controllers.init

    def build_with_sigusr1(ctx):
        controller = build(ctx)  # installs the SIGTERM/SIGINT handlers
        signal.signal(signal.SIGUSR1, controller.signal_handler)
        started.append(controller)
        return controller

    controllers.init = build_with_sigusr1
    sys.argv = [sys.argv[0], *argv]  # where the launcher reads its flags
    try:
        paddle_launch()
        status = 0
    except SystemExit as e:  # the launcher always leaves through sys.exit, also from its signal handler
        status = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        controllers.init = build
    rank_status = [container.exit_code for container in started[-1].pod.containers] if started else []
    if EXIT_PREEMPTED in rank_status:
        print(f'ranks stopped on a signal with checkpoint-latest.pd saved (rank exit status {rank_status}): '
              f'run the same command again to resume (exit status {EXIT_PREEMPTED})', file=sys.stderr)
        return EXIT_PREEMPTED
    return status


def main(argv: Optional[Sequence[str]] = None) -> int:
    return launch(sys.argv[1:] if argv is None else argv)


if __name__ == '__main__':
    sys.exit(main())

"""tools/launch.py against paddle.distributed.launch, with ranks that stand in for train.py's stop: on a
signal they take a second to "save", then exit 75. The launcher's measured behaviour is what the README
states; tools/launch.py forwards SIGUSR1 as SIGTERM and exits 75 when the ranks did."""
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.scripts import ROOT
from utils.entrypoint import EXIT_PREEMPTED

pytestmark = pytest.mark.skipif(sys.platform == 'win32', reason='POSIX signals')

RANK = '''
import os, signal, sys, time
got = []
for signum in (signal.SIGTERM, signal.SIGUSR1):
    signal.signal(signum, lambda s, f: got.append(signal.Signals(s).name))
prefix = f"{sys.argv[1]}.{os.environ['PADDLE_TRAINER_ID']}"
with open(prefix + '.ready', 'w') as f:
    f.write(str(os.getpid()))
while not got:
    time.sleep(0.05)
time.sleep(1)
with open(prefix + '.saved', 'w') as f:
    f.write(got[0])
sys.exit(75)
'''

LAUNCHERS = {'paddle': ['-m', 'paddle.distributed.launch'], 'tools/launch.py': ['tools/launch.py']}


def _run(launcher, signum, tmp_path):
    """(launcher's exit status, {rank: the signal it saved on, or None})."""
    (tmp_path / 'rank.py').write_text(RANK)
    prefix = tmp_path / 'rank'
    env = {k: v for k, v in os.environ.items() if k != 'CUDA_VISIBLE_DEVICES'}  # a set value means GPU jobs
    job = subprocess.Popen([sys.executable, *LAUNCHERS[launcher], '--nproc_per_node', '2', '--log_dir',
                            str(tmp_path / 'logs'), str(tmp_path / 'rank.py'), str(prefix)], cwd=ROOT, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ready = [tmp_path / f'rank.{rank}.ready' for rank in (0, 1)]
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not all(p.exists() and p.read_text() for p in ready):
            time.sleep(0.05)
        job.send_signal(signum)
        status = job.wait(timeout=60)
    finally:
        job.kill()
        for path in ready:  # ranks live in sessions of their own: a launcher that died leaves them behind
            if path.exists() and path.read_text():
                try:
                    os.kill(int(path.read_text()), signal.SIGKILL)
                except ProcessLookupError:
                    pass
    saved = {rank: (tmp_path / f'rank.{rank}.saved') for rank in (0, 1)}
    return status, {rank: path.read_text() if path.exists() else None for rank, path in saved.items()}


@pytest.mark.parametrize('launcher, signum, expected', [
    ('paddle', signal.SIGTERM, (signal.SIGTERM, {0: 'SIGTERM', 1: 'SIGTERM'})),  # forwards, exits 15
    ('paddle', signal.SIGUSR1, (-signal.SIGUSR1, {0: None, 1: None})),  # dies at once, forwards nothing
    ('tools/launch.py', signal.SIGTERM, (EXIT_PREEMPTED, {0: 'SIGTERM', 1: 'SIGTERM'})),
    ('tools/launch.py', signal.SIGUSR1, (EXIT_PREEMPTED, {0: 'SIGTERM', 1: 'SIGTERM'})),
])
def test_a_signal_to_the_launcher_reaches_the_ranks_and_the_exit_status_says_they_stopped(launcher, signum,
                                                                                          expected, tmp_path):
    assert _run(launcher, signum, tmp_path) == expected


def test_launcher_flags_and_help_are_paddles():
    result = subprocess.run([sys.executable, 'tools/launch.py', '--help'], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and '--nproc_per_node' in result.stdout


def test_the_launcher_leaves_the_ranks_cpu_threads_to_them():
    # A rank takes CPUs / ranks on its machine unless OMP_NUM_THREADS is set (utils.env); a launcher that
    # imported utils.env (training/ does) would set it to all CPUs for every rank it starts.
    env = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}
    code = 'import os, runpy; runpy.run_path("tools/launch.py"); print(os.environ.get("OMP_NUM_THREADS"))'
    result = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)
    assert result.stdout.split() == ['None'], result.stderr[-2000:]

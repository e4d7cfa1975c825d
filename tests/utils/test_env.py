"""CPU runtime settings made before paddle loads: threads, MKL's AVX2 path on AMD, Pillow before paddle."""
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from utils.env import threads_per_rank, uses_mkl_generic_path

ROOT = Path(__file__).resolve().parents[2]


def _fresh_env(code: str, **env):
    base = {k: v for k, v in os.environ.items()
            if k not in ('OMP_NUM_THREADS', 'MKL_DEBUG_CPU_TYPE', 'PADDLE_LOCAL_SIZE', 'CVT_WORKER_THREADS')}
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env={**base, **env}, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1500:]
    return out.stdout.split()


def test_mkl_generic_path_is_detected_on_amd_with_avx2_only():
    assert uses_mkl_generic_path('vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma')
    assert not uses_mkl_generic_path('vendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx avx2 fma')
    assert not uses_mkl_generic_path('vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx')


def test_settings_fill_only_what_the_user_left_unset():
    code = ('import os, utils.env; '
            'print(os.environ["OMP_NUM_THREADS"], os.environ.get("MKL_DEBUG_CPU_TYPE", "-"))')
    threads, mkl = _fresh_env(code)
    assert int(threads) == len(os.sched_getaffinity(0))
    amd = uses_mkl_generic_path(Path('/proc/cpuinfo').read_text(errors='replace'))
    assert mkl == ('5' if amd else '-')
    assert _fresh_env(code, OMP_NUM_THREADS='1', MKL_DEBUG_CPU_TYPE='0') == ['1', '0']


def test_pngs_decode_after_paddle_is_imported(tmp_path):
    # Paddle 2.6's libpaddle exports zlib symbols; utils.env loads Pillow's first (see its docstring).
    from PIL import Image
    Image.new('RGB', (8, 8), (10, 20, 30)).save(tmp_path / 'x.png')
    code = (f'import utils.env, paddle; from PIL import Image; '
            f'print(Image.open({str(tmp_path / "x.png")!r}).convert("RGB").getpixel((1, 1)))')
    assert ''.join(_fresh_env(code)) == '(10,20,30)'


def test_import_drops_only_paddles_omp_warning():
    # OMP_NUM_THREADS > 1 makes `import paddle` print two warning lines; utils.env drops those, nothing else.
    code = ('import sys; sys.stderr.write("before\\n"); import utils.env, paddle, warnings; '
            'warnings.warn("When training, we now always track global mean and variance."); '
            'sys.stderr.write("after\\n")')
    base = {k: v for k, v in os.environ.items() if k != 'OMP_NUM_THREADS'}
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env={**base, 'OMP_NUM_THREADS': '2'},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == ['before', 'after']
    noisy = subprocess.run([sys.executable, '-c', 'import paddle'], cwd=ROOT, env={**base, 'OMP_NUM_THREADS': '2'},
                           capture_output=True, text=True, timeout=120)
    assert 'OMP_NUM_THREADS set to 2' in noisy.stderr  # what it guards against still happens without it



def test_threads_per_rank_share_the_cpus_among_the_ranks_of_this_machine():
    assert threads_per_rank(cores=8, environ={}) == 8
    assert threads_per_rank(cores=8, environ={'PADDLE_LOCAL_SIZE': '4'}) == 2
    assert threads_per_rank(cores=8, environ={'PADDLE_LOCAL_SIZE': '3', 'PADDLE_TRAINERS_NUM': '16'}) == 2
    assert threads_per_rank(cores=2, environ={'PADDLE_LOCAL_SIZE': '8'}) == 1


def test_a_rank_of_the_launcher_takes_its_share_unless_the_user_chose():
    code = 'import os, utils.env; print(os.environ["OMP_NUM_THREADS"])'
    cores = len(os.sched_getaffinity(0))
    assert _fresh_env(code, PADDLE_LOCAL_SIZE='2') == [str(max(1, cores // 2))]
    assert _fresh_env(code, PADDLE_LOCAL_SIZE='2', OMP_NUM_THREADS='3') == ['3']


WORKER_THREADS = """
import os, utils.env, numpy as np, threadpoolctl
from datasets.loader import build_loader

class Threads:
    def __len__(self):
        return 2
    def __getitem__(self, index):
        blas = max(lib['num_threads'] for lib in threadpoolctl.threadpool_info())
        return np.array([int(os.environ['OMP_NUM_THREADS']), blas], np.int64), 0

print(max(lib['num_threads'] for lib in threadpoolctl.threadpool_info()),
      *next(iter(build_loader(Threads(), 1, is_train=False, num_workers=1)))[0].numpy().ravel())
"""


def test_loader_workers_use_one_math_thread_unless_told_otherwise():
    pytest.importorskip('threadpoolctl', reason='reads the BLAS thread count (scikit-learn, requirements-dev.txt)')
    # the rank itself: 2 threads; its worker: OMP_NUM_THREADS and numpy's BLAS pool at 1
    assert _fresh_env(WORKER_THREADS, OMP_NUM_THREADS='2') == ['2', '1', '1']
    assert _fresh_env(WORKER_THREADS, OMP_NUM_THREADS='2', CVT_WORKER_THREADS='2') == ['2', '2', '2']


def test_loader_workers_default_to_at_most_the_cores_per_local_process(monkeypatch):
    import utils.env
    from training.args import build_train_parser
    monkeypatch.setattr(utils.env, 'usable_cores', lambda: 2)
    monkeypatch.delenv('PADDLE_LOCAL_SIZE', raising=False)
    assert utils.env.default_num_workers(6) == 2 and utils.env.default_num_workers(1) == 1
    monkeypatch.setenv('PADDLE_LOCAL_SIZE', '4')  # 4 ranks on 2 cores: still one worker each
    assert utils.env.default_num_workers(6) == 1
    monkeypatch.setattr(utils.env, 'usable_cores', lambda: 64)
    assert utils.env.default_num_workers(6) == 6
    monkeypatch.setattr(utils.env, 'usable_cores', lambda: 2)
    monkeypatch.delenv('PADDLE_LOCAL_SIZE')
    assert build_train_parser().get_default('num_workers') == 2  # train.py's 6 and eval.py's 4, on 2 cores
    assert runpy.run_path(str(ROOT / 'eval.py'))['build_parser']().get_default('num_workers') == 2

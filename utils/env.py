"""Process set-up every script imports first (`import utils.env`), before anything loads paddle.

Importing it:
- sets the CPU runtime variables the math libraries read once, at load time (`configure_cpu_runtime`):
  threads per rank = CPUs / ranks on this machine; loader workers call `limit_worker_threads` (1 each);
- loads Pillow's decoders before paddle: Paddle 2.6's libpaddle.so exports its own zlib symbols, and a
  Pillow loaded after it mixes the two zlibs, so every PNG then fails with "codec configuration error";
- imports paddle with its OMP_NUM_THREADS warning dropped (the thread count is set here on purpose) and
  filters the few framework messages that are noise for every run of these scripts (`QUIET_WARNINGS`).
Without paddle installed (the timm/torch side of the benchmarks runs tools with another Python) only
the environment variables are set.
"""
import contextlib
import ctypes
import importlib.util
import os
import random
import sys
import tempfile
import warnings
from typing import Optional, Sequence

# UserWarnings Paddle raises on every call of a code path these scripts use as intended.
QUIET_WARNINGS = (
    'No ccache found',  # at import: a C++ build cache that only matters for custom operators
    'When training, we now always track global mean and variance',  # every BatchNorm forward in training
)
# Lines `import paddle` prints to stderr whenever OMP_NUM_THREADS > 1, which configure_cpu_runtime makes so.
PADDLE_IMPORT_NOISE = ('WARNING: OMP_NUM_THREADS set to', 'PLEASE USE OMP_NUM_THREADS WISELY')


def uses_mkl_generic_path(cpuinfo: str) -> bool:
    """True on AMD CPUs with AVX2, where the Intel MKL that Paddle bundles picks slow generic kernels."""
    return 'AuthenticAMD' in cpuinfo and ' avx2' in cpuinfo


def read_cpuinfo() -> str:
    """The start of /proc/cpuinfo (the first processors), or '' where there is none (not Linux)."""
    try:
        with open('/proc/cpuinfo', encoding='utf-8', errors='replace') as f:
            return f.read(1 << 16)
    except OSError:
        return ''


# The instruction sets the reduced precisions need: int8 GEMMs at full rate (VNNI) and bf16 math
ISA_FLAGS = ('avx2', 'avx512f', 'avx512_vnni', 'avx_vnni', 'avx512_bf16', 'amx_bf16', 'amx_int8')


def cpu_summary(cpuinfo: Optional[str] = None) -> dict:
    """Model name, family/model and which of ISA_FLAGS the first processor of `cpuinfo` lists (default:
    this machine's /proc/cpuinfo; empty where there is none)."""
    if cpuinfo is None:
        cpuinfo = read_cpuinfo()
    fields = {}
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(':')
        if not key.strip() and fields:  # the blank line after the first processor
            break
        fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get('flags', '').split())
    return dict(model_name=fields.get('model name', 'unknown'), family=fields.get('cpu family'),
                model=fields.get('model'), flags={flag: flag in flags for flag in ISA_FLAGS})


def format_cpu_summary(cpu: dict) -> str:
    """One line, e.g. 'CPU: AMD EPYC (family 25, model 1); /proc/cpuinfo lists avx2; not avx512f, ...'."""
    listed = [f for f, present in cpu['flags'].items() if present]
    missing = [f for f, present in cpu['flags'].items() if not present]
    return (f"CPU: {cpu['model_name']} (family {cpu['family']}, model {cpu['model']}); "
            f"/proc/cpuinfo lists {', '.join(listed) or 'none of ' + ', '.join(ISA_FLAGS)}"
            + (f"; not {', '.join(missing)}" if listed and missing else ''))


# Set by `paddle.distributed.launch` in every rank: how many ranks run on this machine (--nproc_per_node).
LOCAL_RANKS_ENV = 'PADDLE_LOCAL_SIZE'
# Math threads of each DataLoader worker (default 1): workers run in parallel already, one per process.
WORKER_THREADS_ENV = 'CVT_WORKER_THREADS'


def threads_per_rank(cores: Optional[int] = None, environ=os.environ) -> int:
    """This machine's CPUs (those this process may run on) shared by the ranks the launcher put on it."""
    cores = usable_cores() if cores is None else cores
    return max(1, cores // max(1, int(environ.get(LOCAL_RANKS_ENV) or 1)))


def configure_cpu_runtime() -> None:
    """Fill in what the user left unset:

    - OMP_NUM_THREADS: the CPU count divided by the ranks on this machine (`threads_per_rank`), so 8
      ranks of one node and their loader workers do not each start a thread per core; `import paddle`
      forces 1 when it is unset, which makes every CPU op single-threaded.
    - MKL_DEBUG_CPU_TYPE=5 on AMD CPUs with AVX2: Paddle's MKL-ML then uses its AVX2 GEMMs instead of
      generic ones; measured on an AMD EPYC, 2 threads: CvT-13 training 1.43 -> 2.10 img/s, inference
      4.4 -> 6.7 img/s.
    """
    if not os.environ.get('OMP_NUM_THREADS'):
        os.environ['OMP_NUM_THREADS'] = str(threads_per_rank())
    if 'MKL_DEBUG_CPU_TYPE' not in os.environ and uses_mkl_generic_path(read_cpuinfo()):
        os.environ['MKL_DEBUG_CPU_TYPE'] = '5'


def limit_worker_threads() -> int:
    """In a DataLoader worker: math libraries already loaded (forked from the rank) and any loaded later
    use $CVT_WORKER_THREADS threads (default 1); returns that count."""
    threads = int(os.environ.get(WORKER_THREADS_ENV) or 1)
    for name in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS'):
        os.environ[name] = str(threads)
    core = getattr(getattr(sys.modules.get('paddle'), 'base', None), 'core', None)
    if core is not None and hasattr(core, 'set_num_threads'):
        core.set_num_threads(threads)  # Paddle's MKL/OpenMP CPU kernels
    if 'cv2' in sys.modules:
        sys.modules['cv2'].setNumThreads(threads)
    if importlib.util.find_spec('threadpoolctl') is not None:  # numpy's BLAS, where threadpoolctl is installed
        import threadpoolctl
        threadpoolctl.threadpool_limits(threads)
    return threads


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count() or 1


def cpu_threads() -> int:
    """The math-library thread count of this process (the default of every --cpu_threads flag)."""
    return int(os.environ['OMP_NUM_THREADS'])


def default_num_workers(cap: int) -> int:
    """Loader workers per process: `cap`, but no more than this machine's cores per local process
    (`threads_per_rank`), and at least one."""
    return min(cap, threads_per_rank())


def _flush_all_output() -> None:
    """Python's and C stdio's buffered output, so what was written so far reaches the file descriptors."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError):  # replaced by an object without flush, or closed
            pass
    try:
        ctypes.CDLL(None).fflush(None)  # C/C++ libraries buffer stdout when it is not a terminal
    except (OSError, AttributeError, TypeError):  # no C library to ask (not a POSIX libc)
        pass


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def dropped_output_lines(messages: Sequence[str]):
    """Hold everything written to file descriptors 1 and 2 inside the block, then pass on each line that
    contains none of `messages`, to the descriptor it was written to.

    Working on the descriptors catches what C++ prints (libpaddle, paddle2onnx), which no Python-level
    filter sees, and leaves sys.stdout/sys.stderr themselves untouched, so a logging handler created
    inside the block (Paddle's import adds one to the root logger) still writes to the real stream.
    """
    drop = [m.encode() for m in messages]
    _flush_all_output()
    held = {fd: tempfile.TemporaryFile() for fd in (1, 2) if _is_open(fd)}  # closed: nothing there is seen
    saved = {fd: os.dup(fd) for fd in held}
    for fd, file in held.items():
        os.dup2(file.fileno(), fd)
    try:
        yield
    finally:
        _flush_all_output()
        for fd, file in held.items():
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
            file.seek(0)
            kept = [line for line in file.read().splitlines(keepends=True) if not any(m in line for m in drop)]
            file.close()
            with open(fd, 'wb', closefd=False) as out:
                out.write(b''.join(kept))


def _import_paddle_quietly() -> None:
    if 'paddle' in sys.modules or importlib.util.find_spec('paddle') is None:
        return
    with dropped_output_lines(PADDLE_IMPORT_NOISE):
        import paddle  # noqa: F401


def seed_everything(seed: int) -> None:
    """Seed python, numpy and paddle RNGs."""
    import numpy as np
    import paddle
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)


configure_cpu_runtime()
for _message in QUIET_WARNINGS:
    warnings.filterwarnings('ignore', message=_message, category=UserWarning)
if importlib.util.find_spec('PIL') is not None:
    import PIL.Image  # noqa: F401  (binds Pillow to the system zlib first; see above)
_import_paddle_quietly()

"""Process environment: CPU thread count (set before paddle is imported) and seeding.

Importing this module also loads Pillow's decoders, before any paddle import: Paddle 2.6's libpaddle.so
exports its own zlib symbols, and a Pillow loaded after it mixes the two zlibs, so every PNG then fails with
"codec configuration error".
"""
import os
import random
import warnings

import PIL.Image  # noqa: F401  (binds Pillow to the system zlib first; see above)


def configure_cpu_threads() -> int:
    """Set OMP_NUM_THREADS to the CPU count unless the user chose a value.

    `import paddle` forces OMP_NUM_THREADS=1 when it is unset, which makes every CPU op
    single-threaded, so this must run before the first paddle import.
    """
    # Paddle warns at import about a C++ build cache that only matters for custom operators.
    warnings.filterwarnings('ignore', message='No ccache found')
    if not os.environ.get('OMP_NUM_THREADS'):
        os.environ['OMP_NUM_THREADS'] = str(len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity')
                                            else os.cpu_count() or 1)
    return int(os.environ['OMP_NUM_THREADS'])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and paddle RNGs."""
    import numpy as np
    import paddle
    random.seed(seed)
    np.random.seed(seed)
    paddle.seed(seed)

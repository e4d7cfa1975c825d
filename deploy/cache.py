"""A checkpoint's export, made once and kept in the cache: eval.py and predict.py run a checkpoint on Paddle
Inference, ONNX Runtime or OpenVINO through the export that export_model.py would write for it.

An entry is keyed by the weight file (absolute path, modification time, size) and by what shapes the graph
(model, classes, EMA or not, input size, ONNX or not, the installed Paddle and paddle2onnx, and the code
that builds the graph), so a retrained checkpoint, an edited model file or an upgraded Paddle exports anew.
"""
import contextlib
import hashlib
import json
import os
import shutil
import time
from typing import Callable, Iterator, Optional, Tuple

import numpy as np
import paddle

from models import cvt, export_rewrites, layers
from models.export_rewrites import rewrite_for_export
from utils.download import default_cache_dir
from utils.fileio import StorageError, storage_errors, sync_folder
from utils.logger import get_logger

from . import export
from .export import check_onnx_export_available, export_inference_model
from .layout import CFG_FILE, ONNX_FILE, read_inference_cfg
from .predictors import build_predictor, check_device_options

ONNX_BACKENDS = ('onnxruntime', 'openvino')  # they run the export's model.onnx
SOURCE_FILE = 'source.json'  # in each entry: what it was exported from, for pruning and for a reader
_STATE_KEYS = ('mtime_ns', 'size', 'versions', 'code')  # what changes when an entry goes stale
_logger = get_logger(__name__)


def exports_dir(cache_dir: Optional[str] = None) -> str:
    """Where checkpoint exports are cached: CACHE/exports (CACHE: $CVT_CACHE_DIR, else ~/.cache/cvt_paddle)."""
    return os.path.join(cache_dir or default_cache_dir(), 'exports')


def _code_fingerprint() -> str:
    """Hash of the source that decides the exported graph: a changed model or rewrite invalidates the cache."""
    digest = hashlib.sha256()
    for module in (cvt, layers, export_rewrites, export):
        with open(module.__file__, 'rb') as f:
            digest.update(f.read())
    return digest.hexdigest()[:16]


def _source(weights: str, model_name: str, num_classes: int, use_ema: bool, input_size, onnx: bool) -> dict:
    stat = os.stat(weights)
    versions = {'paddle': paddle.__version__}
    if onnx:
        import paddle2onnx
        versions['paddle2onnx'] = paddle2onnx.__version__
    return {'weights': os.path.abspath(weights), 'mtime_ns': stat.st_mtime_ns, 'size': stat.st_size,
            'model': model_name, 'num_classes': int(num_classes), 'use_ema': bool(use_ema),
            'input_size': [int(s) for s in input_size], 'onnx': bool(onnx), 'versions': versions,
            'code': _code_fingerprint()}


def _is_complete(folder: str, onnx: bool) -> bool:
    files = (SOURCE_FILE, CFG_FILE) + ((ONNX_FILE,) if onnx else ())
    return all(os.path.isfile(os.path.join(folder, name)) for name in files)


def cached_export(model: paddle.nn.Layer, *, weights: str, model_name: str, use_ema: bool, data_cfg: dict,
                  onnx: bool, cache_dir: Optional[str] = None) -> Tuple[str, bool]:
    """(export folder, reused) for eval-mode `model` loaded from `weights`: the cached entry when there is one,
    else a new export (as export_model.py writes it, ONNX included with `onnx`) put into the cache.

    The entry is built in a private folder, synced, and renamed into place whole: a crash leaves no entry,
    and of two processes exporting the same checkpoint at once the first rename wins, the other's copy is
    dropped. Stale entries of the same weight file and settings (from an earlier state of the file, an earlier
    Paddle or earlier code) are removed. A cache folder that cannot be written is a StorageError naming it.
    """
    source = _source(weights, model_name, model.num_classes, use_ema, data_cfg['input_size'], onnx)
    key = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]
    root = exports_dir(cache_dir)
    folder = os.path.join(root, f'{model_name}-{key}')
    if _is_complete(folder, onnx):
        return folder, True
    build = os.path.join(root, f'.{model_name}-{key}.build{os.getpid()}')
    start = time.time()
    try:
        with _cache_storage_errors(root):
            _build_entry(model, build, folder, model_name=model_name, data_cfg=data_cfg, onnx=onnx, source=source)
    finally:
        shutil.rmtree(build, ignore_errors=True)
    _logger.info('exported %s to %s in %.1f s (reused until the file changes)', weights, folder, time.time() - start)
    _remove_stale(root, source, keep=folder)
    return folder, False


@contextlib.contextmanager
def _cache_storage_errors(root: str) -> Iterator[None]:
    """A cache folder that cannot be written (full, read-only, forbidden) ends in one line saying what to do."""
    try:
        with storage_errors(root):
            yield
    except StorageError as e:
        reason = os.strerror(e.errno) if e.errno else 'not writable'
        raise StorageError(f'{root}: cannot write the export cache ({reason}); point CVT_CACHE_DIR at a writable '
                           f'folder with space, or use --backend dygraph') from e


def _build_entry(model, build: str, folder: str, *, model_name: str, data_cfg: dict, onnx: bool,
                 source: dict) -> None:
    """Export into the private folder `build`, sync it and rename it to `folder` (unless another process did)."""
    os.makedirs(os.path.dirname(build), exist_ok=True)
    shutil.rmtree(build, ignore_errors=True)  # left by a killed export of this pid, never another's
    export_inference_model(rewrite_for_export(model), build, model_name, data_cfg, onnx=onnx)
    with open(os.path.join(build, SOURCE_FILE), 'w', encoding='utf-8') as f:
        json.dump(source, f, indent=2)
    sync_folder(build)
    if os.path.isdir(folder) and not _is_complete(folder, onnx):
        shutil.rmtree(folder)  # a damaged entry (a file deleted by hand): replaced
    try:
        os.rename(build, folder)
    except OSError:
        if not _is_complete(folder, onnx):  # anything but another process having won the race
            raise
    sync_folder(os.path.dirname(folder))


def _remove_stale(root: str, source: dict, keep: str) -> None:
    """Remove the entries of the same weight file and settings exported from an earlier state of the file, by an
    earlier Paddle or from earlier code: none of them can be reused."""
    same_settings = {k: v for k, v in source.items() if k not in _STATE_KEYS}
    for name in os.listdir(root):
        folder = os.path.join(root, name)
        if folder == keep or name.startswith('.'):
            continue
        try:
            with open(os.path.join(folder, SOURCE_FILE), encoding='utf-8') as f:
                other = json.load(f)
        except (OSError, ValueError):
            continue
        if {k: v for k, v in other.items() if k not in _STATE_KEYS} == same_settings:
            shutil.rmtree(folder, ignore_errors=True)


def check_checkpoint_backend(backend: str, precision: str) -> None:
    """Refuse, before a checkpoint is read, what its cached export cannot run here."""
    if precision == 'int8':
        raise ValueError('--precision int8 needs a calibrated export: run export_model.py --onnx --int8 '
                         '--calib_images DIR, then pass its folder as --model_dir')
    check_device_options(backend, False, False, precision)
    if backend in ONNX_BACKENDS:
        check_onnx_export_available()


def checkpoint_predictor(model: paddle.nn.Layer, *, weights: str, model_name: str, use_ema: bool, data_cfg: dict,
                         backend: str, precision: str, max_batch_size: int, cpu_threads: int,
                         cache_dir: Optional[str] = None) -> Tuple[Callable[[np.ndarray], np.ndarray], dict]:
    """(predictor, its inference.yml) running `model`, loaded from `weights`, on `backend` through its cached
    export; says on the log where the export lies and whether it was made now."""
    check_checkpoint_backend(backend, precision)
    folder, reused = cached_export(model, weights=weights, model_name=model_name, use_ema=use_ema,
                                   data_cfg=data_cfg, onnx=backend in ONNX_BACKENDS, cache_dir=cache_dir)
    if reused:
        _logger.info('running %s on %s through its export cached in %s', weights, backend, folder)
    cfg = read_inference_cfg(folder)
    run = build_predictor(folder, cfg, backend=backend, max_batch_size=max_batch_size, cpu_threads=cpu_threads,
                          precision=precision)
    return run, cfg

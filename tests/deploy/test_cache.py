"""deploy/cache.py: a checkpoint's export is made once, reused while the weight file is unchanged, replaced
when it changes, never left half-written, and the first of two concurrent exports wins."""
import errno
import os
import shutil

import paddle
import pytest

from datasets.transforms import resolve_data_cfg
from deploy import cache
from deploy.cache import SOURCE_FILE, cached_export
from models import create_model
from utils.fileio import StorageError


@pytest.fixture
def loaded(tmp_path):
    """(model, weight file) as eval.py and predict.py hold them after load_model."""
    paddle.seed(0)
    model = create_model('cvt_tiny', num_classes=3)
    model.eval()
    weights = tmp_path / 'ckpt.pd'
    paddle.save({'model': model.state_dict()}, str(weights))
    return model, weights


def _export(model, weights, cache_dir, input_size=64):
    data_cfg = resolve_data_cfg(model.default_cfg, input_size=input_size)
    return cached_export(model, weights=str(weights), model_name='cvt_tiny', use_ema=False, data_cfg=data_cfg,
                         onnx=False, cache_dir=str(cache_dir))


def _entries(cache_dir):
    return sorted(os.listdir(cache_dir / 'exports'))


def test_an_entry_is_reused_until_the_weight_file_changes(loaded, tmp_path):
    model, weights = loaded
    first, reused = _export(model, weights, tmp_path)
    assert not reused and os.path.dirname(first) == str(tmp_path / 'exports')
    assert _export(model, weights, tmp_path) == (first, True)
    other_size, _ = _export(model, weights, tmp_path, input_size=32)  # another graph: its own entry
    stat = os.stat(weights)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))  # a checkpoint saved again
    renewed, reused = _export(model, weights, tmp_path)
    assert not reused and renewed != first
    assert _entries(tmp_path) == sorted(os.path.basename(p) for p in (renewed, other_size))  # the stale one went


def test_a_failed_export_leaves_no_entry(loaded, tmp_path, monkeypatch):
    model, weights = loaded

    def failing(*args, **kwargs):
        os.makedirs(args[1])
        raise RuntimeError('tracing failed')
    monkeypatch.setattr(cache, 'export_inference_model', failing)
    with pytest.raises(RuntimeError, match='tracing failed'):
        _export(model, weights, tmp_path)
    assert _entries(tmp_path) == []


def test_the_first_of_two_concurrent_exports_wins(loaded, tmp_path, monkeypatch):
    model, weights = loaded
    real = cache.export_inference_model
    winner = {}

    def racing(rewritten, build, *args, **kwargs):
        files = real(rewritten, build, *args, **kwargs)
        # another process finishes the same entry while this one is still building
        final = os.path.join(os.path.dirname(build), os.path.basename(build).lstrip('.').rsplit('.build', 1)[0])
        shutil.copytree(build, final)
        with open(os.path.join(final, SOURCE_FILE), 'w') as f:
            f.write('{}')
        winner['folder'] = final
        return files
    monkeypatch.setattr(cache, 'export_inference_model', racing)
    folder, reused = _export(model, weights, tmp_path)
    assert folder == winner['folder'] and not reused
    assert _entries(tmp_path) == [os.path.basename(folder)]  # this process's copy was dropped


def test_a_full_cache_disk_is_one_line_naming_the_cache_and_the_way_out(loaded, tmp_path, monkeypatch):
    model, weights = loaded

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(cache, 'export_inference_model', full_disk)
    with pytest.raises(StorageError) as error:
        _export(model, weights, tmp_path)
    assert str(error.value) == (f'{tmp_path / "exports"}: cannot write the export cache (No space left on device); '
                                f'point CVT_CACHE_DIR at a writable folder with space, or use --backend dygraph')
    assert _entries(tmp_path) == []

"""tools/benchmark_data.py: a one-iteration run on tiny JPEGs, the generated photos, the timm-side errors."""
import importlib.util
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from tools.benchmark_data import PHOTO_SIZES, TimmSide, main, write_benchmark_images


def _write_tiny_jpegs(root, count=4, classes=2):
    rng = np.random.RandomState(0)
    for i in range(count):
        folder = root / 'train' / f'c{i % classes}'
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.randint(0, 256, (60, 80, 3), dtype=np.uint8)).save(folder / f'{i}.JPEG')
    return root


def test_one_iteration_prints_table_and_json(tmp_path, capsys):
    data = _write_tiny_jpegs(tmp_path / 'data')
    out = tmp_path / 'result.json'
    code = main(['--data_dir', str(data), '--input_size', '64', '--batch_size', '2', '--iters', '1',
                 '--repeats', '1', '--workers', '0', '1', '--transfer', 'uint8', 'float32', '--fresh_workers',
                 '--json', str(out)])
    assert code == 0
    stdout = capsys.readouterr().out.strip().splitlines()
    printed = json.loads(stdout[-1])
    assert printed == json.loads(out.read_text())
    assert any(line.startswith('train, per worker') for line in stdout)
    names = [row['name'] for row in printed['rows']]
    assert names == ['train, per worker', 'eval, per worker'] + ['train, build_loader 0 workers'] * 2 + [
        'train, build_loader 1 workers'] * 4
    loaders = {(r['workers'], r['transfer'], r['persistent']): r for r in printed['rows'][2:]}
    assert sorted(loaders) == [(0, 'float32', False), (0, 'uint8', False), (1, 'float32', False),
                               (1, 'float32', True), (1, 'uint8', False), (1, 'uint8', True)]
    assert loaders[1, 'uint8', True]['ours_transferred'] == 'uint8'
    assert loaders[1, 'float32', True]['ours_shm_batch_mb'] == 4 * loaders[1, 'uint8', True]['ours_shm_batch_mb']
    for row in printed['rows']:
        assert row['input_size'] == 64 and row['ours_img_s'] > 0
        assert 'timm_img_s' not in row  # no --timm_python: ours only
    train, evaluation = printed['rows'][:2]
    assert train['ours_batch_ms'] > 0 and train['ours_image_img_s'] >= train['ours_img_s']
    assert (evaluation['crop_pct'], evaluation['crop_mode']) == (0.875, 'center')  # cvt_tiny's protocol
    assert all(r['ours_first_batch_s'] > 0 and r['ours_next_pass_s'] > 0 for r in loaders.values())
    assert printed['num_images'] == 4 and printed['batch_size'] == 2
    assert printed['recipe']['aa'] == 'rand-m9-mstd0.5-inc1' and printed['recipe']['mixup']['cutmix_alpha'] == 1.0


def test_generated_images_are_imagenet_sized_jpegs(tmp_path):
    paths = write_benchmark_images(str(tmp_path), 3, source=None, seed=1)
    assert len(paths) == 3 and all(p.startswith(str(tmp_path / 'train' / 'n')) for p in paths)
    for path in paths:
        with Image.open(path) as img:
            assert img.format == 'JPEG' and img.mode == 'RGB' and img.size in PHOTO_SIZES
            assert np.asarray(img).std() > 10  # textured, not flat colour


def test_photo_variations_differ(tmp_path, shared_reference):
    paths = write_benchmark_images(str(tmp_path), 2, source=str(shared_reference / 'ILSVRC2012_val_00020010.JPEG'))
    first, second = (np.asarray(Image.open(p).resize((64, 48)), np.float32) for p in paths)
    assert np.abs(first - second).mean() > 1.0


def test_missing_timm_python_is_a_one_line_error(tmp_path):
    with pytest.raises(FileNotFoundError, match='--timm_python not found'):
        main(['--timm_python', str(tmp_path / 'no_python')])


@pytest.mark.skipif(importlib.util.find_spec('timm') is not None, reason='needs a python without timm')
def test_timm_side_failure_names_the_python():
    with pytest.raises(ValueError, match=r'the timm side failed with exit status 1: .*No module named'):
        TimmSide(sys.executable, dict(paths=[os.devnull], labels=[0], seed=0, batch_size=1, iters=1))

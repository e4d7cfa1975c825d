"""Eval protocols match a straightforward torchvision-rule computation; train pipeline shape, modes and seeding."""
import math
import random

import numpy as np
import pytest
from PIL import Image

from datasets.auto_augment import RandAugment
from datasets.random_erasing import RandomErasing
from datasets.transforms import (IMAGENET_MEAN, IMAGENET_STD, ColorJitter, Pipeline, ResizeCenterCrop, build_transform,
                                 center_crop, random_resized_crop_box, resolve_data_cfg, shorter_side_size,
                                 to_rgb)

MEAN = np.array(IMAGENET_MEAN).reshape(1, 1, 3)
STD = np.array(IMAGENET_STD).reshape(1, 1, 3)
MODEL_CFG = dict(input_size=(3, 384, 384), interpolation='bicubic', crop_pct=1.0, crop_mode='squash',
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, num_classes=1000, architecture='cvt_13_384x384')


def _photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise, so resampling filters and crop offsets both show."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 127 / (width + height)], axis=-1)
    noisy = base + rng.normal(0, 25, base.shape)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _reference_eval(img: Image.Image, size: int, crop_pct: float, squash: bool) -> np.ndarray:
    """torchvision Resize(int) + CenterCrop (or Resize((size, size))), ToTensor, Normalize, in float64."""
    img = img.convert('RGB')
    if squash:
        img = img.resize((size, size), Image.Resampling.BICUBIC)
    else:
        short = math.floor(size / crop_pct)
        w, h = img.size
        new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
        img = img.crop((left, top, left + size, top + size))
    x = np.asarray(img, np.float64) / 255.0
    return ((x - MEAN) / STD).transpose(2, 0, 1)


@pytest.mark.parametrize('width, height, size, crop_pct, crop_mode', [
    (500, 375, 224, 0.875, 'center'),
    (375, 500, 224, 0.875, 'center'),
    (97, 301, 224, 0.875, 'center'),  # odd aspect, upsampled
    (500, 375, 384, 1.0, 'squash'),
    (301, 97, 384, 1.0, 'squash'),
])
def test_eval_matches_reference_computation(width, height, size, crop_pct, crop_mode):
    img = _photo_like(width, height)
    out = build_transform(False, size, crop_pct=crop_pct, crop_mode=crop_mode)(img)
    assert out.shape == (3, size, size) and out.dtype == np.float32
    ref = _reference_eval(img, size, crop_pct, squash=crop_mode == 'squash')
    assert np.abs(out - ref).max() <= 1e-6


def test_eval_matches_reference_on_real_photo(shared_reference):
    img = Image.open(shared_reference / 'ILSVRC2012_val_00020010.JPEG')
    for size, crop_pct, crop_mode in ((224, 0.875, 'center'), (384, 1.0, 'squash')):
        out = build_transform(False, size, crop_pct=crop_pct, crop_mode=crop_mode)(img)
        ref = _reference_eval(img, size, crop_pct, squash=crop_mode == 'squash')
        assert np.abs(out - ref).max() <= 1e-6


def test_shorter_side_resize_truncates_long_side_like_torchvision():
    assert shorter_side_size(500, 375, 256) == (341, 256)
    assert shorter_side_size(375, 500, 256) == (256, 341)
    assert shorter_side_size(3, 5, 256) == (256, 426)  # 426.67 truncated, not rounded
    assert shorter_side_size(64, 64, 73) == (73, 73)


def test_eval_scale_size_is_floor_of_size_over_crop_pct():
    assert ResizeCenterCrop(224, 0.875, 'center', 'bicubic').scale_size == (256, 256)
    assert ResizeCenterCrop(224, 0.9, 'center', 'bicubic').scale_size == (248, 248)
    assert ResizeCenterCrop(384, 1.0, 'squash', 'bicubic').scale_size == (384, 384)


@pytest.mark.parametrize('width, left', [(341, 58), (343, 60), (226, 1)])
def test_center_crop_rounds_offsets_half_to_even(width, left):
    # torchvision: int(round((w - crop) / 2)), Python's round: 58.5 -> 58, 59.5 -> 60
    img = Image.fromarray(np.tile(np.arange(width) % 256, (256, 1)).astype(np.uint8))
    crop = center_crop(img, 224, 224)
    assert crop.size == (224, 224)
    assert np.asarray(crop)[0, 0] == left


def test_center_mode_non_square_size_covers_both_edges():
    out = build_transform(False, (3, 64, 96), crop_pct=1.0)(_photo_like(100, 100))
    assert out.shape == (3, 64, 96)


def test_normalisation_is_exact_per_value():
    values = np.arange(256, dtype=np.uint8)
    img = Image.fromarray(np.stack([values] * 3, axis=-1).reshape(16, 16, 3))
    out = build_transform(False, 16, crop_pct=1.0)(img)
    ref = ((np.asarray(img, np.float64) / 255.0 - MEAN) / STD).transpose(2, 0, 1).astype(np.float32)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize('mode', ['L', 'LA', 'P', 'PA', 'CMYK', 'RGBA', 'I;16', 'I', 'F', '1'])
def test_any_mode_becomes_rgb(mode):
    img = _photo_like(40, 30).convert(mode)
    assert to_rgb(img).mode == 'RGB'
    for is_train in (False, True):
        out = build_transform(is_train, 32, aa='rand-m9-mstd0.5-inc1', reprob=0.25)(img)
        assert out.shape == (3, 32, 32) and out.dtype == np.float32


def test_alpha_is_dropped_and_grey_replicated():
    rgba = Image.new('RGBA', (4, 4), (10, 20, 30, 0))
    assert np.asarray(to_rgb(rgba))[0, 0].tolist() == [10, 20, 30]
    assert np.asarray(to_rgb(Image.new('L', (4, 4), 77)))[0, 0].tolist() == [77, 77, 77]


def test_16_bit_grey_is_scaled_not_clipped():
    grey16 = Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16))
    assert grey16.mode == 'I;16'
    assert np.asarray(to_rgb(grey16))[0, :, 0].tolist() == [0, 128, 255]


def test_accepts_hwc_uint8_array():
    img = _photo_like(50, 40)
    tf = build_transform(False, 32)
    np.testing.assert_array_equal(tf(np.asarray(img)), tf(img))


@pytest.mark.parametrize('size', [32, (3, 32, 48), (40, 24)])
def test_train_output_shape_and_dtype(size):
    out = build_transform(True, size, aa='rand-m9-mstd0.5-inc1', reprob=0.25)(_photo_like(60, 45))
    h, w = (size, size) if isinstance(size, int) else size[-2:]
    assert out.shape == (3, h, w) and out.dtype == np.float32 and np.isfinite(out).all()


def _run_seeded(tf, img, seed):
    random.seed(seed)
    np.random.seed(seed)
    return [tf(img) for _ in range(4)]


def test_train_is_deterministic_given_seeds():
    tf = build_transform(True, 32, interpolation='random', aa='rand-m9-mstd0.5-inc1', reprob=0.5, recount=3)
    img = _photo_like(60, 45)
    first, again, other = _run_seeded(tf, img, 3), _run_seeded(tf, img, 3), _run_seeded(tf, img, 4)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))


def test_train_recipe_steps():
    with_aa = build_transform(True, 32, aa='rand-m9-mstd0.5-inc1', reprob=0.25, recount=2)
    kinds = [type(step) for step in with_aa.steps]
    assert RandAugment in kinds and ColorJitter not in kinds  # jitter is off under RandAugment, as in timm
    erasing = with_aa.steps[-1]
    assert isinstance(erasing, RandomErasing) and erasing.mode == 'pixel' and erasing.max_count == 2
    plain = [type(step) for step in build_transform(True, 32).steps]
    assert ColorJitter in plain and RandAugment not in plain and RandomErasing not in plain


def test_rand_augment_follows_train_interpolation_and_mean_fill():
    ra = next(s for s in build_transform(True, 32, aa='rand-m9').steps if isinstance(s, RandAugment))
    assert ra.ops[0].resample == Image.Resampling.BICUBIC
    assert ra.ops[0].fill == (124, 116, 104)
    ra = next(s for s in build_transform(True, 32, interpolation='random', aa='rand-m9').steps
              if isinstance(s, RandAugment))
    assert ra.ops[0].resample is None  # drawn per call between bilinear and bicubic


def test_full_crop_with_hflip_is_mirrored_resize():
    img = _photo_like(60, 45)
    tf = build_transform(True, (45, 60), scale=(1.0, 1.0), ratio=(60 / 45, 60 / 45), hflip=1.0, color_jitter=0)
    expected = build_transform(False, (45, 60), crop_pct=1.0, crop_mode='squash')(
        img.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    np.testing.assert_array_equal(tf(img), expected)


def test_random_resized_crop_box_respects_scale_ratio_and_bounds():
    random.seed(0)
    for _ in range(300):
        top, left, h, w = random_resized_crop_box(200, 100, (0.08, 1.0), (3 / 4, 4 / 3))
        assert 0 <= top <= 100 - h and 0 <= left <= 200 - w
        assert (h - 0.5) * (w - 0.5) <= 20000 and (h + 0.5) * (w + 0.5) >= 0.08 * 20000
        assert (w - 0.5) / (h + 0.5) <= 4 / 3 and (w + 0.5) / (h - 0.5) >= 3 / 4


def test_random_resized_crop_falls_back_to_clamped_centre_crop():
    # a 4:1 image cannot hold any 1:1 crop of its full area: centre crop at the max ratio
    assert random_resized_crop_box(400, 100, (1.0, 1.0), (1.0, 1.0)) == (0, 150, 100, 100)
    assert random_resized_crop_box(100, 400, (1.0, 1.0), (0.5, 2.0)) == (100, 0, 200, 100)


def test_resolve_data_cfg_merges_overrides():
    cfg = resolve_data_cfg(MODEL_CFG, input_size=256, crop_pct=None, interpolation='bilinear', aa='rand-m9')
    assert cfg == dict(input_size=(3, 256, 256), interpolation='bilinear', crop_pct=1.0, crop_mode='squash',
                       mean=IMAGENET_MEAN, std=IMAGENET_STD, aa='rand-m9')
    out = build_transform(False, **cfg)(_photo_like(30, 20))
    assert out.shape == (3, 256, 256)


def test_resolve_data_cfg_defaults_and_list_values():
    cfg = resolve_data_cfg({}, input_size=[64, 48], mean=[0.5, 0.5, 0.5], scale=[0.5, 1])
    assert cfg['input_size'] == (3, 64, 48) and cfg['crop_mode'] == 'center' and cfg['crop_pct'] == 0.875
    assert cfg['mean'] == (0.5, 0.5, 0.5) and cfg['scale'] == (0.5, 1.0)


@pytest.mark.parametrize('overrides, error', [
    (dict(crop_pcnt=0.9), KeyError),
    (dict(crop_mode='border'), ValueError),
    (dict(crop_pct=1.2), ValueError),
    (dict(interpolation='cubic'), ValueError),
    (dict(input_size=(3, 0, 4)), ValueError),
])
def test_resolve_data_cfg_rejects_bad_values(overrides, error):
    with pytest.raises(error):
        resolve_data_cfg(MODEL_CFG, **overrides)


def test_build_transform_rejects_unsupported_aa():
    with pytest.raises(ValueError, match='RandAugment'):
        build_transform(True, 32, aa='original')


def test_split_normalization_leaves_uint8_for_the_device():
    train = build_transform(True, 32, reprob=0.25)
    host, normalize, erasing = train.split_normalization()
    assert isinstance(erasing, RandomErasing) and normalize.mean == IMAGENET_MEAN
    img = Image.fromarray(np.random.RandomState(0).randint(0, 256, (40, 48, 3), np.uint8))
    out = host(img)
    assert out.dtype == np.uint8 and out.shape == (3, 32, 32)
    assert len(host.steps) == len(train.steps) - 1  # normalise + erasing became one uint8 conversion
    host, _, erasing = build_transform(False, 32).split_normalization()
    assert erasing is None and host(img).dtype == np.uint8
    assert Pipeline([ColorJitter(0.4)]).split_normalization() is None

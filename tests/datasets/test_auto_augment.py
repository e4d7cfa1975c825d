"""RandAugment: timm's op sets, magnitude-to-argument mapping, config grammar and sampling."""
import random

import numpy as np
import pytest
from PIL import Image

from datasets.auto_augment import (RAND_INCREASING_TRANSFORMS, RAND_TRANSFORMS, AugmentOp, level_to_args,
                                   rand_augment_transform)


def _image(size: int = 16) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_op_sets_match_timm():
    assert RAND_TRANSFORMS == (
        'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd', 'Color',
        'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
    assert RAND_INCREASING_TRANSFORMS == (
        'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing', 'SolarizeIncreasing',
        'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing', 'SharpnessIncreasing',
        'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel')
    assert rand_augment_transform('rand-m9-mstd0.5-inc1').op_names == list(RAND_INCREASING_TRANSFORMS)
    assert rand_augment_transform('rand-m9-mstd0.5').op_names == list(RAND_TRANSFORMS)
    assert rand_augment_transform('rand-m9-inc0').op_names == list(RAND_TRANSFORMS)


@pytest.mark.parametrize('name, expected', [
    ('AutoContrast', ()), ('Equalize', ()), ('Invert', ()),
    ('Posterize', (3,)), ('PosterizeIncreasing', (1,)),
    ('Solarize', (230,)), ('SolarizeIncreasing', (26,)), ('SolarizeAdd', (99,)),
    ('Color', (1.72,)), ('Contrast', (1.72,)), ('Brightness', (1.72,)), ('Sharpness', (1.72,)),
])
def test_unsigned_arguments_at_magnitude_9(name, expected):
    assert level_to_args(name, 9) == pytest.approx(expected)


@pytest.mark.parametrize('name, magnitude', [
    ('Rotate', 27.0), ('ShearX', 0.27), ('ShearY', 0.27), ('TranslateXRel', 0.405), ('TranslateYRel', 0.405),
])
def test_signed_arguments_at_magnitude_9(name, magnitude):
    random.seed(0)
    values = {round(level_to_args(name, 9)[0], 9) for _ in range(50)}
    assert values == {magnitude, -magnitude}


@pytest.mark.parametrize('name', ['ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing',
                                  'SharpnessIncreasing'])
def test_increasing_enhance_moves_away_from_one(name):
    random.seed(0)
    values = {round(level_to_args(name, 9)[0], 9) for _ in range(50)}
    assert values == {1.81, 0.19}
    assert level_to_args(name, 0) == (1.0,)


def test_increasing_variants_at_the_extremes():
    assert level_to_args('PosterizeIncreasing', 10) == (0,)
    assert level_to_args('SolarizeIncreasing', 10) == (0,)
    assert level_to_args('PosterizeIncreasing', 0) == (4,)
    assert level_to_args('SolarizeIncreasing', 0) == (256,)
    assert level_to_args('TranslateXRel', 10, {'translate_pct': 0.3})[0] in (0.3, -0.3)


def test_config_string_fields():
    ra = rand_augment_transform('rand-m9-mstd0.5-inc1')
    op = ra.ops[0]
    assert ra.num_layers == 2 and op.magnitude == 9 and op.prob == 0.5 and op.magnitude_std == 0.5
    ra = rand_augment_transform('rand-n3-p0.3-m7-mmax15')
    assert ra.num_layers == 3 and ra.ops[0].prob == 0.3 and ra.ops[0].magnitude_max == 15
    assert rand_augment_transform('rand-mstd101').ops[0].magnitude_std == float('inf')
    assert rand_augment_transform('rand').ops[0].magnitude == 10
    hparams = {'magnitude_std': 1.0}
    assert rand_augment_transform('rand-mstd0.5', hparams).ops[0].magnitude_std == 1.0  # hparams win
    assert hparams == {'magnitude_std': 1.0}  # not mutated


@pytest.mark.parametrize('config', ['auto-m9', 'rand-x5', 'rand-mfoo', 'rand-m9.5', 'rand-inc'])
def test_bad_config_strings(config):
    with pytest.raises(ValueError, match='RandAugment config'):
        rand_augment_transform(config)


def test_magnitude_noise_and_clipping():
    random.seed(0)
    gauss = AugmentOp('Rotate', magnitude=9, hparams={'magnitude_std': 0.5})
    samples = np.array([gauss.sample_magnitude() for _ in range(4000)])
    assert samples.max() <= 10.0 and (samples == 10.0).any()  # clipped at 10
    assert abs(np.median(samples) - 9) < 0.05 and 0.4 < np.percentile(samples, 50) - np.percentile(samples, 16) < 0.6
    uniform = AugmentOp('Rotate', magnitude=9, hparams={'magnitude_std': float('inf')})
    samples = np.array([uniform.sample_magnitude() for _ in range(4000)])
    assert samples.min() >= 0 and samples.max() <= 9 and abs(samples.mean() - 4.5) < 0.2
    wide = AugmentOp('Rotate', magnitude=12, hparams={'magnitude_std': 0.5, 'magnitude_max': 15})
    assert max(wide.sample_magnitude() for _ in range(200)) > 10


class _Recorder:
    def __init__(self, name, calls):
        self.name, self.calls = name, calls

    def __call__(self, img):
        self.calls.append(self.name)
        return img


def test_n_ops_drawn_per_image_from_the_whole_set():
    for n in (2, 3):
        ra = rand_augment_transform(f'rand-m9-n{n}-inc1')
        calls = []
        ra.ops = [_Recorder(name, calls) for name in ra.op_names]
        np.random.seed(0)
        img = _image()
        for i in range(300):
            ra(img)
            assert len(calls) == n * (i + 1)
        assert set(calls) == set(RAND_INCREASING_TRANSFORMS)


def test_each_chosen_op_applies_with_probability_p():
    img = _image(4)
    random.seed(0)
    for prob in (0.5, 0.2):
        op = AugmentOp('Invert', prob=prob)
        applied = sum(op(img) is not img for _ in range(2000))
        assert abs(applied - 2000 * prob) < 100  # > 4.5 sigma


@pytest.mark.parametrize('name', RAND_TRANSFORMS + RAND_INCREASING_TRANSFORMS)
def test_every_op_returns_same_size_rgb(name):
    random.seed(1)
    out = AugmentOp(name, prob=1.0, magnitude=10, hparams={'magnitude_std': 0.5})(_image(20))
    assert out.mode == 'RGB' and out.size == (20, 20)


def test_geometric_ops_use_given_fill_and_filter():
    white = Image.new('RGB', (20, 20), (255, 255, 255))
    op = AugmentOp('Rotate', prob=1.0, magnitude=9,
                   hparams={'img_mean': (1, 2, 3), 'interpolation': Image.Resampling.NEAREST})
    out = np.asarray(op(white))
    candidates = [np.asarray(white.rotate(angle, resample=Image.Resampling.NEAREST, fillcolor=(1, 2, 3)))
                  for angle in (27, -27)]
    assert any(np.array_equal(out, c) for c in candidates)
    assert out[0, 0].tolist() == [1, 2, 3]


def test_colour_op_values():
    img = Image.fromarray(np.array([[[0, 100, 200]]], dtype=np.uint8))
    posterize_all = AugmentOp('PosterizeIncreasing', prob=1.0, magnitude=10)
    assert np.asarray(posterize_all(img)).tolist() == [[[0, 0, 0]]]  # 0 bits kept: black, as in timm
    solarize_add = AugmentOp('SolarizeAdd', prob=1.0, magnitude=9)
    assert np.asarray(solarize_add(img)).tolist() == [[[99, 199, 200]]]  # only values below 128 move
    solarize = AugmentOp('SolarizeIncreasing', prob=1.0, magnitude=9)
    assert np.asarray(solarize(img)).tolist() == [[[0, 155, 55]]]  # threshold 26


def test_seeded_runs_repeat():
    ra = rand_augment_transform('rand-m9-mstd0.5-inc1')
    img = _image(24)

    def run(seed):
        random.seed(seed)
        np.random.seed(seed)
        return [np.asarray(ra(img)) for _ in range(10)]

    assert all(np.array_equal(a, b) for a, b in zip(run(5), run(5)))

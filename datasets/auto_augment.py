"""RandAugment (Cubuk et al. 2019, https://arxiv.org/abs/1909.13719) with timm's op set, magnitude
mapping and config grammar ('rand-m9-mstd0.5-inc1'), on PIL images.

Randomness: the ops chosen per image come from `np.random`; the apply/skip coin, magnitude noise,
sign flips and random resampling filter come from `random`, in the same order as timm.
"""
import random
import re
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

_LEVEL_DENOM = 10.0  # 'm10' is the strongest setting of every op argument
_DEFAULT_FILL = (128, 128, 128)
_RANDOM_RESAMPLE = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)


def _affine(img: Image.Image, matrix: Tuple[float, ...], fill, resample) -> Image.Image:
    return img.transform(img.size, Image.Transform.AFFINE, matrix, resample=resample, fillcolor=fill)


def rotate(img: Image.Image, degrees: float, fill, resample) -> Image.Image:
    return img.rotate(degrees, resample=resample, fillcolor=fill)


def shear_x(img: Image.Image, factor: float, fill, resample) -> Image.Image:
    return _affine(img, (1, factor, 0, 0, 1, 0), fill, resample)


def shear_y(img: Image.Image, factor: float, fill, resample) -> Image.Image:
    return _affine(img, (1, 0, 0, factor, 1, 0), fill, resample)


def translate_x_rel(img: Image.Image, fraction: float, fill, resample) -> Image.Image:
    return _affine(img, (1, 0, fraction * img.size[0], 0, 1, 0), fill, resample)


def translate_y_rel(img: Image.Image, fraction: float, fill, resample) -> Image.Image:
    return _affine(img, (1, 0, 0, 0, 1, fraction * img.size[1]), fill, resample)


def solarize_add(img: Image.Image, add: int, threshold: int = 128) -> Image.Image:
    """Brighten pixels below `threshold` by `add` (saturating), leave the rest."""
    lut = [min(255, v + add) if v < threshold else v for v in range(256)]
    return img.point(lut * len(img.getbands()))


def posterize(img: Image.Image, bits: int) -> Image.Image:
    """Keep the `bits` high bits of each value; 0 bits gives black, as Pillow < 10 (and so timm) did,
    while newer Pillow's ImageOps.posterize rejects it."""
    if bits >= 8:
        return img
    mask = ~(2 ** (8 - bits) - 1) & 0xFF
    return img.point([v & mask for v in range(256)] * len(img.getbands()))


def _enhancer(enhance_cls) -> Callable[[Image.Image, float], Image.Image]:
    return lambda img, factor: enhance_cls(img).enhance(factor)


def _negate_half(value: float) -> float:
    return -value if random.random() > 0.5 else value


def _rotate_arg(level: float, _hparams: dict) -> tuple:
    return _negate_half(level / _LEVEL_DENOM * 30.0),  # up to +-30 degrees


def _enhance_arg(level: float, _hparams: dict) -> tuple:
    return level / _LEVEL_DENOM * 1.8 + 0.1,  # [0.1, 1.9]; 1.0 (no change) sits mid-range


def _enhance_increasing_arg(level: float, _hparams: dict) -> tuple:
    # the distance from the no-change factor 1.0 grows with the level
    return max(0.1, 1.0 + _negate_half(level / _LEVEL_DENOM * 0.9)),


def _shear_arg(level: float, _hparams: dict) -> tuple:
    return _negate_half(level / _LEVEL_DENOM * 0.3),


def _translate_rel_arg(level: float, hparams: dict) -> tuple:
    return _negate_half(level / _LEVEL_DENOM * hparams.get('translate_pct', 0.45)),


def _posterize_arg(level: float, _hparams: dict) -> tuple:
    return int(level / _LEVEL_DENOM * 4),  # bits kept, 0..4: weaker as the level grows


def _posterize_increasing_arg(level: float, hparams: dict) -> tuple:
    return 4 - _posterize_arg(level, hparams)[0],


def _solarize_arg(level: float, _hparams: dict) -> tuple:
    return min(256, int(level / _LEVEL_DENOM * 256)),  # threshold: weaker as the level grows


def _solarize_increasing_arg(level: float, hparams: dict) -> tuple:
    return 256 - _solarize_arg(level, hparams)[0],


def _solarize_add_arg(level: float, _hparams: dict) -> tuple:
    return min(128, int(level / _LEVEL_DENOM * 110)),


class _OpSpec(NamedTuple):
    image_fn: Callable
    level_fn: Optional[Callable[[float, dict], tuple]]
    geometric: bool = False  # geometric ops also take the fill colour and resampling filter


_OPS: Dict[str, _OpSpec] = {
    'AutoContrast': _OpSpec(ImageOps.autocontrast, None),
    'Equalize': _OpSpec(ImageOps.equalize, None),
    'Invert': _OpSpec(ImageOps.invert, None),
    'Rotate': _OpSpec(rotate, _rotate_arg, geometric=True),
    'Posterize': _OpSpec(posterize, _posterize_arg),
    'PosterizeIncreasing': _OpSpec(posterize, _posterize_increasing_arg),
    'Solarize': _OpSpec(ImageOps.solarize, _solarize_arg),
    'SolarizeIncreasing': _OpSpec(ImageOps.solarize, _solarize_increasing_arg),
    'SolarizeAdd': _OpSpec(solarize_add, _solarize_add_arg),
    'Color': _OpSpec(_enhancer(ImageEnhance.Color), _enhance_arg),
    'ColorIncreasing': _OpSpec(_enhancer(ImageEnhance.Color), _enhance_increasing_arg),
    'Contrast': _OpSpec(_enhancer(ImageEnhance.Contrast), _enhance_arg),
    'ContrastIncreasing': _OpSpec(_enhancer(ImageEnhance.Contrast), _enhance_increasing_arg),
    'Brightness': _OpSpec(_enhancer(ImageEnhance.Brightness), _enhance_arg),
    'BrightnessIncreasing': _OpSpec(_enhancer(ImageEnhance.Brightness), _enhance_increasing_arg),
    'Sharpness': _OpSpec(_enhancer(ImageEnhance.Sharpness), _enhance_arg),
    'SharpnessIncreasing': _OpSpec(_enhancer(ImageEnhance.Sharpness), _enhance_increasing_arg),
    'ShearX': _OpSpec(shear_x, _shear_arg, geometric=True),
    'ShearY': _OpSpec(shear_y, _shear_arg, geometric=True),
    'TranslateXRel': _OpSpec(translate_x_rel, _translate_rel_arg, geometric=True),
    'TranslateYRel': _OpSpec(translate_y_rel, _translate_rel_arg, geometric=True),
}

RAND_TRANSFORMS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'Posterize', 'Solarize', 'SolarizeAdd',
    'Color', 'Contrast', 'Brightness', 'Sharpness', 'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel',
)
# 'inc1': the same ops, with arguments whose severity grows with the magnitude
RAND_INCREASING_TRANSFORMS = (
    'AutoContrast', 'Equalize', 'Invert', 'Rotate', 'PosterizeIncreasing', 'SolarizeIncreasing',
    'SolarizeAdd', 'ColorIncreasing', 'ContrastIncreasing', 'BrightnessIncreasing', 'SharpnessIncreasing',
    'ShearX', 'ShearY', 'TranslateXRel', 'TranslateYRel',
)


def level_to_args(name: str, magnitude: float, hparams: Optional[dict] = None) -> tuple:
    """The arguments op `name` gets at `magnitude` (0..10 scale); signed ops flip sign half the time."""
    level_fn = _OPS[name].level_fn
    return level_fn(magnitude, hparams or {}) if level_fn else ()


class AugmentOp:
    """One RandAugment op: applied with probability `prob`, magnitude optionally jittered.

    hparams: 'img_mean' fill colour for geometric ops (default grey 128), 'interpolation' a PIL
    resampling filter (default: bilinear or bicubic at random per call), 'magnitude_std' (gaussian
    noise on the magnitude; inf means uniform in [0, magnitude]), 'magnitude_max' (clip bound,
    default 10), 'translate_pct' (default 0.45).
    """

    def __init__(self, name: str, prob: float = 0.5, magnitude: float = 10, hparams: Optional[dict] = None):
        if name not in _OPS:
            raise KeyError(f"RandAugment: unknown op '{name}'; known: {', '.join(_OPS)}")
        hparams = dict(hparams or {})
        self.name = name
        self.spec = _OPS[name]
        self.prob = prob
        self.magnitude = magnitude
        self.hparams = hparams
        self.fill = tuple(hparams.get('img_mean', _DEFAULT_FILL))
        self.resample = hparams.get('interpolation')
        self.magnitude_std = hparams.get('magnitude_std', 0.0)
        self.magnitude_max = hparams.get('magnitude_max') or _LEVEL_DENOM

    def sample_magnitude(self) -> float:
        magnitude = self.magnitude
        if self.magnitude_std == float('inf'):
            magnitude = random.uniform(0, magnitude)
        elif self.magnitude_std > 0:
            magnitude = random.gauss(magnitude, self.magnitude_std)
        return max(0.0, min(magnitude, self.magnitude_max))

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.prob < 1.0 and random.random() > self.prob:
            return img
        args = level_to_args(self.name, self.sample_magnitude(), self.hparams)
        if not self.spec.geometric:
            return self.spec.image_fn(img, *args)
        resample = self.resample if self.resample is not None else random.choice(_RANDOM_RESAMPLE)
        return self.spec.image_fn(img, *args, fill=self.fill, resample=resample)

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.name}, p={self.prob}, m={self.magnitude}, mstd={self.magnitude_std})'


class RandAugment:
    """Apply `num_layers` ops drawn uniformly with replacement from `ops`."""

    def __init__(self, ops: List[AugmentOp], num_layers: int = 2):
        self.ops = ops
        self.num_layers = num_layers

    @property
    def op_names(self) -> List[str]:
        return [op.name for op in self.ops]

    def __call__(self, img: Image.Image) -> Image.Image:
        for index in np.random.choice(len(self.ops), self.num_layers, replace=True):
            img = self.ops[index](img)
        return img

    def __repr__(self) -> str:
        op = self.ops[0]
        return (f'{type(self).__name__}(n={self.num_layers}, p={op.prob}, m={op.magnitude}, '
                f'mstd={op.magnitude_std}, ops={self.op_names})')


def _section_value(config_str: str, section: str, value: str, kind: type):
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"RandAugment config '{config_str}': section '{section}' needs a "
                         f"{kind.__name__}, got '{value}'") from None


def rand_augment_transform(config_str: str, hparams: Optional[dict] = None) -> RandAugment:
    """RandAugment from a timm config string 'rand-<section>-...'; sections in any order:
    m<int> magnitude 0..10 (default 10), n<int> ops per image (default 2), p<float> chance each
    chosen op is applied (default 0.5), mstd<float> magnitude noise std (> 100: uniform in
    [0, m]), mmax<int> magnitude clip bound (default 10), inc<0|1> severity-increasing op set.
    Values already in `hparams` (magnitude_std, magnitude_max) win over the string, as in timm.
    """
    hparams = dict(hparams or {})
    magnitude, num_layers, prob, increasing = _LEVEL_DENOM, 2, 0.5, False
    head, *sections = config_str.split('-')
    if head != 'rand':
        raise ValueError(f"RandAugment config '{config_str}': expected it to start with 'rand'")
    for section in sections:
        match = re.fullmatch(r'([a-z]+)(\d.*)', section)
        key, value = match.groups() if match else (section, '')
        if key == 'm':
            magnitude = _section_value(config_str, section, value, int)
        elif key == 'n':
            num_layers = _section_value(config_str, section, value, int)
        elif key == 'p':
            prob = _section_value(config_str, section, value, float)
        elif key == 'mstd':
            mstd = _section_value(config_str, section, value, float)
            hparams.setdefault('magnitude_std', float('inf') if mstd > 100 else mstd)
        elif key == 'mmax':
            hparams.setdefault('magnitude_max', _section_value(config_str, section, value, int))
        elif key == 'inc':
            # timm reads bool('0') as True, so its 'inc0' also selects the increasing set; we do not
            increasing = _section_value(config_str, section, value, int) != 0
        else:
            raise ValueError(f"RandAugment config '{config_str}': unknown section '{section}' "
                             f"(known: m, n, p, mstd, mmax, inc)")
    names = RAND_INCREASING_TRANSFORMS if increasing else RAND_TRANSFORMS
    return RandAugment([AugmentOp(name, prob, magnitude, hparams) for name in names], num_layers)

"""Image transforms for CvT: timm's ImageNet train recipe (used by microsoft/CvT) and the two eval
protocols (resize shorter side + centre crop, or squash), in PIL + numpy; no paddle, no torch.

Every transform maps a PIL image (or an HWC uint8 array) to a float32 CHW array normalised by
mean/std; `Pipeline.split_normalization` gives the part before normalisation (uint8 CHW out), so
that a loader can normalise on the device. Randomness comes only from `random` and `np.random`,
which the dataset seeds per sample.
"""
import math
import random
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageEnhance

from datasets.auto_augment import rand_augment_transform
from datasets.random_erasing import RandomErasing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_PIL_INTERPOLATION = {
    'nearest': Image.Resampling.NEAREST,
    'bilinear': Image.Resampling.BILINEAR,
    'bicubic': Image.Resampling.BICUBIC,
    'box': Image.Resampling.BOX,
    'hamming': Image.Resampling.HAMMING,
    'lanczos': Image.Resampling.LANCZOS,
}
_RANDOM_INTERPOLATION = ('bilinear', 'bicubic')
_CROP_MODES = ('center', 'squash')
# the preprocessing protocol a model variant carries in its default cfg
_PROTOCOL_DEFAULTS = dict(input_size=(3, 224, 224), interpolation='bicubic', crop_pct=0.875,
                          crop_mode='center', mean=IMAGENET_MEAN, std=IMAGENET_STD)
# train-time options a user may add on top (the keyword arguments of build_transform)
_AUGMENT_KEYS = ('aa', 'reprob', 'remode', 'recount', 'hflip', 'vflip', 'color_jitter', 'scale', 'ratio')

ImageLike = Union[Image.Image, np.ndarray]
Size = Union[int, Sequence[int]]


def pil_interpolation(name: str) -> Image.Resampling:
    if name not in _PIL_INTERPOLATION:
        raise ValueError(f"interpolation must be one of {', '.join(_PIL_INTERPOLATION)}, got '{name}'")
    return _PIL_INTERPOLATION[name]


def _check_interpolation(name: str) -> None:
    if name != 'random' and name not in _PIL_INTERPOLATION:
        raise ValueError(f"interpolation must be 'random' or one of {', '.join(_PIL_INTERPOLATION)}, got '{name}'")


def to_hw(input_size: Size) -> Tuple[int, int]:
    """(H, W) from an int, (H, W) or (C, H, W)."""
    if isinstance(input_size, (int, np.integer)):
        return int(input_size), int(input_size)
    size = tuple(int(s) for s in input_size)
    if len(size) not in (2, 3) or min(size) <= 0:
        raise ValueError(f'input_size must be an int, (H, W) or (C, H, W), got {input_size}')
    return size[-2:]


def to_rgb(img: ImageLike) -> Image.Image:
    """Any PIL mode (or an HW / HWC uint8 array) as an RGB image.

    Alpha is dropped, not composited, as the torchvision/timm loaders' `convert('RGB')` does, so
    pixels match the reference pipelines. 16-bit greyscale is scaled to 8 bits first, because
    Pillow's convert would clip it to 255.
    """
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img)
    if img.mode == 'RGB':
        return img
    if img.mode.startswith('I;16'):
        grey = np.asarray(img, dtype=np.float64) * (255.0 / 65535.0)
        img = Image.fromarray(np.rint(grey).astype(np.uint8))
    return img.convert('RGB')


def shorter_side_size(width: int, height: int, size: int) -> Tuple[int, int]:
    """torchvision Resize(int) output (W, H): shorter side to `size`, longer side truncated."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_crop(img: Image.Image, height: int, width: int) -> Image.Image:
    """Centre crop with torchvision's rounding of the offsets."""
    if height > img.height or width > img.width:
        raise ValueError(f'centre crop {height}x{width} is larger than the {img.height}x{img.width} image')
    top = int(round((img.height - height) / 2.0))
    left = int(round((img.width - width) / 2.0))
    return img.crop((left, top, left + width, top + height))


class ResizeCenterCrop:
    """Eval resize + crop. 'center': scale to floor(size / crop_pct) keeping the aspect ratio (for a
    square size: the shorter side, torchvision rule), then centre crop. 'squash': resize both
    edges to floor(size / crop_pct), then centre crop; with crop_pct 1 that is a plain resize."""

    def __init__(self, size: Size, crop_pct: float, crop_mode: str, interpolation: str):
        self.size = to_hw(size)
        self.scale_size = tuple(math.floor(s / crop_pct) for s in self.size)
        self.crop_mode = crop_mode
        # 'random' only makes sense for training; timm's no-aug path falls back to bilinear too
        self.resample = pil_interpolation('bilinear' if interpolation == 'random' else interpolation)

    def _resized_wh(self, width: int, height: int) -> Tuple[int, int]:
        scale_h, scale_w = self.scale_size
        if self.crop_mode == 'squash':
            return scale_w, scale_h
        if scale_h == scale_w:
            return shorter_side_size(width, height, scale_h)
        ratio = max(scale_h / height, scale_w / width)  # timm ResizeKeepRatio: cover both target edges
        return round(width * ratio), round(height * ratio)

    def __call__(self, img: Image.Image) -> Image.Image:
        new_size = self._resized_wh(img.width, img.height)
        if new_size != img.size:
            img = img.resize(new_size, self.resample)
        return center_crop(img, *self.size)

    def __repr__(self) -> str:
        return f'{type(self).__name__}(size={self.size}, scale_size={self.scale_size}, mode={self.crop_mode})'


def random_resized_crop_box(width: int, height: int, scale: Sequence[float],
                            ratio: Sequence[float]) -> Tuple[int, int, int, int]:
    """timm/torchvision RandomResizedCrop parameters (top, left, crop_h, crop_w): up to 10 draws of
    area fraction U(scale) and log-uniform aspect ratio, then a centre crop clamped to `ratio`."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = random.uniform(*scale) * area
        aspect = math.exp(random.uniform(*log_ratio))
        crop_w = int(round(math.sqrt(target_area * aspect)))
        crop_h = int(round(math.sqrt(target_area / aspect)))
        if crop_w <= width and crop_h <= height:
            return random.randint(0, height - crop_h), random.randint(0, width - crop_w), crop_h, crop_w
    in_ratio = width / height
    if in_ratio < min(ratio):
        crop_w, crop_h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        crop_w, crop_h = int(round(height * max(ratio))), height
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


class RandomResizedCrop:
    """Random crop (timm semantics) resized to `size`; 'random' interpolation picks bilinear or
    bicubic per image."""

    def __init__(self, size: Size, scale: Sequence[float], ratio: Sequence[float], interpolation: str):
        if not (0 < scale[0] <= scale[1] and 0 < ratio[0] <= ratio[1]):
            raise ValueError(f'scale and ratio must be increasing positive (min, max) pairs, got {scale}, {ratio}')
        self.height, self.width = to_hw(size)
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.interpolation = interpolation
        _check_interpolation(interpolation)

    def __call__(self, img: Image.Image) -> Image.Image:
        top, left, crop_h, crop_w = random_resized_crop_box(img.width, img.height, self.scale, self.ratio)
        name = random.choice(_RANDOM_INTERPOLATION) if self.interpolation == 'random' else self.interpolation
        crop = img.crop((left, top, left + crop_w, top + crop_h))
        return crop.resize((self.width, self.height), pil_interpolation(name))

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(size=({self.height}, {self.width}), scale={self.scale}, '
                f'ratio={tuple(round(r, 4) for r in self.ratio)}, interpolation={self.interpolation})')


class RandomFlip:
    """Flip left-right (or top-bottom) with probability p."""

    def __init__(self, p: float, vertical: bool = False):
        self.p = p
        self.method = Image.Transpose.FLIP_TOP_BOTTOM if vertical else Image.Transpose.FLIP_LEFT_RIGHT

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.transpose(self.method) if random.random() < self.p else img

    def __repr__(self) -> str:
        return f'{type(self).__name__}(p={self.p}, {self.method.name})'


class ColorJitter:
    """torchvision ColorJitter without hue: brightness, contrast and saturation factors drawn from
    U(max(0, 1 - s), 1 + s), applied in random order."""

    _ENHANCERS = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)

    def __init__(self, strength: Union[float, Sequence[float]]):
        strengths = (float(strength),) * 3 if np.isscalar(strength) else tuple(float(s) for s in strength)
        if len(strengths) != 3 or min(strengths) < 0:
            raise ValueError(f'color_jitter must be a number or (brightness, contrast, saturation) >= 0, '
                             f'got {strength}')
        self.strengths = strengths

    def __call__(self, img: Image.Image) -> Image.Image:
        order = random.sample(range(3), 3)
        factors = [random.uniform(max(0.0, 1 - s), 1 + s) for s in self.strengths]
        for i in order:
            if self.strengths[i] > 0:
                img = self._ENHANCERS[i](img).enhance(factors[i])
        return img

    def __repr__(self) -> str:
        return f'{type(self).__name__}(brightness, contrast, saturation={self.strengths})'


class ToNormalizedArray:
    """RGB PIL image -> float32 CHW array (x / 255 - mean) / std.

    A 256-entry table per channel, computed in float64, turns the conversion into one gather: each
    output value is the correctly rounded float32 of the exact formula.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        mean = np.asarray(mean, np.float64).reshape(3, 1)
        std = np.asarray(std, np.float64).reshape(3, 1)
        if mean.size != 3 or std.size != 3 or np.any(std <= 0):
            raise ValueError(f'mean and std must have 3 values with std > 0, got {mean.ravel()}, {std.ravel()}')
        self.mean, self.std = tuple(mean.ravel()), tuple(std.ravel())
        self.table = ((np.arange(256) / 255.0 - mean) / std).astype(np.float32)  # (3, 256)

    def __call__(self, img: Image.Image) -> np.ndarray:
        chw = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
        out = np.empty(chw.shape, np.float32)
        for channel in range(3):
            # uint8 indices are always in range; mode='clip' skips numpy's buffered bounds check
            np.take(self.table[channel], chw[channel], out=out[channel], mode='clip')
        return out

    def __repr__(self) -> str:
        return f'{type(self).__name__}()'


class ToUint8Array:
    """RGB PIL image -> uint8 CHW array: a quarter of the float32 bytes to send to the device."""

    def __call__(self, img: Image.Image) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1))

    def __repr__(self) -> str:
        return f'{type(self).__name__}()'


class Pipeline:
    """Apply `steps` in order, starting with the RGB conversion."""

    def __init__(self, steps: List[Callable]):
        self.steps = steps

    def split_normalization(self) -> Optional[Tuple['Pipeline', ToNormalizedArray, Optional[RandomErasing]]]:
        """(the steps before normalisation, ending in uint8 CHW; the normalisation; the RandomErasing
        after it or None), or None when the pipeline does not end with ToNormalizedArray[, RandomErasing]."""
        tail = self.steps[-2:] if self.steps and isinstance(self.steps[-1], RandomErasing) else self.steps[-1:]
        if not tail or not isinstance(tail[0], ToNormalizedArray):
            return None
        erasing = tail[1] if len(tail) == 2 else None
        return Pipeline(self.steps[:-len(tail)] + [ToUint8Array()]), tail[0], erasing

    def __call__(self, img: ImageLike) -> np.ndarray:
        x = to_rgb(img)
        for step in self.steps:
            x = step(x)
        return x

    def __repr__(self) -> str:
        return f'{type(self).__name__}(\n  ' + ',\n  '.join(repr(step) for step in self.steps) + ')'


def resolve_data_cfg(model_cfg: dict, **overrides) -> dict:
    """A model variant's preprocessing protocol (input_size, interpolation, crop_pct, crop_mode,
    mean, std) with user overrides applied; None overrides are ignored. Train options
    (aa, reprob, remode, recount, hflip, vflip, color_jitter, scale, ratio) may be overridden too,
    so that `build_transform(is_train, **data_cfg)` builds the pipeline. input_size comes back as
    (3, H, W), mean/std/scale/ratio as tuples."""
    unknown = sorted(set(overrides) - set(_PROTOCOL_DEFAULTS) - set(_AUGMENT_KEYS))
    if unknown:
        raise KeyError(f"data cfg: unknown key '{unknown[0]}'; expected one of "
                       f"{', '.join(list(_PROTOCOL_DEFAULTS) + list(_AUGMENT_KEYS))}")
    cfg = {key: model_cfg.get(key, default) for key, default in _PROTOCOL_DEFAULTS.items()}
    cfg.update({key: value for key, value in overrides.items() if value is not None})
    cfg['input_size'] = (3, *to_hw(cfg['input_size']))
    for key in ('mean', 'std', 'scale', 'ratio'):
        if key in cfg:
            cfg[key] = tuple(float(v) for v in cfg[key])
    _check_protocol(cfg['crop_pct'], cfg['crop_mode'], cfg['interpolation'])
    return cfg


def _check_protocol(crop_pct: float, crop_mode: str, interpolation: str) -> None:
    if not 0 < crop_pct <= 1:
        raise ValueError(f'data cfg: crop_pct must be in (0, 1], got {crop_pct}')
    if crop_mode not in _CROP_MODES:
        raise ValueError(f"data cfg: crop_mode must be one of {_CROP_MODES}, got '{crop_mode}'")
    _check_interpolation(interpolation)


def _train_steps(size: Tuple[int, int], interpolation: str, mean, aa: Optional[str], hflip: float,
                 vflip: float, color_jitter, scale, ratio) -> List[Callable]:
    steps: List[Callable] = [RandomResizedCrop(size, scale, ratio, interpolation)]
    if hflip > 0:
        steps.append(RandomFlip(hflip))
    if vflip > 0:
        steps.append(RandomFlip(vflip, vertical=True))
    if aa and aa != 'none':
        if not aa.startswith('rand'):
            raise ValueError(f"aa: only RandAugment ('rand-...') is supported, got '{aa}'")
        hparams = dict(translate_pct=0.45, img_mean=tuple(min(255, round(255 * m)) for m in mean))
        if interpolation != 'random':
            hparams['interpolation'] = pil_interpolation(interpolation)  # timm: RandAugment follows the crop
        steps.append(rand_augment_transform(aa, hparams))
    elif color_jitter:
        # timm turns colour jitter off when an auto-augment policy is on
        steps.append(ColorJitter(color_jitter))
    return steps


def build_transform(is_train: bool, input_size: Size, *, interpolation: str = 'bicubic',
                    crop_pct: float = 0.875, crop_mode: str = 'center',
                    mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                    aa: Optional[str] = None, reprob: float = 0.0, remode: str = 'pixel', recount: int = 1,
                    hflip: float = 0.5, vflip: float = 0.0, color_jitter: Union[float, Sequence[float]] = 0.4,
                    scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                    ) -> Callable[[ImageLike], np.ndarray]:
    """Image (any PIL mode, or HWC uint8) -> normalised float32 CHW array.

    Train (timm create_transform, as in microsoft/CvT): RandomResizedCrop, flips, RandAugment when
    `aa` is 'rand-...' else ColorJitter, normalise, RandomErasing(reprob, remode, 1..recount boxes).
    Eval: see ResizeCenterCrop; `crop_pct`/`crop_mode` are eval-only, the train options train-only.
    """
    size = to_hw(input_size)
    _check_protocol(crop_pct, crop_mode, interpolation)
    if is_train:
        steps = _train_steps(size, interpolation, mean, aa, hflip, vflip, color_jitter, scale, ratio)
    else:
        steps = [ResizeCenterCrop(size, crop_pct, crop_mode, interpolation)]
    steps.append(ToNormalizedArray(mean, std))
    if is_train and reprob > 0:
        steps.append(RandomErasing(reprob, mode=remode, max_count=recount))
    return Pipeline(steps)

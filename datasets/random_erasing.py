"""Random Erasing (Zhong et al. 2017, https://arxiv.org/abs/1708.04896) on normalised CHW arrays, timm semantics."""
import math
import random
from typing import List, Optional, Tuple

import numpy as np

_MODES = ('const', 'rand', 'pixel')
_ATTEMPTS = 10


class RandomErasing:
    """Erase up to `max_count` random boxes of a normalised CHW (or NCHW) float array, in place.

    Applied after normalisation, so the fill is drawn in normalised units: 'pixel' fills every
    element with N(0, 1) noise, 'rand' fills each channel of a box with one N(0, 1) value, 'const'
    fills zeros (the dataset mean). With probability `probability` an image gets a box count drawn
    from [min_count, max_count]; each box covers U(min_area, max_area) / count of the image with a
    log-uniform aspect ratio in [min_aspect, max_aspect], and a box that does not fit after 10
    draws is skipped, as timm does.
    """

    def __init__(self, probability: float = 0.5, mode: str = 'pixel', min_area: float = 0.02,
                 max_area: float = 1 / 3, min_aspect: float = 0.3, max_aspect: Optional[float] = None,
                 min_count: int = 1, max_count: Optional[int] = None):
        if mode not in _MODES:
            raise ValueError(f"random erasing: mode must be one of {_MODES}, got '{mode}'")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f'random erasing: probability must be in [0, 1], got {probability}')
        max_count = max_count or min_count
        if not 1 <= min_count <= max_count:
            raise ValueError(f'random erasing: need 1 <= min_count <= max_count, got {min_count}, {max_count}')
        self.probability = probability
        self.mode = mode
        self.min_area = min_area
        self.max_area = max_area
        self.log_aspect = (math.log(min_aspect), math.log(max_aspect or 1 / min_aspect))
        self.min_count = min_count
        self.max_count = max_count

    def sample_boxes(self, height: int, width: int, rng=random) -> List[Tuple[int, int, int, int]]:
        """Draw the (top, left, box_h, box_w) boxes for one image that is erased.

        `rng`: the `random` module (the worker-seeded stream) or a `random.Random`.
        """
        count = self.min_count if self.min_count == self.max_count else rng.randint(self.min_count, self.max_count)
        boxes = []
        for _ in range(count):
            for _ in range(_ATTEMPTS):
                target_area = rng.uniform(self.min_area, self.max_area) * height * width / count
                aspect = math.exp(rng.uniform(*self.log_aspect))
                box_h = int(round(math.sqrt(target_area * aspect)))
                box_w = int(round(math.sqrt(target_area / aspect)))
                if box_h < height and box_w < width:
                    boxes.append((rng.randint(0, height - box_h), rng.randint(0, width - box_w), box_h, box_w))
                    break
        return boxes

    def draw(self, height: int, width: int, rng=random) -> List[Tuple[int, int, int, int]]:
        """The boxes one image gets: none with probability 1 - `probability`."""
        return [] if rng.random() > self.probability else self.sample_boxes(height, width, rng)

    def _fill(self, channels: int, box_h: int, box_w: int, dtype) -> np.ndarray:
        if self.mode == 'pixel':
            return np.random.standard_normal((channels, box_h, box_w)).astype(dtype)
        if self.mode == 'rand':
            return np.random.standard_normal((channels, 1, 1)).astype(dtype)
        return np.zeros((channels, 1, 1), dtype)

    def _erase(self, img: np.ndarray) -> None:
        channels, height, width = img.shape
        for top, left, box_h, box_w in self.draw(height, width):
            img[:, top:top + box_h, left:left + box_w] = self._fill(channels, box_h, box_w, img.dtype)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.ndim == 3:
            self._erase(x)
        elif x.ndim == 4:
            for img in x:
                self._erase(img)
        else:
            raise ValueError(f'random erasing: expected a CHW or NCHW array, got shape {x.shape}')
        return x

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(p={self.probability}, mode={self.mode}, '
                f'area=({self.min_area}, {self.max_area:.4g}), count=({self.min_count}, {self.max_count}))')

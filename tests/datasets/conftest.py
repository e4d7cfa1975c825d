"""Fixtures for the data tests: a tiny ImageNet-layout folder with mixed extensions and modes."""
import random

import numpy as np
import pytest
from PIL import Image

# class -> files; mixed-case extensions, a grayscale JPEG, a palette PNG and a nested folder.
TINY_LAYOUT = {
    'n01': ['a.JPEG', 'b.jpg', 'c.png', 'sub/d.JPG'],
    'n02': ['a.jpeg', 'b_gray.jpg', 'c.PNG', 'd.bmp'],
    'n03': ['a.webp', 'b.JPEG', 'c_palette.png', 'd.tif'],
}


def write_image(path, seed, size=(40, 48)):
    """A small random image; '_gray' / '_palette' in the name select mode L / P."""
    rng = np.random.RandomState(seed)
    img = Image.fromarray(rng.randint(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    if '_gray' in path.name:
        img = img.convert('L')
    elif '_palette' in path.name:
        img = img.convert('P')
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def write_imagefolder(root, splits=('train', 'val')):
    for split in splits:
        for c, (cls, files) in enumerate(sorted(TINY_LAYOUT.items())):
            for f, name in enumerate(files):
                write_image(root / split / cls / name, seed=100 * c + f)
    return root


@pytest.fixture
def image_writer():
    """`write_image(path, seed, size=(40, 48))`."""
    return write_image


@pytest.fixture
def tiny_imagefolder(tmp_path):
    """`tmp_path/data` with train/ and val/, 3 classes x 4 images each."""
    return write_imagefolder(tmp_path / 'data')


def _noisy(img):
    arr = np.asarray(img.resize((32, 32)), dtype=np.float32).transpose(2, 0, 1) / 255.0
    return arr + np.float32(random.random()) + np.float32(np.random.rand())


@pytest.fixture
def noisy_transform():
    """PIL -> 32x32 float32 CHW, plus one draw from `random` and one from `np.random` (shows the seeding)."""
    return _noisy

"""A small 'your own data' dataset for fine-tuning tests: circles, squares and triangles drawn with PIL.

Each image is one dark shape of random size, position and colour on white, in named class folders
(`train/circle/000.png` ...), as a user's own folders would be.
"""
import os

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ('circle', 'square', 'triangle')


def _draw(kind: str, size: int, rng: np.random.RandomState) -> Image.Image:
    img = Image.new('RGB', (size, size), (255, 255, 255))
    fill = rng.randint(0, 128, 3)  # a dark colour on white
    side = rng.uniform(0.5, 0.75) * size
    # Inside the central 87.5%, which the eval centre crop keeps: a corner cut off would change the class.
    margin = size / 16
    left, top = rng.uniform(margin, size - margin - side, 2)
    box = [left, top, left + side, top + side]
    draw = ImageDraw.Draw(img)
    colour = tuple(int(c) for c in fill)
    if kind == 'circle':
        draw.ellipse(box, fill=colour)
    elif kind == 'square':
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(left + side / 2, top), (left, top + side), (left + side, top + side)], fill=colour)
    return img


def write_shapes_dataset(root: str, *, train_per_class: int = 40, val_per_class: int = 15, size: int = 64,
                         seed: int = 0) -> str:
    """Write ROOT/{train,val}/{circle,square,triangle}/NNN.png and return ROOT."""
    rng = np.random.RandomState(seed)
    for split, count in (('train', train_per_class), ('val', val_per_class)):
        for kind in SHAPES:
            folder = os.path.join(root, split, kind)
            os.makedirs(folder, exist_ok=True)
            for i in range(count):
                _draw(kind, size, rng).save(os.path.join(folder, f'{i:03d}.png'))
    return root

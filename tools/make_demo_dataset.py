"""Write scikit-learn's bundled handwritten digits as an ImageNet-style dataset for demos and tests.

Source: `sklearn.datasets.load_digits()` (1,797 8x8 grey images of the digits 0-9, the UCI "optdigits"
test set, shipped inside the scikit-learn wheel, BSD-3 package licence; the data is CC BY 4.0).
Real handwriting, ten balanced classes, no download: a small task on which a tiny CvT must learn.

Layout written (the same as ImageNet in folder and list form):
    OUT/train/digit_<k>/<n>.png   OUT/val/digit_<k>/<n>.png
    OUT/train_list.txt  OUT/val_list.txt  (`train/digit_3/0007.png 3` per line)
    OUT/labels.txt                        (`3 three` per line)
"""
import _bootstrap  # noqa: F401  (first: repo root on sys.path, then utils.env)

import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from cli import run_main, script_parser
from utils.fileio import atomic_write

NAMES = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')
DONE_MARKER = '.complete'


def load_digits_arrays():
    """(images uint8 (N, 8, 8) scaled to 0-255, labels int (N,)) from scikit-learn's bundled copy."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ValueError('the demo dataset needs scikit-learn: pip install scikit-learn') from e
    digits = load_digits()
    images = np.clip(digits.images * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    return images, digits.target.astype(np.int64)


def write_digits_dataset(out_dir: str, *, image_size: int = 32, val_fraction: float = 0.2, seed: int = 0,
                         num_classes: int = 10, per_class: Optional[int] = None, force: bool = False) -> dict:
    """Write the dataset (see module docstring); returns counts. Re-running on a complete folder is a no-op."""
    marker = os.path.join(out_dir, DONE_MARKER)
    if os.path.exists(marker) and not force:
        return _counts(out_dir)
    images, labels = load_digits_arrays()
    rng = np.random.RandomState(seed)
    lists = {'train': [], 'val': []}
    for label in range(num_classes):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        if per_class:
            idx = idx[:per_class]
        n_val = max(1, int(round(len(idx) * val_fraction)))
        for split, split_idx in (('val', idx[:n_val]), ('train', idx[n_val:])):
            folder = os.path.join(out_dir, split, f'digit_{label}')
            os.makedirs(folder, exist_ok=True)
            for i in split_idx:
                rel = f'{split}/digit_{label}/{i:04d}.png'
                img = Image.fromarray(images[i]).resize((image_size, image_size), Image.BICUBIC)
                img.save(os.path.join(out_dir, rel))
                lists[split].append(f'{rel} {label}')
    for split, lines in lists.items():
        _write_lines(os.path.join(out_dir, f'{split}_list.txt'), lines)
    _write_lines(os.path.join(out_dir, 'labels.txt'), [f'{k} {NAMES[k]}' for k in range(num_classes)])
    _write_lines(marker, [])
    return _counts(out_dir)


def _write_lines(path: str, lines: Sequence[str]) -> None:
    with atomic_write(path) as tmp, open(tmp, 'w', encoding='utf-8') as f:
        f.write(''.join(line + '\n' for line in lines))


def _counts(out_dir: str) -> dict:
    counts = {}
    for split in ('train', 'val'):
        with open(os.path.join(out_dir, f'{split}_list.txt')) as f:
            counts[split] = sum(1 for _ in f)
    return counts


def main(argv=None):
    parser = script_parser('tools/make_demo_dataset.py', __doc__)
    parser.add_argument('output', help='folder to write (created)')
    parser.add_argument('--image_size', type=int, default=32, help='side of the written PNGs (upscaled bicubic)')
    parser.add_argument('--val_fraction', type=float, default=0.2, help='share of each class held out for val')
    parser.add_argument('--num_classes', type=int, default=10, help='use digits 0..K-1 only')
    parser.add_argument('--per_class', type=int, default=None, help='cap images per class (tiny datasets)')
    parser.add_argument('--seed', type=int, default=0, help='split seed')
    parser.add_argument('--force', action='store_true', help='rewrite even if the folder is complete')
    args = parser.parse_args(argv)
    counts = write_digits_dataset(args.output, image_size=args.image_size, val_fraction=args.val_fraction,
                                  seed=args.seed, num_classes=args.num_classes, per_class=args.per_class,
                                  force=args.force)
    print(f"{args.output}: {counts['train']} train / {counts['val']} val images, {args.num_classes} classes")


if __name__ == '__main__':
    run_main(main)

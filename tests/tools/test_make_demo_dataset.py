"""The bundled digits dataset writer: ImageNet layout, list files, labels, idempotent re-runs."""
import os

import pytest
from PIL import Image

pytest.importorskip('sklearn', reason='the demo dataset is read from scikit-learn (requirements-dev.txt)')

from tools.make_demo_dataset import write_digits_dataset  # noqa: E402


def test_layout_lists_and_labels(tmp_path):
    out = tmp_path / 'digits'
    counts = write_digits_dataset(str(out), image_size=24, num_classes=3, per_class=5, val_fraction=0.4)
    assert counts == {'train': 9, 'val': 6}
    assert sorted(os.listdir(out / 'train')) == ['digit_0', 'digit_1', 'digit_2']
    lines = (out / 'val_list.txt').read_text().splitlines()
    path, label = lines[0].rsplit(' ', 1)
    assert path.startswith(f'val/digit_{label}/') and (out / path).is_file()
    img = Image.open(out / path)
    assert img.size == (24, 24) and img.mode == 'L'
    assert (out / 'labels.txt').read_text().splitlines() == ['0 zero', '1 one', '2 two']
    train = {line.split()[0] for line in (out / 'train_list.txt').read_text().splitlines()}
    assert not train & {line.split()[0] for line in lines}  # disjoint splits


def test_rerun_is_a_noop_and_split_is_seeded(tmp_path):
    a = write_digits_dataset(str(tmp_path / 'a'), image_size=8, num_classes=2, per_class=4)
    first = (tmp_path / 'a' / 'train_list.txt').read_text()
    (tmp_path / 'a' / 'train' / 'digit_0' / 'extra.png').write_bytes(b'')
    assert write_digits_dataset(str(tmp_path / 'a'), image_size=8, num_classes=2, per_class=4) == a
    assert (tmp_path / 'a' / 'train' / 'digit_0' / 'extra.png').exists()  # untouched: not rewritten
    write_digits_dataset(str(tmp_path / 'b'), image_size=8, num_classes=2, per_class=4)
    assert (tmp_path / 'b' / 'train_list.txt').read_text() == first

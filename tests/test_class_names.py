"""One class map end to end, on three named class folders (circle, square, triangle): train.py stores the
folder names in its checkpoints and refuses a val split named otherwise, eval.py refuses one too, predict.py
and an export + infer.py show the names without a label list (--label_list still wins), and a list file
whose labels skip ids is refused naming its line."""
import json
import re
import runpy
import shutil
import sys

import numpy as np
import pytest
import yaml
from PIL import Image, ImageDraw

from cli import label_names_for
from tests.scripts import ROOT, one_line_error, script_main
from training.args import build_train_parser
from training.checkpoint import load_training_state

SHAPES = ('circle', 'square', 'triangle')
PLAIN = ['--model', 'cvt_tiny', '--input_size', '32', '--crop_pct', '1', '--aa', 'none', '--reprob', '0',
         '--mixup', '0', '--cutmix', '0', '--smoothing', '0', '--no_amp', '--num_workers', '0',
         '--warmup_epochs', '0', '--save_freq', '0', '--epochs', '1', '--batch_size', '6', '--lr', '1e-3']


def write_shape(path, shape: str, seed: int, size: int = 32) -> None:
    """A white `shape` of random size and place on a random dark background."""
    rng = np.random.RandomState(seed)
    img = Image.new('RGB', (size, size), tuple(int(v) for v in rng.randint(0, 80, 3)))
    r = rng.randint(6, 12)
    cx, cy = rng.randint(r, size - r, 2)
    box = [cx - r, cy - r, cx + r, cy + r]
    draw = ImageDraw.Draw(img)
    if shape == 'circle':
        draw.ellipse(box, fill='white')
    elif shape == 'square':
        draw.rectangle(box, fill='white')
    else:
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill='white')
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def write_shapes(root, per_class={'train': 4, 'val': 2}):
    for split, count in per_class.items():
        for c, shape in enumerate(SHAPES):
            for i in range(count):
                write_shape(root / split / shape / f'{i}.png', shape, seed=1000 * c + 100 * (split == 'val') + i)
    return root


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    return write_shapes(tmp_path_factory.mktemp('shapes'))


@pytest.fixture(scope='module')
def renamed_val(tmp_path_factory, shapes):
    """The shapes data with val/circle renamed val/zcircle: as many folders, one name differs."""
    root = tmp_path_factory.mktemp('renamed') / 'data'
    shutil.copytree(shapes, root)
    (root / 'val' / 'circle').rename(root / 'val' / 'zcircle')
    return root


@pytest.fixture(scope='module')
def trained(tmp_path_factory, shapes):
    """checkpoint-latest.pd of a one-epoch run on the shapes folders."""
    out = tmp_path_factory.mktemp('run')
    assert script_main('train.py')([str(shapes), '--output', str(out), '--experiment', 'run', *PLAIN]) == 0
    return out / 'run' / 'checkpoint-latest.pd'


@pytest.fixture
def label_list(tmp_path):
    path = tmp_path / 'labels.txt'
    path.write_text('0 round\n1 box\n2 three corners\n')
    return path


def assert_hint_flags_exist(error: str, script: str) -> None:
    """Every --flag an error names is one `script` accepts."""
    parser = (build_train_parser() if script == 'train.py'
              else runpy.run_path(str(ROOT / script))['build_parser']())
    known = {s for action in parser._actions for s in action.option_strings}
    named = set(re.findall(r'--\w+', error))
    assert named and named <= known, (script, named - known)


def _json_results(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_checkpoint_stores_the_training_folders_names(trained):
    assert load_training_state(str(trained))['class_names'] == list(SHAPES)


def test_train_refuses_a_renamed_val_class(renamed_val, tmp_path, capsys):
    error = one_line_error('train.py', [str(renamed_val), '--output', str(tmp_path), '--experiment', 'run', *PLAIN],
                           capsys)
    assert error == (f"error: {renamed_val / 'val' / 'zcircle'} is not a class of the train split (it has circle, "
                     f"square, triangle): rename it or pass --cls_label_path_val FILE")
    assert_hint_flags_exist(error, 'train.py')
    assert not (tmp_path / 'run').exists()


def test_eval_refuses_a_val_class_the_checkpoint_does_not_have(trained, renamed_val, shapes, capsys):
    flags = ['--model', 'cvt_tiny', '--resume', str(trained), '--num_workers', '0']
    error = one_line_error('eval.py', [str(renamed_val), *flags], capsys)
    assert error == (f"error: {renamed_val / 'val' / 'zcircle'} is not a class of the checkpoint {trained} (it has "
                     f"circle, square, triangle): rename it or pass --cls_label_path_val FILE")
    assert_hint_flags_exist(error, 'eval.py')
    assert script_main('eval.py')([str(shapes), *flags]) == 0  # the right names pass
    assert _json_results(capsys)['num_images'] == 6


def test_eval_refuses_a_missing_val_class(trained, tmp_path, shapes, capsys):
    data = tmp_path / 'data'
    shutil.copytree(shapes, data)
    shutil.rmtree(data / 'val' / 'square')
    error = one_line_error('eval.py', [str(data), '--model', 'cvt_tiny', '--resume', str(trained)], capsys)
    assert error.startswith(f"error: {data / 'val'}: no folder for class square of the checkpoint {trained}")
    assert_hint_flags_exist(error, 'eval.py')


def test_predict_shows_the_checkpoint_names_in_its_table_and_json(trained, shapes, label_list, capsys,
                                                                   monkeypatch):
    predict = script_main('predict.py')
    flags = ['--images', str(shapes / 'val'), '--model', 'cvt_tiny', '--resume', str(trained), '--topk', '3']
    assert predict([*flags, '--json']) == 0
    results = _json_results(capsys)
    assert len(results) == 6
    for r in results:
        assert r['label_names'] == [SHAPES[i] for i in r['class_ids']]
    monkeypatch.setattr(sys.stdout, 'isatty', lambda: True)
    assert predict(flags) == 0
    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert header.split() == ['file', 'top-1', 'top-2', 'top-3'] and len(rows) == 6
    for row, r in zip(rows, results):
        assert row.split()[1::2] == r['label_names']
    assert predict([*flags, '--json', '--label_list', str(label_list)]) == 0  # a label list still wins
    renamed = {'circle': 'round', 'square': 'box', 'triangle': 'three corners'}
    assert [r['label_names'] for r in _json_results(capsys)] == [[renamed[n] for n in r['label_names']]
                                                                  for r in results]


def test_export_and_infer_carry_the_checkpoint_names(trained, shapes, renamed_val, label_list, tmp_path, capsys):
    out = tmp_path / 'inference'
    assert script_main('export_model.py')(['--model', 'cvt_tiny', '--resume', str(trained), '--output',
                                           str(out)]) == 0
    cfg = yaml.safe_load((out / 'inference.yml').read_text())
    assert cfg['label_names'] == cfg['class_names'] == list(SHAPES)
    capsys.readouterr()
    infer = script_main('infer.py')
    flags = ['--model_dir', str(out), '--images', str(shapes / 'val'), '--json']
    assert infer(flags) == 0
    results = _json_results(capsys)
    assert len(results) == 6 and all(r['label_names'] == [SHAPES[i] for i in r['class_ids']] for r in results)
    assert infer([*flags, '--label_list', str(label_list)]) == 0
    assert {n for r in _json_results(capsys) for n in r['label_names']} == {'round', 'box', 'three corners'}
    error = one_line_error('eval.py', [str(renamed_val), '--model_dir', str(out)], capsys)
    assert error.startswith(f"error: {renamed_val / 'val' / 'zcircle'} is not a class of the export {out} (it has")


def test_a_list_file_whose_labels_skip_ids_is_refused_naming_the_line(shapes, tmp_path, capsys):
    lines = [f'train/{shape}/{i}.png {c}' for c, shape in enumerate(SHAPES) for i in range(4)]
    lines[9] = 'train/triangle/1.png 7'  # a typo for 2 among labels 0-2
    (shapes / 'typo_list.txt').write_text('\n'.join(lines) + '\n')
    error = one_line_error('train.py', [str(shapes), '--cls_label_path_train', 'typo_list.txt', '--output',
                                        str(tmp_path), '--experiment', 'run', *PLAIN], capsys)
    assert error == (f"error: {shapes / 'typo_list.txt'}:10: label 7, but no line has label 3: labels must be "
                     f"0..N-1 without gaps; fix the label, or pass --num_classes 8 if the missing ids are meant to "
                     f"be classes without images")
    assert_hint_flags_exist(error, 'train.py')


def test_imagenet_runs_keep_the_official_names():
    official = label_names_for(1000)
    wnids = ['n01440764', *(f'n{i:08d}' for i in range(2, 1000)), 'n15075141']  # ImageNet-1k's first and last
    assert label_names_for(1000, class_names=wnids) == official and official[0].startswith('tench')
    other_wnids = [f'n{i:08d}' for i in range(1000)]  # 1000 classes of ImageNet-21k, say: their own names
    assert label_names_for(1000, class_names=other_wnids) == other_wnids
    assert label_names_for(3, class_names=list(SHAPES)) == list(SHAPES)
    assert label_names_for(1000, class_names=[f'class{i}' for i in range(1000)])[0] == 'class0'


def test_resuming_on_renamed_train_folders_is_refused(shapes, tmp_path, capsys):
    data = tmp_path / 'data'
    shutil.copytree(shapes, data)
    argv = [str(data), '--output', str(tmp_path / 'out'), '--experiment', 'run', *PLAIN]
    assert script_main('train.py')(argv) == 0
    for split in ('train', 'val'):  # the same count, one name changed: label 0 would become square
        (data / split / 'circle').rename(data / split / 'zcircle')
    latest = tmp_path / 'out' / 'run' / 'checkpoint-latest.pd'
    before = latest.read_bytes()
    capsys.readouterr()
    error = one_line_error('train.py', [*argv, '--epochs', '2'], capsys)
    assert error == (f"error: {data / 'train' / 'zcircle'} is not a class of the checkpoint {latest} (it has circle, "
                     f"square, triangle): its labels would go to other classes; restore the folder names, or start "
                     f"a new run from its weights with --finetune {latest} --experiment NAME")
    assert_hint_flags_exist(error, 'train.py')
    assert latest.read_bytes() == before


def test_a_list_file_run_takes_its_class_names_from_label_list(shapes, tmp_path, capsys):
    lines = [f'train/{shape}/{i}.png {c}' for c, shape in enumerate(SHAPES) for i in range(4)]
    (tmp_path / 'train_list.txt').write_text('\n'.join(lines) + '\n')
    names = tmp_path / 'names.txt'
    names.write_text(''.join(f'{c} {shape}\n' for c, shape in enumerate(SHAPES)))
    argv = [str(shapes), '--cls_label_path_train', str(tmp_path / 'train_list.txt'), '--output', str(tmp_path),
            *PLAIN]
    assert script_main('train.py')([*argv, '--experiment', 'list', '--label_list', str(names)]) == 0
    ckpt = tmp_path / 'list' / 'checkpoint-latest.pd'
    assert load_training_state(str(ckpt))['class_names'] == list(SHAPES)
    capsys.readouterr()
    names.write_text('0 round\n1 box\n2 three corners\n')  # the val folders are named otherwise: refused
    error = one_line_error('train.py', [*argv, '--experiment', 'other', '--label_list', str(names)], capsys)
    assert error.startswith(f"error: {shapes / 'val' / 'circle'} is not a class of the train split (it has round, box")
    names.write_text('0 round\n1 box\n')
    error = one_line_error('train.py', [*argv, '--experiment', 'short', '--label_list', str(names)], capsys)
    assert error == (f'error: {names}: 2 class names, expected 3 (the classes of {tmp_path / "train_list.txt"}, '
                     f'or --num_classes)')
    assert_hint_flags_exist(error, 'train.py')
    error = one_line_error('train.py', [str(shapes), '--output', str(tmp_path), '--experiment', 'folders',
                                        '--label_list', str(names), *PLAIN], capsys)
    assert error == (f'error: --label_list names the classes of a --cls_label_path_train run; the class folders of '
                     f'{shapes}/train name theirs: drop --label_list')

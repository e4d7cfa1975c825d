"""predict.py: image discovery (folders, any-case extensions, globs, greyscale), the result JSON,
labels, the table/bar/summary on a terminal, skipped unreadable files, and one-line errors for bad input."""
import fcntl
import json
import os
import pty
import re
import runpy
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image

from datasets.transforms import build_transform, resolve_data_cfg
from models import create_model
from models.cvt import ConvolutionalVisionTransformer
from cli import label_names_for, run_main
from deploy.classify import find_images
from tests.scripts import one_line_error, runtime_available, without_log_lines

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 3
RESULT_KEYS = ['class_ids', 'scores', 'file_name', 'label_names']


@pytest.fixture(scope='module')
def image_dir(tmp_path_factory):
    """Mixed-case extensions, a nested folder, a greyscale PNG and a non-image file that must be ignored."""
    root = tmp_path_factory.mktemp('images')
    (root / 'nested').mkdir()
    rng = np.random.RandomState(0)
    for name, shape in (('a.JPG', (60, 80, 3)), ('b.jpeg', (90, 64, 3)), ('nested/c.PNG', (64, 64, 3)),
                        ('grey.png', (50, 70))):
        Image.fromarray(rng.randint(0, 256, shape, dtype=np.uint8)).save(root / name)
    (root / 'notes.txt').write_text('not an image')
    return root


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    paddle.seed(0)
    path = tmp_path_factory.mktemp('ckpt') / 'checkpoint.pd'
    paddle.save({'model': create_model('cvt_tiny', num_classes=NUM_CLASSES).state_dict()}, str(path))
    return path


@pytest.fixture(scope='module')
def label_list(tmp_path_factory):
    path = tmp_path_factory.mktemp('labels') / 'labels.txt'
    path.write_text('0 cat\n1 dog, puppy\n2 bird\n')
    return path


@pytest.fixture(scope='module')
def folder_with_a_bad_file(tmp_path_factory):
    """40 small images and one file with an image extension that is not an image."""
    root = tmp_path_factory.mktemp('many')
    rng = np.random.RandomState(1)
    for i in range(40):
        Image.fromarray(rng.randint(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f'{i:02d}.png')
    (root / 'broken.jpg').write_bytes(b'not a jpeg')
    return root


def _main():
    return runpy.run_path(str(ROOT / 'predict.py'))['main']


def test_find_images_folders_globs_and_explicit_files(image_dir):
    found = find_images([str(image_dir)])
    assert [Path(p).name for p in found] == ['a.JPG', 'b.jpeg', 'grey.png', 'c.PNG']
    assert find_images([str(image_dir / '*.JP*G'), str(image_dir / 'a.JPG')]) == [str(image_dir / 'a.JPG')]
    assert find_images([str(image_dir / '**' / '*.PNG')]) == [str(image_dir / 'nested' / 'c.PNG')]


def test_default_labels_are_imagenet_for_1000_classes_only():
    names = label_names_for(1000)
    assert len(names) == 1000 and names[0].startswith('tench')
    assert label_names_for(NUM_CLASSES) is None


def test_predict_folder_prints_and_writes_reference_json(image_dir, checkpoint, label_list, tmp_path):
    out = tmp_path / 'pred.json'
    proc = subprocess.run([sys.executable, 'predict.py', '--images', str(image_dir), '--model', 'cvt_tiny',
                           '--num_classes', str(NUM_CLASSES), '--resume', str(checkpoint), '--label_list',
                           str(label_list), '--batch_size', '3', '--output_json', str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert proc.stdout.count('\n') == 1 and json.loads(proc.stdout) == results  # piped: only the JSON list
    assert '4 images classified, 0 skipped' in proc.stderr
    assert [Path(r['file_name']).name for r in results] == ['a.JPG', 'b.jpeg', 'grey.png', 'c.PNG']
    for r in results:
        assert list(r) == RESULT_KEYS
        assert sorted(r['class_ids']) == [0, 1, 2]  # top-5 of 3 classes: all of them
        assert r['scores'] == sorted(r['scores'], reverse=True) and sum(r['scores']) == pytest.approx(1, abs=1e-4)
        assert r['label_names'] == [['cat', 'dog, puppy', 'bird'][i] for i in r['class_ids']]


def test_predict_scores_equal_model_probabilities(image_dir, checkpoint, capsys):
    grey = image_dir / 'grey.png'
    assert _main()(['--images', str(grey), '--model', 'cvt_tiny', '--num_classes', str(NUM_CLASSES),
                    '--resume', str(checkpoint), '--topk', '2']) == 0
    (result,) = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    model = create_model('cvt_tiny', num_classes=NUM_CLASSES)
    model.set_state_dict(paddle.load(str(checkpoint))['model'])
    model.eval()
    x = build_transform(is_train=False, **resolve_data_cfg(model.default_cfg))(Image.open(grey).convert('RGB'))
    probs = paddle.nn.functional.softmax(model(paddle.to_tensor(x[None]))).numpy()[0]
    assert result['class_ids'] == list(np.argsort(-probs)[:2])
    np.testing.assert_allclose(result['scores'], probs[result['class_ids']], atol=1e-5)
    assert result['label_names'] == []


def test_predict_amp_autocasts_as_eval_and_training_do(image_dir, checkpoint, monkeypatch, capsys):
    seen = []
    auto_cast = paddle.amp.auto_cast

    def spy(enable=True, *args, **kwargs):
        seen.append((enable, kwargs.get('dtype'), kwargs.get('level'), frozenset(kwargs.get('custom_black_list', ()))))
        return auto_cast(enable, *args, **kwargs)
    monkeypatch.setattr(paddle.amp, 'auto_cast', spy)
    assert _main()(['--images', str(image_dir / 'grey.png'), '--model', 'cvt_tiny', '--num_classes', str(NUM_CLASSES),
                    '--resume', str(checkpoint), '--amp']) == 0
    assert seen == [(True, 'float16', 'O1', frozenset({'softmax', 'layer_norm'}))]  # eval's and training's black list
    assert capsys.readouterr().err.count('has no effect on this CPU build of Paddle') == (
        0 if paddle.is_compiled_with_cuda() else 1)


def _wrong_variant_checkpoint(path: Path) -> Path:
    # cvt_tiny widths with a deeper last stage: the same names up to stage2.blocks.0, then extra blocks
    model = ConvolutionalVisionTransformer(depths=(1, 1, 2), dims=(16, 32, 64), heads=(1, 2, 4),
                                           num_classes=NUM_CLASSES)
    paddle.save({'model': model.state_dict()}, str(path))
    return path


def _bad_input_argv(case: str, image_dir: Path, checkpoint: Path, tmp_path: Path) -> list:
    """Good arguments with the one change `case` names (None drops the flag)."""
    (tmp_path / 'empty').mkdir()
    flags = {'--images': str(image_dir / 'a.JPG'), '--model': 'cvt_tiny', '--num_classes': str(NUM_CLASSES),
             '--resume': str(checkpoint)}
    change = {
        'missing': {'--images': str(tmp_path / 'no-such.jpg')},
        'not_image': {'--images': str(image_dir / 'notes.txt')},
        'empty_dir': {'--images': str(tmp_path / 'empty')},
        'no_weights': {'--resume': None},
        'unknown_model': {'--model': 'cvt_tinny'},
        'class_count': {'--num_classes': None},
        'wrong_variant': {'--resume': str(tmp_path / 'deeper.pd')},
        'missing_checkpoint': {'--resume': str(tmp_path / 'nothing.pd')},
    }[case]
    if case == 'wrong_variant':
        _wrong_variant_checkpoint(tmp_path / 'deeper.pd')
    flags.update(change)
    return [item for flag, value in flags.items() if value is not None for item in (flag, value)]


@pytest.mark.parametrize('case, expected', [
    ('missing', 'no-such.jpg: no such file or folder'),
    ('not_image', 'notes.txt: not a readable image'),
    ('empty_dir', 'empty: folder has no images'),
    ('no_weights', 'no weights given: pass --resume CKPT'),
    ('unknown_model', "unknown model 'cvt_tinny' (did you mean 'cvt_tiny'?)"),
    ('class_count', "'head.weight' has shape [64, 3], expected [64, 1000]"),
    ('wrong_variant', 'stage2.blocks.1'),
    ('missing_checkpoint', 'nothing.pd: no such file'),
])
def test_bad_input_gives_one_line_error(case, expected, image_dir, checkpoint, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(_main(), _bad_input_argv(case, image_dir, checkpoint, tmp_path))
    assert exit_info.value.code == 1
    err = without_log_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith('error: ') and expected in err[0], err


def test_bad_input_from_the_command_line_exits_1_without_traceback(tmp_path):
    cmd = [sys.executable, 'predict.py', '--images', str(tmp_path / 'none.png'), '--model', 'cvt_tiny']
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert f'error: {tmp_path / "none.png"}: no such file or folder' in proc.stderr
    assert 'Traceback' not in proc.stderr
    debug = subprocess.run(cmd + ['--debug'], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert debug.returncode != 0 and 'Traceback' in debug.stderr


def _run_on_a_terminal(cmd, timeout=120) -> str:
    """Output of `cmd` with stdout and stderr on one pseudo-terminal (100 columns), as a user sees it."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack('HHHH', 40, 100, 0, 0))  # tqdm draws nothing at 0 columns
    proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    chunks, deadline = [], time.time() + timeout
    while time.time() < deadline:
        if select.select([leader], [], [], 1)[0]:
            try:
                data = os.read(leader, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(leader)
    assert proc.wait(timeout=10) == 0, b''.join(chunks).decode(errors='replace')[-2000:]
    return b''.join(chunks).decode(errors='replace').replace('\r\n', '\n')


def test_predict_on_a_terminal_shows_table_bar_and_summary_and_writes_all_results(
        folder_with_a_bad_file, checkpoint, label_list, tmp_path):
    out = tmp_path / 'pred.json'
    shown = _run_on_a_terminal([sys.executable, 'predict.py', '--images', str(folder_with_a_bad_file),
                                '--model', 'cvt_tiny', '--num_classes', str(NUM_CLASSES), '--resume', str(checkpoint),
                                '--label_list', str(label_list), '--topk', '2', '--batch_size', '8',
                                '--output_json', str(out)])
    lines = shown.split('\n')
    rows = [line for line in lines if line.startswith(str(folder_with_a_bad_file))]
    header = lines[lines.index(rows[0]) - 1].split('\r')[-1]  # after the cleared bar, as a terminal shows it
    assert len(rows) == 40 and re.fullmatch(r'file +top-1 +top-2', header)
    # file, then `label score` twice, in aligned columns; 'dog, puppy' is shown by its first name
    cells = [re.fullmatch(r'\S+\.png  (cat|dog|bird) 0\.\d{3} +(cat|dog|bird) 0\.\d{3}', row) for row in rows]
    assert all(cells) and len({cell.start(2) for cell in cells}) == 1, rows
    assert re.search(r'\r *\d+%\|.*\| *\d+/41 \[', shown)  # the progress bar, redrawn in place
    assert f'skipped {folder_with_a_bad_file / "broken.jpg"}: not a readable image' in shown
    assert re.search(rf'40 images classified, 1 skipped, in [\d.]+ s \([\d.]+ img/s\); JSON in {re.escape(str(out))}$',
                     shown.strip())
    results = json.loads(out.read_text())
    assert len(results) == 40 and 'broken.jpg' not in out.read_text()


def _predict_argv(images, checkpoint, *flags):
    return ['--images', str(images), '--model', 'cvt_tiny', '--num_classes', str(NUM_CLASSES),
            '--resume', str(checkpoint), '--batch_size', '16', *flags]


def test_unreadable_files_are_skipped_listed_and_counted(folder_with_a_bad_file, checkpoint, capsys):
    assert _main()(_predict_argv(folder_with_a_bad_file, checkpoint)) == 0
    captured = capsys.readouterr()
    results = json.loads(captured.out)
    assert len(results) == 40 and not [r for r in results if r['file_name'].endswith('broken.jpg')]
    err = without_log_lines(captured.err)
    assert err[0].startswith(f'skipped {folder_with_a_bad_file / "broken.jpg"}: not a readable image (')
    assert err[-1].startswith('40 images classified, 1 skipped')


def test_strict_stops_at_the_first_unreadable_file(folder_with_a_bad_file, checkpoint, capsys):
    err = one_line_error('predict.py', _predict_argv(folder_with_a_bad_file, checkpoint, '--strict'), capsys)
    assert f'error: {folder_with_a_bad_file / "broken.jpg"}: not a readable image' in err


def test_nothing_readable_is_an_error(tmp_path, checkpoint, capsys):
    for name in ('a.jpg', 'b.png'):
        (tmp_path / name).write_bytes(b'garbage')
    with pytest.raises(SystemExit) as exit_info:
        run_main(_main(), _predict_argv(tmp_path, checkpoint))
    assert exit_info.value.code == 1
    err = without_log_lines(capsys.readouterr().err)
    assert [line.split(':')[0] for line in err[:2]] == [f'skipped {tmp_path / name}' for name in ('a.jpg', 'b.png')]
    assert err[2:] == ['error: none of the 2 images could be read (each is listed above as skipped)']


@pytest.mark.parametrize('backend', ['paddle', 'onnxruntime', 'openvino'])
def test_predict_on_a_runtime_gives_the_dygraph_probabilities(backend, image_dir, checkpoint, tmp_path, monkeypatch,
                                                             capsys):
    if not runtime_available(backend):
        pytest.skip(f'--backend {backend} needs paddle2onnx, onnx-graphsurgeon and {backend}')
    monkeypatch.setenv('CVT_CACHE_DIR', str(tmp_path / 'cache'))
    flags = ['--images', str(image_dir), '--model', 'cvt_tiny', '--num_classes', str(NUM_CLASSES),
             '--resume', str(checkpoint), '--batch_size', '3', '--json']
    scores = {}
    for run in ('dygraph', backend):
        assert _main()([*flags, '--backend', run]) == 0
        results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        # by class id: near-uniform probabilities of an untrained model may order differently
        scores[run] = np.array([[dict(zip(r['class_ids'], r['scores']))[c] for c in range(NUM_CLASSES)]
                                for r in results])
    assert scores[backend].shape == (4, NUM_CLASSES)
    np.testing.assert_allclose(scores[backend], scores['dygraph'], rtol=0, atol=1e-5 + 1e-9)  # both rounded to 1e-5
    assert len(list((tmp_path / 'cache' / 'exports').iterdir())) == 1

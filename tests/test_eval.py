"""eval.py: metrics equal a direct forward pass over the split, EMA weights, list files, 2-process launch,
progress (a bar on a terminal, log lines elsewhere), and a train.py checkpoint evaluated with its own class
count and protocol whichever flag names it."""
import json
import re
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
from PIL import Image

from datasets.transforms import build_transform, resolve_data_cfg
from models import create_model
from tests.scripts import onnx_export_available, one_line_error, runtime_available

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 3
IMAGES_PER_CLASS = (2, 2, 3)  # 7: an odd count, so 2 ranks hold different numbers of images


def _model(seed: int):
    paddle.seed(seed)
    return create_model('cvt_tiny', num_classes=NUM_CLASSES)


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    rng = np.random.RandomState(0)
    for label, count in enumerate(IMAGES_PER_CLASS):
        folder = root / 'val' / f'class_{label}'
        folder.mkdir(parents=True)
        for i in range(count):
            pixels = rng.randint(0, 256, (48 + 9 * i, 70, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f'{i}.png')
    return root


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """A training checkpoint whose EMA weights differ from its model weights."""
    path = tmp_path_factory.mktemp('ckpt') / 'checkpoint.pd'
    paddle.save({'model': _model(0).state_dict(), 'model_ema': _model(1).state_dict(), 'epoch': 3}, str(path))
    return path


def _expected(checkpoint: Path, key: str, data_dir: Path) -> dict:
    """Metrics computed by hand: the model on each preprocessed image, no loader, no evaluate()."""
    model = create_model('cvt_tiny', num_classes=NUM_CLASSES)
    model.set_state_dict(paddle.load(str(checkpoint))[key])
    model.eval()
    transform = build_transform(is_train=False, **resolve_data_cfg(model.default_cfg))
    files = [(p, label) for label in range(NUM_CLASSES)
             for p in sorted((data_dir / 'val' / f'class_{label}').iterdir())]
    batch = np.stack([transform(Image.open(p).convert('RGB')) for p, _ in files])
    labels = np.array([label for _, label in files])
    with paddle.no_grad():
        logits = model(paddle.to_tensor(batch)).numpy().astype(np.float64)
    shifted = logits - logits.max(1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(1, keepdims=True))
    return {'acc1': 100.0 * np.mean(logits.argmax(1) == labels), 'acc5': 100.0,  # 3 classes: top-5 is all
            'loss': -log_probs[np.arange(len(labels)), labels].mean(), 'num_images': len(labels)}


def _run_eval(argv, tmp_path):
    out = tmp_path / 'result.json'
    main = runpy.run_path(str(ROOT / 'eval.py'))['main']
    assert main([*map(str, argv), '--num_workers', '0', '--output_json', str(out)]) == 0
    return json.loads(out.read_text())


def _assert_matches(result: dict, expected: dict):
    assert result['num_images'] == expected['num_images']
    assert result['acc1'] == pytest.approx(expected['acc1'], abs=1e-3)
    assert result['acc5'] == pytest.approx(expected['acc5'], abs=1e-3)
    assert result['loss'] == pytest.approx(expected['loss'], abs=1e-4)


def test_eval_equals_direct_forward_and_reports_protocol(data_dir, checkpoint, tmp_path, capsys):
    result = _run_eval([data_dir, '--model', 'cvt_tiny', '--num_classes', NUM_CLASSES, '--resume', checkpoint,
                        '--batch_size', 3], tmp_path)
    _assert_matches(result, _expected(checkpoint, 'model', data_dir))
    assert (result['img_size'], result['crop_pct'], result['crop_mode'], result['interpolation']) == \
        (64, 0.875, 'center', 'bicubic')
    printed = capsys.readouterr().out
    assert f"* Acc@1 {result['acc1']:.3f} Acc@5 100.000" in printed
    assert '(7 images; 64px, crop_pct 0.875, bicubic, center)' in printed
    assert json.loads(printed.strip().splitlines()[-1]) == result


def test_eval_use_ema_loads_ema_weights(data_dir, checkpoint, tmp_path):
    result = _run_eval([data_dir, '--model', 'cvt_tiny', '--num_classes', NUM_CLASSES, '--resume', checkpoint,
                        '--use_ema', '--batch_size', 4], tmp_path)
    expected = _expected(checkpoint, 'model_ema', data_dir)
    assert expected['loss'] != pytest.approx(_expected(checkpoint, 'model', data_dir)['loss'], abs=1e-4)
    _assert_matches(result, expected)
    assert result['use_ema'] is True


def test_eval_list_file_and_protocol_override(data_dir, checkpoint, tmp_path):
    listed = [('val/class_2/0.png', 2), ('val/class_0/1.png', 0), ('val/class_1/0.png', 1)]
    list_file = tmp_path / 'val_list.txt'
    list_file.write_text(''.join(f'{p} {label}\n' for p, label in listed))
    result = _run_eval([data_dir, '--model', 'cvt_tiny', '--num_classes', NUM_CLASSES, '--resume', checkpoint,
                        '--cls_label_path_val', list_file, '--crop_pct', 1.0, '--crop_mode', 'squash'], tmp_path)
    assert (result['num_images'], result['crop_pct'], result['crop_mode']) == (3, 1.0, 'squash')


@pytest.mark.slow
def test_eval_two_process_launch_counts_every_image_once(data_dir, checkpoint, tmp_path):
    out = tmp_path / 'dist.json'
    cmd = [sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', '2',
           '--log_dir', str(tmp_path / 'logs'), 'eval.py', str(data_dir), '--model', 'cvt_tiny',
           '--num_classes', str(NUM_CLASSES), '--resume', str(checkpoint), '--batch_size', '2',
           '--num_workers', '0', '--output_json', str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    _assert_matches(json.loads(out.read_text()), _expected(checkpoint, 'model', data_dir))


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    """A small real dataset (digits, as the demo writes it) and an export of a cvt_tiny checkpoint on it."""
    from tools.make_demo_dataset import write_digits_dataset
    root = tmp_path_factory.mktemp('digits')
    write_digits_dataset(str(root / 'data'), image_size=32, num_classes=4, per_class=10)
    paddle.seed(0)
    model = create_model('cvt_tiny', num_classes=4)
    paddle.save({'model': model.state_dict()}, str(root / 'checkpoint.pd'))
    export = runpy.run_path(str(ROOT / 'export_model.py'))['main']
    flags = ['--onnx'] if onnx_export_available() else []
    assert export(['--model', 'cvt_tiny', '--num_classes', '4', '--resume', str(root / 'checkpoint.pd'),
                   '--output', str(root / 'export'), *flags]) == 0
    return root


@pytest.mark.parametrize('backend', ['paddle', 'onnxruntime'])
def test_eval_of_the_export_equals_the_checkpoint_eval(digits, backend, tmp_path):
    if backend == 'onnxruntime' and not (digits / 'export' / 'model.onnx').is_file():
        pytest.skip('ONNX export needs paddle2onnx, onnx-graphsurgeon and onnxruntime')
    data = digits / 'data'
    dygraph = _run_eval([data, '--model', 'cvt_tiny', '--num_classes', 4, '--resume', digits / 'checkpoint.pd'],
                        tmp_path)
    deployed = _run_eval([data, '--model_dir', digits / 'export', '--backend', backend, '--batch_size', 3], tmp_path)
    assert deployed['num_images'] == dygraph['num_images'] == 8
    assert abs(deployed['acc1'] - dygraph['acc1']) <= 0.01 and abs(deployed['acc5'] - dygraph['acc5']) <= 0.01
    assert deployed['loss'] == pytest.approx(dygraph['loss'], abs=1e-4)
    assert (deployed['model'], deployed['backend'], deployed['precision']) == ('cvt_tiny', backend, 'fp32')
    assert deployed['img_size'] == dygraph['img_size'] and deployed['crop_pct'] == dygraph['crop_pct']


def test_eval_of_the_export_refuses_weight_flags(digits, capsys):
    from cli import run_main
    main = runpy.run_path(str(ROOT / 'eval.py'))['main']
    with pytest.raises(SystemExit):
        run_main(main, [str(digits / 'data'), '--model_dir', str(digits / 'export'), '--resume', 'x.pd'])
    assert '--resume does not apply with --model_dir' in capsys.readouterr().err


class _Loader:
    """What evaluate() reads of a DataLoader: batches, their count and the dataset's length."""

    def __init__(self, num_batches: int, batch_size: int = 2):
        rng = np.random.RandomState(0)
        self.batches = [(paddle.to_tensor(rng.standard_normal((batch_size, 4)).astype('float32')),
                         paddle.to_tensor(rng.randint(0, 6, (batch_size,)))) for _ in range(num_batches)]
        self.dataset = [None] * (num_batches * batch_size)

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        return iter(self.batches)


@pytest.fixture
def eval_log_lines(monkeypatch):
    """The lines evaluate() logs, with the minimum interval between them removed."""
    import logging
    from training import evaluation
    monkeypatch.setattr(evaluation, 'LOG_MIN_SECONDS', 0.0)
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger('cvt.training.evaluation')
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)  # setLevel, not the attribute: it also clears the loggers' level caches
    yield lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_eval_off_a_terminal_logs_progress_every_tenth_of_the_batches(eval_log_lines, capsys):
    from training.evaluation import evaluate
    stats = evaluate(paddle.nn.Linear(4, 6), _Loader(20))
    assert stats['num_images'] == 40
    assert len(eval_log_lines) == 9  # every 2 of 20 batches, none after the last
    assert re.fullmatch(r'eval: 4/40 images, [\d.]+ img/s, eta \d+:\d\d:\d\d', eval_log_lines[0])
    assert eval_log_lines[-1].startswith('eval: 36/40 images')
    assert '%|' not in capsys.readouterr().err  # no bar (the log lines may reach stderr)


def test_eval_on_a_terminal_shows_a_bar_instead(eval_log_lines, capsys, monkeypatch):
    from training.evaluation import evaluate
    monkeypatch.setattr(sys.stdout, 'isatty', lambda: True)
    evaluate(paddle.nn.Linear(4, 6), _Loader(20))
    assert eval_log_lines == []
    assert re.search(r'eval: +0%.*0/20', capsys.readouterr().err)


@pytest.fixture(scope='module')
def trained_run(tmp_path_factory):
    """A real train.py checkpoint (1 epoch) whose run settings differ from cvt_tiny's defaults: 4 classes,
    32 px, crop_pct 0.9, bilinear."""
    pytest.importorskip('sklearn', reason='the digits dataset comes from scikit-learn (requirements-dev.txt)')
    from tools.make_demo_dataset import write_digits_dataset
    import train
    root = tmp_path_factory.mktemp('run')
    write_digits_dataset(str(root / 'data'), image_size=32, num_classes=4, per_class=10)
    assert train.main([str(root / 'data'), '--output', str(root), '--experiment', 'run', '--model', 'cvt_tiny',
                       '--input_size', '32', '--crop_pct', '0.9', '--interpolation', 'bilinear', '--epochs', '1',
                       '--batch_size', '8', '--lr', '1e-3', '--no_amp', '--num_workers', '0',
                       '--save_freq', '0']) == 0
    return root / 'data', root / 'run' / 'checkpoint-latest.pd'


def test_resume_and_pretrained_of_a_checkpoint_give_the_same_model_and_protocol(trained_run, tmp_path, capsys):
    data, ckpt = trained_run
    resumed = _run_eval([data, '--model', 'cvt_tiny', '--resume', ckpt], tmp_path)
    printed = capsys.readouterr().out
    renamed = tmp_path / 'digits.pdparams'  # the run settings travel in the file, whatever it is called
    shutil.copy(ckpt, renamed)
    pretrained = _run_eval([data, '--model', 'cvt_tiny', '--pretrained', renamed], tmp_path)
    assert {k: v for k, v in resumed.items() if k != 'weights'} == \
        {k: v for k, v in pretrained.items() if k != 'weights'}
    assert (resumed['num_images'], resumed['img_size'], resumed['crop_pct'], resumed['interpolation'],
            resumed['crop_mode']) == (8, 32, 0.9, 'bilinear', 'center')
    assert "(8 images; 32px, crop_pct 0.9, bilinear, center)" in printed
    explicit = _run_eval([data, '--model', 'cvt_tiny', '--pretrained', renamed, '--crop_pct', '1.0',
                          '--interpolation', 'bicubic'], tmp_path)
    assert (explicit['crop_pct'], explicit['interpolation']) == (1.0, 'bicubic')  # flags given still win


@pytest.mark.parametrize('backend', ['paddle', 'onnxruntime', 'openvino'])
def test_checkpoint_on_a_runtime_scores_as_dygraph_and_caches_its_export(trained_run, backend, tmp_path, monkeypatch,
                                                                       caplog):
    if not runtime_available(backend):
        pytest.skip(f'--backend {backend} needs paddle2onnx, onnx-graphsurgeon and {backend}')
    cache = tmp_path / 'cache'
    monkeypatch.setenv('CVT_CACHE_DIR', str(cache))
    data, ckpt = trained_run
    flags = [data, '--model', 'cvt_tiny', '--resume', ckpt, '--batch_size', 3]
    dygraph = _run_eval(flags, tmp_path)
    assert dygraph['backend'] == 'dygraph' and not cache.exists()  # the default exports nothing
    caplog.set_level('INFO', logger='cvt.deploy.cache')
    deployed = _run_eval([*flags, '--backend', backend], tmp_path)
    (entry,) = (cache / 'exports').iterdir()
    assert f'exported {ckpt} to {entry} in ' in caplog.text
    assert (deployed['acc1'], deployed['acc5'], deployed['num_images']) == \
        (dygraph['acc1'], dygraph['acc5'], dygraph['num_images'])
    assert deployed['loss'] == pytest.approx(dygraph['loss'], abs=1e-4)
    assert (deployed['backend'], deployed['precision'], deployed['img_size']) == (backend, 'fp32', 32)
    caplog.clear()
    again = _run_eval([*flags, '--backend', backend], tmp_path)
    assert f'through its export cached in {entry}' in caplog.text
    assert again == deployed and [p.name for p in (cache / 'exports').iterdir()] == [entry.name]


@pytest.mark.parametrize('flags, expected', [
    (['--precision', 'bf16'], '--precision bf16 chooses how an export runs: add --backend paddle'),
    (['--backend', 'paddle', '--amp'], '--amp is dygraph autocast; --backend paddle runs --precision instead'),
    (['--backend', 'onnxruntime', '--precision', 'int8'], '--precision int8 needs a calibrated export'),
    (['--backend', 'paddle', '--to_static'], '--backend paddle already runs an exported one: drop --to_static'),
])
def test_checkpoint_runtime_flags_that_cannot_apply_are_refused(flags, expected, checkpoint, data_dir, capsys):
    line = one_line_error('eval.py', [str(data_dir), '--model', 'cvt_tiny', '--num_classes', str(NUM_CLASSES),
                                      '--resume', str(checkpoint), *flags], capsys)
    assert expected in line

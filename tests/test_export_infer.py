"""export_model.py -> infer.py: folder contents, parity with dygraph (tools/check_export.py) and with
predict.py, fixed-batch and softmax graphs, atomic replacement, and one-line predictor errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
import yaml
from PIL import Image

from datasets.transforms import resolve_data_cfg
from deploy import export
from deploy.export import check_onnx_export_available, export_inference_model
from deploy.layout import find_model_files, read_inference_cfg
from deploy.predictors import build_predictor
from models import create_model
from tests.scripts import export_tiny, one_line_error, script_main

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 3
LABELS = ['cat', 'dog', 'bird']


def _model(seed: int):
    paddle.seed(seed)
    model = create_model('cvt_tiny', num_classes=NUM_CLASSES)
    model.eval()
    return model


@pytest.fixture(scope='module')
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp('export')
    paddle.save({'model': _model(0).state_dict()}, str(root / 'checkpoint.pd'))
    paddle.save({'model': _model(1).state_dict()}, str(root / 'other.pd'))
    (root / 'labels.txt').write_text(''.join(f'{i} {name}\n' for i, name in enumerate(LABELS)))
    (root / 'images').mkdir()
    rng = np.random.RandomState(0)
    for i, shape in enumerate([(60, 80, 3), (90, 64, 3), (64, 64, 3), (50, 70)]):
        Image.fromarray(rng.randint(0, 256, shape, dtype=np.uint8)).save(root / 'images' / f'{i}.png')
    return root


@pytest.fixture(scope='module')
def export_dir(assets):
    out = assets / 'inference'
    proc = subprocess.run([sys.executable, 'export_model.py', '--model', 'cvt_tiny', '--num_classes', str(NUM_CLASSES),
                           '--resume', str(assets / 'checkpoint.pd'), '--label_list', str(assets / 'labels.txt'),
                           '--output', str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_export_writes_graph_params_and_resolved_preprocessing(export_dir):
    model_file, params_file = find_model_files(str(export_dir))
    paddle3 = int(paddle.__version__.split('.')[0]) >= 3
    assert os.path.basename(model_file) == ('inference.json' if paddle3 else 'inference.pdmodel')
    assert os.path.basename(params_file) == 'inference.pdiparams'
    cfg = yaml.safe_load((export_dir / 'inference.yml').read_text())
    expected = resolve_data_cfg(create_model('cvt_tiny').default_cfg)
    assert resolve_data_cfg(cfg['preprocess']) == expected
    assert (cfg['model'], cfg['num_classes'], cfg['with_softmax'], cfg['label_names']) == \
        ('cvt_tiny', NUM_CLASSES, False, LABELS)
    assert not [p for p in os.listdir(export_dir.parent) if p.startswith('.inference.tmp')]


def test_check_export_passes_on_real_images(export_dir, assets):
    proc = subprocess.run([sys.executable, 'tools/check_export.py', '--model_dir', str(export_dir),
                           '--resume', str(assets / 'checkpoint.pd'), '--images', str(assets / 'images')],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report['paddle']['ok'] and report['paddle']['max_abs_prob_diff'] <= 1e-5
    assert report['paddle']['topk_mismatches'] == 0 and report['num_images'] == 4


def test_check_export_fails_against_other_weights(export_dir, assets, capsys):
    code = script_main('tools/check_export.py')(['--model_dir', str(export_dir), '--resume', str(assets / 'other.pd')])
    assert code == 1
    assert 'FAIL' in capsys.readouterr().out


def test_infer_equals_predict_and_benchmarks(export_dir, assets, tmp_path, capsys):
    out = tmp_path / 'infer.json'
    proc = subprocess.run([sys.executable, 'infer.py', '--model_dir', str(export_dir), '--images',
                           str(assets / 'images'), '--batch_size', '3', '--benchmark', '--output_json', str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    benchmark, listed = proc.stdout.splitlines()  # piped: the benchmark line, then only the JSON list
    assert benchmark.startswith('benchmark: 4 images, batch 3: preprocess') and benchmark.endswith('images/s')
    inferred = json.loads(out.read_text())
    assert json.loads(listed) == inferred
    assert script_main('predict.py')(['--images', str(assets / 'images'), '--model', 'cvt_tiny',
                                       '--num_classes', str(NUM_CLASSES), '--resume', str(assets / 'checkpoint.pd'),
                                       '--label_list', str(assets / 'labels.txt')]) == 0
    predicted = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r['file_name'] for r in inferred] == [r['file_name'] for r in predicted]
    for a, b in zip(inferred, predicted):
        assert (a['class_ids'], a['label_names']) == (b['class_ids'], b['label_names'])
        np.testing.assert_allclose(a['scores'], b['scores'], atol=2e-5)  # both rounded to 5 decimals


def test_infer_skips_an_unreadable_file_and_counts_it(export_dir, assets, tmp_path, capsys):
    for name in ('0.png', '1.png'):
        (tmp_path / name).write_bytes((assets / 'images' / name).read_bytes())
    (tmp_path / 'broken.png').write_bytes(b'not a png')
    assert script_main('infer.py')(['--model_dir', str(export_dir), '--images', str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert [Path(r['file_name']).name for r in json.loads(captured.out)] == ['0.png', '1.png']
    assert f'skipped {tmp_path / "broken.png"}: not a readable image' in captured.err
    assert '2 images classified, 1 skipped' in captured.err


def test_fixed_batch_softmax_graph_pads_the_last_batch(tmp_path):
    model = _model(2)
    data_cfg = resolve_data_cfg(model.default_cfg)
    out = tmp_path / 'fixed'
    export_inference_model(model, str(out), 'cvt_tiny', data_cfg, batch_size=2, with_softmax=True)
    cfg = read_inference_cfg(str(out))
    assert (cfg['batch_size'], cfg['with_softmax'], cfg['label_names']) == (2, True, None)
    batch = np.random.RandomState(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    probs = build_predictor(str(out), cfg, enable_mkldnn=False)(batch)
    with paddle.no_grad():
        expected = paddle.nn.functional.softmax(model(paddle.to_tensor(batch))).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_export_replaces_a_previous_export_only(tmp_path):
    model = _model(0)
    data_cfg = resolve_data_cfg(model.default_cfg)
    out = tmp_path / 'deploy'
    export_inference_model(model, str(out), 'cvt_tiny', data_cfg)
    (out / 'stale.txt').write_text('from an older export')
    export_inference_model(model, str(out), 'cvt_tiny', data_cfg)
    assert not (out / 'stale.txt').exists()
    assert sorted(os.listdir(tmp_path)) == ['deploy']  # no staging or retired folders left behind
    other = tmp_path / 'notes'
    other.mkdir()
    (other / 'keep.txt').write_text('user data')
    with pytest.raises(ValueError, match='holds no inference.yml; refusing to replace it'):
        export_inference_model(model, str(other), 'cvt_tiny', data_cfg)
    assert (other / 'keep.txt').exists()


def test_failed_export_leaves_the_previous_one_untouched(tmp_path, monkeypatch):
    model = _model(0)
    data_cfg = resolve_data_cfg(model.default_cfg)
    out = tmp_path / 'deploy'
    export_inference_model(model, str(out), 'cvt_tiny', data_cfg)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def fail_half_way(model, folder, *args):
        (Path(folder) / 'inference.json').write_text('half written')
        raise OSError('disk full')

    monkeypatch.setattr(export, '_save_static', fail_half_way)
    with pytest.raises(OSError, match='disk full'):
        export_inference_model(model, str(out), 'cvt_tiny', data_cfg, with_softmax=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(os.listdir(tmp_path)) == ['deploy']


def test_graph_files_of_paddle_2_are_found(tmp_path):
    for name in ('inference.pdmodel', 'inference.pdiparams'):
        (tmp_path / name).write_bytes(b'')
    assert find_model_files(str(tmp_path)) == (str(tmp_path / 'inference.pdmodel'),
                                               str(tmp_path / 'inference.pdiparams'))


def test_onnx_export_without_paddle2onnx_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'paddle2onnx', None)  # makes `import paddle2onnx` fail
    with pytest.raises(ValueError, match='--onnx needs paddle2onnx, which is not installed: pip install paddle2onnx'):
        check_onnx_export_available()


def _infer_error(argv, capsys) -> str:
    return one_line_error('infer.py', argv, capsys)


def test_infer_model_dir_without_model(export_dir, assets, tmp_path, capsys):
    images = str(assets / 'images')
    assert 'inference.yml: not found' in _infer_error(['--model_dir', str(tmp_path), '--images', images], capsys)
    (tmp_path / 'inference.yml').write_text((export_dir / 'inference.yml').read_text())
    err = _infer_error(['--model_dir', str(tmp_path), '--images', images], capsys)
    assert f'{tmp_path}: no inference.json or inference.pdmodel found' in err


@pytest.mark.skipif(paddle.is_compiled_with_cuda(), reason='checks the refusals of a CPU-only Paddle build')
@pytest.mark.parametrize('flags, expected', [
    (['--use_gpu'], '--use_gpu: the installed Paddle is a CPU build'),
    (['--use_tensorrt'], '--use_tensorrt needs --use_gpu'),
    (['--precision', 'fp16'], '--precision fp16 needs --use_gpu'),
    (['--precision', 'int8'], 'inference_int8.pdmodel: not found (Paddle Inference int8 runs a quantised program: '
                              'export with export_model.py --format pdmodel --int8 --calib_images DIR'),
])
def test_infer_refuses_what_a_cpu_build_cannot_serve(flags, expected, export_dir, assets, capsys):
    err = _infer_error(['--model_dir', str(export_dir), '--images', str(assets / 'images'), *flags], capsys)
    assert expected in err


def test_onnx_export_with_an_incompatible_paddle2onnx_says_so(monkeypatch):
    class RefusingFinder:  # paddle2onnx 2.x raises ValueError at import under Paddle 2.x
        def find_spec(self, name, path=None, target=None):
            if name == 'paddle2onnx':
                raise ValueError('The paddlepaddle version should not be less than 3.0.0')
            return None
    monkeypatch.delitem(sys.modules, 'paddle2onnx', raising=False)
    monkeypatch.setattr(sys, 'meta_path', [RefusingFinder()] + sys.meta_path)
    with pytest.raises(ValueError, match=r'--onnx: paddle2onnx cannot run with this Paddle .*use paddle2onnx<2'):
        check_onnx_export_available()


def test_exported_graph_has_the_exact_rewrites(export_dir):
    graph = Path(find_model_files(str(export_dir))[0]).read_bytes()
    assert b'batch_norm' not in graph  # folded into the depthwise convs
    assert b'sigmoid' not in graph and b'swish' in graph  # QuickGELU as one swish


def test_tensorrt_on_a_pir_export_is_refused_with_what_works(export_dir, monkeypatch):
    if not (export_dir / 'inference.json').is_file():
        pytest.skip('Paddle 2.x writes inference.pdmodel, which TensorRT runs')
    monkeypatch.setattr(paddle, 'is_compiled_with_cuda', lambda: True)  # the check a GPU build reaches
    monkeypatch.setattr(paddle.inference, 'get_trt_compile_version', lambda: (8, 6, 1))
    with pytest.raises(ValueError, match=r'--use_tensorrt: .*inference.json is a Paddle 3 \(PIR\) program.*'
                                         r'drop --use_tensorrt, or export with export_model.py --format pdmodel'):
        build_predictor(str(export_dir), read_inference_cfg(str(export_dir)), use_gpu=True, use_tensorrt=True)


def test_an_export_is_on_disk_before_its_folder_is_renamed_into_place(tmp_path, monkeypatch):
    import utils.fileio
    synced, real_fsync = [], utils.fileio._fsync

    def recording_fsync(path):
        synced.append(os.path.abspath(path))
        real_fsync(path)
    monkeypatch.setattr(utils.fileio, '_fsync', recording_fsync)
    out = export_tiny(tmp_path, 3)
    staged = {os.path.basename(p) for p in synced if os.path.basename(os.path.dirname(p)).startswith('.inference.tmp')}
    assert set(os.listdir(out)) <= staged  # every file of the export, fsynced in the staging folder
    assert str(tmp_path) in synced  # and the folder that holds the renamed export

"""ONNX export (paddle2onnx) and ONNX Runtime inference: parity with dygraph and with Paddle Inference."""
import json

import numpy as np
import paddle
import pytest
from PIL import Image

pytest.importorskip('onnx_graphsurgeon', reason='paddle2onnx would pip-install onnx-graphsurgeon during the export')
pytest.importorskip('onnxruntime', reason='ONNX parity needs onnxruntime (pip install onnxruntime)')
try:
    import paddle2onnx  # noqa: F401
except ImportError:
    pytest.skip('ONNX export needs paddle2onnx (pip install paddle2onnx onnx-graphsurgeon)', allow_module_level=True)
except ValueError as err:  # paddle2onnx 2.x refuses Paddle 2.x at import
    pytest.skip(f'paddle2onnx cannot run with Paddle {paddle.__version__}: {str(err)[:80]}', allow_module_level=True)

from cli import run_main  # noqa: E402
from tests.scripts import export_tiny, script_main  # noqa: E402

NUM_CLASSES = 3


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """(root, export dir) for cvt_tiny exported with --onnx, plus a few images."""
    root = tmp_path_factory.mktemp('onnx')
    (root / 'images').mkdir()
    rng = np.random.RandomState(0)
    for i, shape in enumerate([(60, 80, 3), (64, 64, 3), (50, 70)]):
        Image.fromarray(rng.randint(0, 256, shape, dtype=np.uint8)).save(root / 'images' / f'{i}.jpg')
    return root, export_tiny(root, NUM_CLASSES, '--onnx')


def test_onnx_model_matches_dygraph(exported, capsys):
    root, out = exported
    assert (out / 'model.onnx').is_file()
    capsys.readouterr()
    code = script_main('tools/check_export.py')(['--model_dir', str(out), '--resume', str(root / 'ckpt.pd'),
                                                  '--images', str(root / 'images')])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0, report
    assert report['onnxruntime']['ok'] and report['onnxruntime']['max_abs_prob_diff'] <= 1e-5
    assert report['onnxruntime']['topk_mismatches'] == 0


def test_infer_onnxruntime_backend_equals_paddle_backend(exported, capsys):
    root, out = exported
    results = {}
    for backend in ('paddle', 'onnxruntime'):
        capsys.readouterr()
        assert script_main('infer.py')(['--model_dir', str(out), '--input_file', str(root / 'images'),
                                         '--batch_size', '2', '--backend', backend]) == 0
        results[backend] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for a, b in zip(results['paddle'], results['onnxruntime']):
        assert (a['file_name'], a['class_ids']) == (b['file_name'], b['class_ids'])
        np.testing.assert_allclose(a['scores'], b['scores'], atol=2e-5)


def test_onnxruntime_backend_without_model_onnx(exported, tmp_path, capsys):
    root, out = exported
    for name in ('inference.yml', 'inference.json', 'inference.pdiparams'):
        if (out / name).exists():
            (tmp_path / name).write_bytes((out / name).read_bytes())
    with pytest.raises(SystemExit):
        run_main(script_main('infer.py'), ['--model_dir', str(tmp_path), '--input_file', str(root / 'images'),
                                            '--backend', 'onnxruntime'])
    err = capsys.readouterr().err.strip()
    assert err == f'error: {tmp_path / "model.onnx"}: not found (export with export_model.py --onnx)'

"""Both Paddle program formats: export_model.py --format pdmodel (the legacy program) beside json (PIR), each
checked against dygraph in Paddle Inference, the same inference.yml, ONNX from a pdmodel export, the process
left as it was after a legacy trace, and one-line refusals where the installed Paddle cannot write a format."""
import json

import numpy as np
import paddle
import pytest
import yaml

from deploy import export
from deploy.export import native_program_format
from deploy.layout import read_inference_cfg
from deploy.predictors import build_predictor
from models.layers import use_fused_attn
from tests.scripts import export_tiny, one_line_error, script_main

NUM_CLASSES = 3
LEGACY_ON_THIS_PADDLE = native_program_format() == 'json'  # Paddle 3: pdmodel is the switched-to format
pytestmark = pytest.mark.skipif(not hasattr(getattr(paddle, 'pir_utils', None), 'DygraphOldIrGuard')
                                and LEGACY_ON_THIS_PADDLE, reason='this Paddle 3 cannot switch to the legacy program')


def _onnx_available() -> bool:
    try:
        import onnx_graphsurgeon  # noqa: F401
        import onnxruntime  # noqa: F401
        import paddle2onnx  # noqa: F401
    except (ImportError, ValueError):  # paddle2onnx 2.x refuses Paddle 2.x at import
        return False
    return True


@pytest.fixture(scope='module')
def exports(tmp_path_factory):
    """(root, {'json': dir, 'pdmodel': dir}): the same seeded cvt_tiny checkpoint exported in both formats
    (the pdmodel one with --onnx where paddle2onnx is installed); json only where this Paddle writes it."""
    root = tmp_path_factory.mktemp('formats')
    dirs = {}
    for program_format in ('json', 'pdmodel') if LEGACY_ON_THIS_PADDLE else ('pdmodel',):
        sub = root / program_format
        sub.mkdir()
        flags = ['--onnx'] if program_format == 'pdmodel' and _onnx_available() else []
        dirs[program_format] = export_tiny(sub, NUM_CLASSES, '--format', program_format, *flags)
    return root, dirs


def _dygraph(root, batch):
    from cli import load_model
    model = load_model('cvt_tiny', resume=str(root / 'pdmodel' / 'ckpt.pd'), num_classes=NUM_CLASSES)
    with paddle.no_grad():
        return model(paddle.to_tensor(batch)).numpy()


def test_pdmodel_export_holds_the_legacy_program_only(exports):
    _, dirs = exports
    names = sorted(p.name for p in dirs['pdmodel'].iterdir())
    assert {'inference.pdmodel', 'inference.pdiparams', 'inference.yml'} <= set(names)
    assert 'inference.json' not in names and 'onnx_source' not in names
    assert not [p for p in dirs['pdmodel'].parent.iterdir() if p.name.startswith('.inference.tmp')]


@pytest.mark.parametrize('program_format', ['pdmodel', 'json'])
def test_each_format_matches_dygraph_in_paddle_inference(program_format, exports):
    root, dirs = exports
    if program_format not in dirs:
        pytest.skip(f'Paddle {paddle.__version__} writes no inference.json')
    out = dirs[program_format]
    batch = np.random.RandomState(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    logits = build_predictor(str(out), read_inference_cfg(str(out)), max_batch_size=3)(batch)
    np.testing.assert_allclose(logits, _dygraph(root, batch), atol=1e-5)


def test_both_formats_write_the_same_inference_yml(exports):
    _, dirs = exports
    if 'json' not in dirs:
        pytest.skip(f'Paddle {paddle.__version__} writes no inference.json')
    assert yaml.safe_load((dirs['pdmodel'] / 'inference.yml').read_text()) == \
        yaml.safe_load((dirs['json'] / 'inference.yml').read_text())


def test_infer_reads_a_pdmodel_export(exports, capsys):
    root, dirs = exports
    image = root / 'image.png'
    from PIL import Image
    Image.fromarray(np.random.RandomState(1).randint(0, 256, (70, 60, 3), dtype=np.uint8)).save(image)
    results = {}
    for program_format, out in dirs.items():
        capsys.readouterr()
        assert script_main('infer.py')(['--model_dir', str(out), '--images', str(image)]) == 0
        results[program_format] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    if 'json' in results:
        assert results['pdmodel'][0]['class_ids'] == results['json'][0]['class_ids']
        np.testing.assert_allclose(results['pdmodel'][0]['scores'], results['json'][0]['scores'], atol=2e-5)


def test_onnx_of_a_pdmodel_export_matches_its_paddle_graph(exports):
    _, dirs = exports
    out = dirs['pdmodel']
    if not (out / 'model.onnx').is_file():
        pytest.skip('ONNX export needs paddle2onnx, onnx-graphsurgeon and onnxruntime')
    cfg = read_inference_cfg(str(out))
    batch = np.random.RandomState(2).standard_normal((2, 3, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(build_predictor(str(out), cfg, backend='onnxruntime')(batch),
                               build_predictor(str(out), cfg, max_batch_size=2)(batch), atol=1e-5)


@pytest.mark.skipif(not LEGACY_ON_THIS_PADDLE, reason='the legacy trace is a switch on Paddle 3 only')
def test_a_legacy_trace_leaves_the_process_as_it_was(tmp_path, monkeypatch):
    """The switch is global (the PIR flag, paddle.matmul, the attention path): restored after a trace,
    and after a failed one."""
    from datasets.transforms import resolve_data_cfg
    from models import create_model
    from models.export_rewrites import rewrite_for_export
    model = rewrite_for_export(create_model('cvt_tiny', num_classes=NUM_CLASSES))
    data_cfg = resolve_data_cfg(model.default_cfg)
    before = (paddle.matmul, use_fused_attn(), paddle.framework.use_pir_api(), paddle.in_dynamic_mode())
    export.export_inference_model(model, str(tmp_path / 'ok'), 'cvt_tiny', data_cfg, program_format='pdmodel')
    assert (paddle.matmul, use_fused_attn(), paddle.framework.use_pir_api(), paddle.in_dynamic_mode()) == before

    def failing_save(*args, **kwargs):
        raise OSError('disk full')
    monkeypatch.setattr(paddle.jit, 'save', failing_save)
    with pytest.raises(OSError, match='disk full'):
        export.export_inference_model(model, str(tmp_path / 'failed'), 'cvt_tiny', data_cfg, program_format='pdmodel')
    assert (paddle.matmul, use_fused_attn(), paddle.framework.use_pir_api(), paddle.in_dynamic_mode()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['ok']


def _export_error(root, program_format, capsys) -> str:
    argv = ['--model', 'cvt_tiny', '--num_classes', str(NUM_CLASSES), '--resume', str(root / 'pdmodel' / 'ckpt.pd'),
            '--output', str(root / 'refused'), '--format', program_format]
    return one_line_error('export_model.py', argv, capsys)


def test_json_is_refused_where_paddle_writes_only_the_legacy_program(exports, monkeypatch, capsys):
    root, _ = exports
    monkeypatch.setattr(paddle.framework, 'use_pir_api', lambda: False)  # Paddle 2.6, or FLAGS_enable_pir_api=0
    err = _export_error(root, 'json', capsys)
    assert (f'--format json: Paddle {paddle.__version__} writes only the legacy program (inference.pdmodel); '
            f'inference.json needs Paddle 3 with its PIR API on; use --format pdmodel') in err
    assert not (root / 'refused').exists()


def test_pdmodel_is_refused_where_paddle_cannot_switch_to_it(exports, monkeypatch, capsys):
    root, _ = exports
    monkeypatch.setattr(paddle.framework, 'use_pir_api', lambda: True)
    monkeypatch.delattr(paddle.pir_utils, 'DygraphOldIrGuard', raising=False)
    err = _export_error(root, 'pdmodel', capsys)
    assert (f'--format pdmodel: Paddle {paddle.__version__} offers no switch to the legacy program '
            f'(paddle.pir_utils.DygraphOldIrGuard); use --format json') in err

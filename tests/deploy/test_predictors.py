"""OpenVINO and int8 deployment: OpenVINO fp32 parity with dygraph, int8 artefacts on ONNX Runtime and
OpenVINO close to fp32, bf16 only where the CPU runs it, and one-line refusals (missing packages and
models, int8 flags)."""
import json
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip('onnx_graphsurgeon', reason='paddle2onnx would pip-install onnx-graphsurgeon during the export')
pytest.importorskip('onnxruntime', reason='ONNX Runtime runs the int8 model (pip install onnxruntime)')
openvino = pytest.importorskip('openvino', reason='OpenVINO backend tests need openvino (pip install openvino)')
pytest.importorskip('nncf', reason='int8 export needs nncf (pip install nncf)')
try:
    import paddle2onnx  # noqa: F401
except (ImportError, ValueError) as err:  # paddle2onnx 2.x refuses Paddle 2.x at import
    pytest.skip(f'ONNX export unavailable: {str(err)[:80]}', allow_module_level=True)

from cli import run_main  # noqa: E402
from deploy import predictors  # noqa: E402
from deploy.layout import read_inference_cfg  # noqa: E402
from deploy.predictors import build_predictor, graph_to_probs, missing_bf16_flags  # noqa: E402
from tests.scripts import export_tiny, one_line_error, script_main  # noqa: E402
from utils.env import cpu_summary  # noqa: E402

NUM_CLASSES = 3
NO_BF16_CPUINFO = 'flags\t\t: fpu sse2 avx avx2 fma\n'  # a Zen 3's, as far as bf16 goes
BF16_CPUINFO = 'flags\t\t: avx2 avx512f avx512_vnni avx512_bf16\n'  # a Zen 4's
NO_BF16 = missing_bf16_flags(cpu_summary()) or (
    None if 'BF16' in openvino.Core().get_property('CPU', 'OPTIMIZATION_CAPABILITIES')
    else "OpenVINO's CPU plugin reports no bf16 math on this CPU")


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """(root, export dir): cvt_tiny exported with --onnx --int8, calibrated on a few small photos-like images."""
    root = tmp_path_factory.mktemp('deploy')
    (root / 'images').mkdir()
    rng = np.random.RandomState(0)
    for i in range(6):  # smooth images (not white noise), so activations have realistic ranges
        base = rng.randint(0, 256, (6, 6, 3), dtype=np.uint8)
        Image.fromarray(base).resize((72, 64), Image.BILINEAR).save(root / 'images' / f'{i}.png')
    out = export_tiny(root, NUM_CLASSES, '--onnx', '--int8', '--calib_images', str(root / 'images'),
                      '--calib_count', '4')
    return root, out


def _infer(out, images, capsys, *flags):
    capsys.readouterr()
    assert script_main('infer.py')(['--model_dir', str(out), '--input_file', str(images), *flags]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_int8_export_writes_quantised_models_and_records_calibration(exported):
    import onnx
    _, out = exported
    ops = {node.op_type for node in onnx.load(str(out / 'model_int8.onnx')).graph.node}
    assert {'DynamicQuantizeLinear', 'MatMulInteger'} <= ops
    ir_ops = {op.get_type_name() for op in openvino.Core().read_model(str(out / 'openvino_int8.xml')).get_ops()}
    assert 'FakeQuantize' in ir_ops
    assert read_inference_cfg(str(out))['int8_calibration_images'] == 4


def test_check_export_covers_openvino(exported, capsys):
    root, out = exported
    capsys.readouterr()
    code = script_main('tools/check_export.py')(['--model_dir', str(out), '--resume', str(root / 'ckpt.pd'),
                                                  '--images', str(root / 'images')])
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0, report
    assert report['openvino']['ok'] and report['openvino']['max_abs_prob_diff'] <= 1e-5


@pytest.mark.parametrize('backend', ['onnxruntime', 'openvino'])
def test_int8_runs_close_to_fp32(exported, backend):
    root, out = exported
    cfg = read_inference_cfg(str(out))
    batch = np.random.RandomState(1).standard_normal((2, 3, 64, 64)).astype(np.float32) * 0.5
    fp32 = graph_to_probs(build_predictor(str(out), cfg, backend='onnxruntime')(batch), cfg)
    int8 = graph_to_probs(build_predictor(str(out), cfg, backend=backend, precision='int8')(batch), cfg)
    assert int8.shape == fp32.shape
    assert np.abs(int8 - fp32).max() < 0.05  # int8 rounding, not a different model
    assert not np.array_equal(int8, fp32)  # the quantised graph really ran


def test_infer_openvino_and_int8_flags(exported, capsys):
    root, out = exported
    paddle_results = _infer(out, root / 'images', capsys)
    openvino_results = _infer(out, root / 'images', capsys, '--backend', 'openvino', '--batch_size', '2')
    for a, b in zip(paddle_results, openvino_results):
        assert (a['file_name'], a['class_ids']) == (b['file_name'], b['class_ids'])
        np.testing.assert_allclose(a['scores'], b['scores'], atol=2e-5)
    assert len(_infer(out, root / 'images', capsys, '--backend', 'openvino', '--precision', 'int8')) == 6


@pytest.mark.skipif(NO_BF16 is not None, reason=f'bf16 cannot be measured here: {NO_BF16}')
def test_openvino_bf16_is_close_to_fp32(exported):
    _, out = exported
    cfg = read_inference_cfg(str(out))
    batch = np.random.RandomState(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    fp32 = graph_to_probs(build_predictor(str(out), cfg, backend='openvino')(batch), cfg)
    bf16 = graph_to_probs(build_predictor(str(out), cfg, backend='openvino', precision='bf16')(batch), cfg)
    assert np.abs(bf16 - fp32).max() < 0.05


def _infer_error(argv, capsys) -> str:
    return one_line_error('infer.py', argv, capsys)


@pytest.mark.parametrize('cpuinfo, expected', [
    (NO_BF16_CPUINFO, '--precision bf16: this CPU lists neither avx512_bf16 nor amx_bf16 in /proc/cpuinfo, '
                    'so OpenVINO would run fp32'),
    (BF16_CPUINFO, '--precision bf16: OpenVINO reports no bf16 math (FP32, INT8), so OpenVINO would run fp32'),
])
def test_bf16_refusal_names_the_missing_cpu_flag(cpuinfo, expected, exported, monkeypatch, capsys):
    root, out = exported
    monkeypatch.setattr(predictors, 'openvino_cpu_capabilities', lambda core: ['FP32', 'INT8'])
    monkeypatch.setattr(predictors, 'cpu_summary', lambda: cpu_summary(cpuinfo))
    err = _infer_error(['--model_dir', str(out), '--input_file', str(root / 'images'), '--backend', 'openvino',
                        '--precision', 'bf16'], capsys)
    assert expected in err


def test_paddle_inference_bf16_refusal_names_the_missing_cpu_flag(exported, monkeypatch, capsys):
    root, out = exported
    monkeypatch.setattr(predictors, 'cpu_summary', lambda: cpu_summary(NO_BF16_CPUINFO))
    err = _infer_error(['--model_dir', str(out), '--input_file', str(root / 'images'), '--precision', 'bf16'],
                       capsys)
    assert ('--precision bf16 is not offered on Paddle Inference: this CPU lists neither avx512_bf16 nor amx_bf16 '
            'in /proc/cpuinfo') in err


@pytest.mark.parametrize('flags, expected', [
    (['--backend', 'onnxruntime', '--precision', 'bf16'], '--backend onnxruntime runs --precision fp32 or int8'),
    (['--backend', 'openvino', '--use_gpu'], '--backend openvino runs on the CPU here'),
])
def test_unservable_precisions_are_refused(flags, expected, exported, capsys):
    root, out = exported
    assert expected in _infer_error(['--model_dir', str(out), '--input_file', str(root / 'images'), *flags], capsys)


def test_missing_openvino_says_what_to_install(exported, monkeypatch, capsys):
    root, out = exported
    monkeypatch.setitem(sys.modules, 'openvino', None)
    err = _infer_error(['--model_dir', str(out), '--input_file', str(root / 'images'), '--backend', 'openvino'],
                       capsys)
    assert '--backend openvino needs openvino, which is not installed: pip install openvino' in err


def test_int8_without_the_int8_model_names_the_export_flag(exported, tmp_path, capsys):
    root, out = exported
    for name in ('inference.yml', 'model.onnx'):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    err = _infer_error(['--model_dir', str(tmp_path), '--input_file', str(root / 'images'), '--backend',
                        'onnxruntime', '--precision', 'int8'], capsys)
    assert 'model_int8.onnx: not found (export with export_model.py --onnx --int8 --calib_images DIR)' in err


@pytest.mark.parametrize('flags, expected', [
    (['--int8', '--calib_images', '.'], '--int8 quantises model.onnx or inference.pdmodel: add --onnx, or '
                                        '--format pdmodel (Paddle Inference int8)'),
    (['--onnx', '--int8'], '--int8 needs --calib_images DIR'),
    (['--onnx', '--calib_images', '.'], '--calib_images is read only with --int8'),
    (['--onnx', '--int8', '--calib_images', '.', '--batch_size', '2'], 'export with --batch_size -1'),
])
def test_int8_export_flag_errors(flags, expected, exported, tmp_path, capsys):
    root, _ = exported
    with pytest.raises(SystemExit):
        run_main(script_main('export_model.py'), ['--model', 'cvt_tiny', '--num_classes', str(NUM_CLASSES),
                                                   '--resume', str(root / 'ckpt.pd'), '--output',
                                                   str(tmp_path / 'x'), *flags])
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize('capabilities, hint', [(['FP32', 'BF16', 'INT8'], 'bf16'), (['FP32', 'INT8'], 'f32')])
def test_openvino_int8_runs_its_unquantised_ops_in_bf16_where_the_cpu_has_it(capabilities, hint, exported,
                                                                             monkeypatch):
    """The int8 graph's fp32 remainder (softmax, LayerNorm, residual adds) takes the bf16 hint where OpenVINO
    reports bf16 math, f32 elsewhere; fp32 stays f32 either way."""
    _, out = exported
    compiled = []
    compile_model = openvino.Core.compile_model
    monkeypatch.setattr(predictors, 'openvino_cpu_capabilities', lambda core: capabilities)
    monkeypatch.setattr(openvino.Core, 'compile_model',
                        lambda self, model, device, config: compiled.append(config) or compile_model(
                            self, model, device, config))
    cfg = read_inference_cfg(str(out))
    for precision in ('int8', 'fp32'):
        build_predictor(str(out), cfg, backend='openvino', precision=precision)
    assert [c['INFERENCE_PRECISION_HINT'] for c in compiled] == [hint, 'f32']

"""tools/benchmark.py: one-iteration runs on cvt_tiny in both modes, mode defaults, the tables, the exports a run writes."""
import json
import os

import pytest

from tools.benchmark import REFERENCE, build_parser, format_table, main, resolve_mode_defaults
from utils.env import ISA_FLAGS, cpu_summary, format_cpu_summary


@pytest.mark.parametrize('mode', ['infer', 'train'])
def test_one_iteration_writes_json(tmp_path, capsys, mode):
    out = tmp_path / 'bench.json'
    code = main(['--mode', mode, '--model', 'cvt_tiny', '--backends', 'dygraph', '--batch_sizes', '2',
                 '--threads', '1', '--warmup', '0', '--iters', '1', '--output_json', str(out)])
    assert code == 0
    stdout = capsys.readouterr().out.strip().splitlines()
    record = json.loads(out.read_text())
    assert json.loads(stdout[-1]) == record
    assert stdout[-2].startswith('dygraph') and 'b2 img/s' in stdout[-3]
    assert (record['model'], record['mode'], record['threads'], record['iters']) == ('cvt_tiny', mode, 1, 1)
    seconds = record['median_seconds']['dygraph']['2']
    assert seconds > 0 and record['images_per_second']['dygraph']['2'] == pytest.approx(2 / seconds)
    assert list(record['median_seconds']) == ['dygraph'] and len(record['load_average']) == 2
    assert stdout[-4].startswith('CPU: ') and list(record['cpu']['flags']) == list(ISA_FLAGS)


def test_cpu_line_names_model_family_and_isa_flags():
    zen3 = ('processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n'
            'flags\t\t: fpu sse2 avx avx2 fma vaes\n\nprocessor\t: 1\nmodel name\t: other\n')
    cpu = cpu_summary(zen3)
    assert (cpu['model_name'], cpu['family'], cpu['model']) == ('AMD EPYC', '25', '1')
    assert format_cpu_summary(cpu) == ('CPU: AMD EPYC (family 25, model 1); /proc/cpuinfo lists avx2; '
                                       'not avx512f, avx512_vnni, avx_vnni, avx512_bf16, amx_bf16, amx_int8')
    assert format_cpu_summary(cpu_summary('')).endswith('lists none of ' + ', '.join(ISA_FLAGS))


def test_train_mode_defaults_and_unsupported_backend():
    args = resolve_mode_defaults(build_parser().parse_args(['--mode', 'train']))
    assert args.batch_sizes == [16] and args.backends == ['dygraph', REFERENCE]
    infer = resolve_mode_defaults(build_parser().parse_args([]))
    assert infer.batch_sizes == [1, 32] and 'paddle_inference' in infer.backends
    with pytest.raises(ValueError, match='--mode train times only dygraph'):
        resolve_mode_defaults(build_parser().parse_args(['--mode', 'train', '--backends', 'onnxruntime']))


def test_table_ratio_is_ours_over_torch_and_train_batch1_is_images_per_second():
    results = {'dygraph': {1: 0.5, 16: 4.0}, REFERENCE: {1: 1.0, 16: 8.0}}
    train = format_table(results, [1, 16], mode='train').splitlines()
    assert train[0].split() == ['backend', 'b1', 'img/s', 'b16', 'img/s', 'b1', 'vs', 'torch', 'b16', 'vs', 'torch']
    assert train[1].split() == ['dygraph', '2.0', '4.0', '2.00x', '2.00x']
    assert train[2].split() == [REFERENCE, '1.0', '2.0', '1.00x', '1.00x']
    assert format_table(results, [1], mode='infer').splitlines()[1].split()[:2] == ['dygraph', '500.0']


def test_accuracy_columns_compare_each_row_with_dygraph():
    from tools.benchmark import accuracy_cost
    cost = accuracy_cost({'dygraph': [0.7, 0.2, 0.1], 'openvino_int8': [0.4, 0.5, 0.1], REFERENCE: None})
    assert cost['dygraph'] == (0.0, True)
    assert cost['openvino_int8'][0] == pytest.approx(0.3) and cost['openvino_int8'][1] is False
    table = format_table({'dygraph': {1: 0.5}, 'openvino_int8': {1: 0.1}}, [1], accuracy=cost).splitlines()
    assert table[0].split()[-3:] == ['max', '|dprob|', 'top-1']
    assert table[2].split()[-2:] == ['3.0e-01', 'CHANGED'] and table[1].split()[-2:] == ['0.0e+00', 'same']


def _photo(tmp_path):
    from PIL import Image
    import numpy as np
    image = tmp_path / 'photo.png'
    Image.fromarray(np.random.RandomState(0).randint(0, 256, (8, 8, 3), dtype=np.uint8)).resize((80, 70)).save(image)
    return image


def test_deployed_rows_and_refusals_on_cvt_tiny(tmp_path, capsys):
    """Every exported row runs (or is skipped with its reason) and gets an accuracy cost."""
    pytest.importorskip('openvino', reason='the OpenVINO rows need openvino')
    pytest.importorskip('nncf', reason='the int8 rows need nncf')
    try:
        import paddle2onnx  # noqa: F401  (OpenVINO reads the ONNX export)
    except (ImportError, ValueError) as err:  # paddle2onnx 2.x refuses Paddle 2.x at import
        pytest.skip(f'the OpenVINO rows need a working paddle2onnx: {str(err)[:80]}')
    out = tmp_path / 'bench.json'
    assert main(['--model', 'cvt_tiny', '--batch_sizes', '2', '--threads', '1', '--warmup', '0', '--iters', '1',
                 '--image', str(_photo(tmp_path)), '--backends', 'dygraph', 'openvino_bf16', 'openvino_int8',
                 '--output_json', str(out)]) == 0
    record = json.loads(out.read_text())
    timed = set(record['median_seconds'])
    assert {'dygraph', 'openvino_int8'} <= timed  # bf16: timed or skipped, as this CPU allows
    assert timed | set(record['skipped']) == {'dygraph', 'openvino_bf16', 'openvino_int8'}
    accuracy = record['accuracy_vs_dygraph']
    assert 0 < accuracy['openvino_int8']['max_abs_prob_diff'] < 0.1


def test_torch_side_worker_runs_without_paddle():
    # The PyTorch reference runs this script as a worker under a Python that has torch but no paddle.
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    code = ("import sys, runpy; sys.modules['paddle'] = None; "  # any `import paddle` now fails
            "sys.argv = ['tools/benchmark.py', '--worker', 'torch_hf_eager', '--worker_args', '{}']; "
            "runpy.run_path('tools/benchmark.py', run_name='__main__')")
    proc = subprocess.run([sys.executable, '-c', code], cwd=root, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0  # an empty spec, or no torch here: the worker itself fails, after start-up
    assert 'import of paddle halted' not in proc.stderr, proc.stderr[-2000:]


def test_paddle_inference_bf16_and_int8_rows_on_cvt_tiny(tmp_path, capsys):
    """Paddle Inference's reduced precisions run from the legacy-program export (int8: its PTQ copy)."""
    from deploy.predictors import missing_bf16_flags
    out = tmp_path / 'bench.json'
    assert main(['--model', 'cvt_tiny', '--batch_sizes', '2', '--threads', '1', '--warmup', '0', '--iters', '1',
                 '--image', str(_photo(tmp_path)), '--backends', 'dygraph', 'paddle_inference_bf16',
                 'paddle_inference_int8', '--output_json', str(out)]) == 0
    record = json.loads(out.read_text())
    accuracy = record['accuracy_vs_dygraph']
    assert 0 < accuracy['paddle_inference_int8']['max_abs_prob_diff'] < 0.1
    import paddle
    if missing_bf16_flags(cpu_summary()) or not paddle.base.core.supports_bfloat16():  # refused, in one line
        assert record['skipped'] == ['paddle_inference_bf16']
        assert 'paddle_inference_bf16: skipped (--precision bf16 is not offered' in capsys.readouterr().out
    else:
        assert 0 < accuracy['paddle_inference_bf16']['max_abs_prob_diff'] < 0.1


def test_each_export_is_written_only_for_the_rows_asked(monkeypatch):
    """bf16/int8 Paddle Inference rows get the legacy program (PTQ'd only for int8); ONNX only for its rows."""
    import deploy.export
    import tools.benchmark as benchmark
    exports = {}

    def export_inference_model(model, output_dir, model_name, data_cfg, **options):
        exports[os.path.basename(output_dir)] = dict(options, calib_batches=len(options['calib_batches'] or []))
    monkeypatch.setattr(deploy.export, 'export_inference_model', export_inference_model)
    monkeypatch.setattr(benchmark, '_time_backend', lambda *args: {'seconds': {1: 1.0}, 'probs': None})
    monkeypatch.setattr(benchmark, '_has_module', lambda python, *modules: True)
    run = ['--model', 'cvt_tiny', '--batch_sizes', '1', '--image', 'none.png', '--backends']
    assert main(run + ['paddle_inference_bf16']) == 0
    assert exports == {'pdmodel': dict(onnx=False, calib_batches=0, program_format='pdmodel')}
    exports.clear()
    assert main(run + ['paddle_inference', 'paddle_inference_int8', 'onnxruntime']) == 0
    assert exports == {'export': dict(onnx=True, calib_batches=0, program_format=None),
                       'pdmodel': dict(onnx=False, calib_batches=benchmark.CALIB_CROPS, program_format='pdmodel')}

"""tools/benchmark.py: one-iteration runs on cvt_tiny, the tables, the exports a run writes, torch's rows."""
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


def test_vs_torch_export_is_ours_over_theirs_images_per_second_for_pairs_timed_on_both_sides():
    from tools.benchmark import format_vs_torch_export, vs_torch_export
    results = {'onnxruntime': {1: 0.1, 32: 2.0}, 'torch_onnx_onnxruntime': {1: 0.2, 32: 1.0},
               'openvino_bf16': {1: 0.1, 32: 1.0}, 'torch_onnx_openvino_bf16': {1: 0.25, 32: 4.0},
               'openvino': {1: 0.1, 32: 1.0},  # theirs missing (e.g. skipped): no ratio
               'torch_onnx_onnxruntime_int8': {1: 0.1, 32: 1.0}, REFERENCE: {1: 0.3, 32: 3.0}}
    ratios = vs_torch_export(results)
    assert ratios == {'onnxruntime': {1: pytest.approx(2.0), 32: pytest.approx(0.5)},
                      'openvino_bf16': {1: pytest.approx(2.5), 32: pytest.approx(4.0)}}
    table = format_vs_torch_export(ratios, [1, 32]).splitlines()
    assert [line.split() for line in table] == [['ours', '/', 'torch.onnx.export', 'b1', 'b32'],
                                                ['onnxruntime', '2.00x', '0.50x'], ['openvino_bf16', '2.50x', '4.00x']]


def test_ratio_table_and_torch_export_in_the_json_record(tmp_path, monkeypatch, capsys):
    """Timings faked: the run prints the ratio table after the main one, and records it and the exporter."""
    import tools.benchmark as benchmark
    seconds = {'onnxruntime': 0.5, 'torch_onnx_onnxruntime': 1.0, 'openvino': 1.0, 'torch_onnx_openvino': 0.5}
    monkeypatch.setattr(benchmark, '_has_module', lambda python, *modules: True)
    monkeypatch.setattr(benchmark, '_export', lambda spec, export, rows: None)
    monkeypatch.setattr(benchmark, '_export_torch', lambda python, spec, rows, threads: dict(
        exporter='dynamo', torch_version='2.99', transformers_version='9.9'))
    monkeypatch.setattr(benchmark, '_time_backend', lambda python, backend, spec, args: dict(
        seconds={b: seconds[backend] * b for b in args.batch_sizes}, probs=None))
    out = tmp_path / 'bench.json'
    assert main(['--model', 'cvt_tiny', '--batch_sizes', '1', '4', '--image', 'none.png', '--output_json', str(out),
                 '--backends', *seconds]) == 0
    record = json.loads(out.read_text())
    assert record['vs_torch_export'] == {'onnxruntime': {'1': 2.0, '4': 2.0}, 'openvino': {'1': 0.5, '4': 0.5}}
    assert record['torch_export']['exporter'] == 'dynamo' and list(record['cpu']['flags']) == list(ISA_FLAGS)
    stdout = capsys.readouterr().out.strip().splitlines()
    assert stdout[-5].startswith("Ours / the PyTorch user's export (torch.onnx.export, dynamo exporter, torch 2.99)")
    assert [line.split()[0] for line in stdout[-4:-1]] == ['ours', 'onnxruntime', 'openvino']


def test_torch_rows_skipped_in_one_line_when_torch_python_cannot_import_torch(tmp_path, monkeypatch, capsys):
    import tools.benchmark as benchmark
    from tools.benchmark import TORCH_EXPORT_PAIRS
    no_torch = tmp_path / 'python'
    no_torch.write_text('#!/bin/sh\nexit 1\n')  # every import fails
    no_torch.chmod(0o755)
    monkeypatch.setattr(benchmark, '_export_torch', lambda *args: pytest.fail('exported with no torch'))
    assert main(['--model', 'cvt_tiny', '--batch_sizes', '1', '--threads', '1', '--warmup', '0', '--iters', '1',
                 '--image', 'none.png', '--torch_python', str(no_torch),
                 '--backends', 'dygraph', REFERENCE, *TORCH_EXPORT_PAIRS]) == 0
    stdout = capsys.readouterr().out.splitlines()
    for backend in (REFERENCE, *TORCH_EXPORT_PAIRS):
        assert f'{backend}: skipped ({no_torch} cannot import torch and transformers; see --torch_python)' in stdout
    assert json.loads(stdout[-1])['median_seconds'].keys() == {'dygraph'}


def _torch_python():
    """The python of CVT_TORCH_PYTHON when it can import torch, transformers and onnxscript, else None."""
    import subprocess
    python = os.environ.get('CVT_TORCH_PYTHON')
    try:
        usable = python and subprocess.run([python, '-c', 'import torch, transformers, onnxscript'],
                                           capture_output=True, timeout=120).returncode == 0
    except OSError:
        usable = False
    return python if usable else None


@pytest.mark.skipif(_torch_python() is None, reason='set CVT_TORCH_PYTHON to a python with torch, transformers '
                                                    'and onnxscript to run the torch.onnx.export worker')
def test_torch_export_worker_matches_torch_eager_in_onnxruntime(tmp_path):
    """The torch side for real: set CVT_TORCH_PYTHON (e.g. /tmp/torchref/bin/python) to a python with torch,
    transformers and onnxscript; skipped when it is unset or cannot import them. Their ONNX, exported at
    batch 2, gives torch eager's logits in onnxruntime at batch 1 and 3."""
    import subprocess
    from pathlib import Path
    import numpy as np
    onnxruntime = pytest.importorskip('onnxruntime', reason='the check runs the export in onnxruntime')
    from tools.benchmark import TORCH_INPUT_NAME, _model_spec, _random_batch
    root, python = Path(__file__).resolve().parents[2], _torch_python()
    spec = _model_spec('cvt_tiny', 1, {}, None)
    spec['depths'] = [1, 2, 3]  # the fewest blocks per stage transformers' CvT builds
    onnx_file = tmp_path / 'torch_export' / 'model.onnx'
    proc = subprocess.run([python, 'tools/benchmark.py', '--torch_export', str(onnx_file), '--worker_args',
                           json.dumps(spec)], cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1])['exporter'] in ('dynamo', 'torchscript')
    eager = ("import json, sys, torch; sys.path.insert(0, '.'); from tools.benchmark import _torch_model, "
             "_random_batch; spec = json.loads(sys.argv[1]); model = _torch_model(spec, training=False)\n"
             "with torch.inference_mode(): print(json.dumps({n: model(pixel_values=torch.from_numpy("
             "_random_batch(spec, n)[0])).logits.tolist() for n in (1, 3)}))")
    proc = subprocess.run([python, '-c', eager, json.dumps(spec)], cwd=root, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    logits = json.loads(proc.stdout.splitlines()[-1])
    session = onnxruntime.InferenceSession(str(onnx_file))
    for n in (1, 3):
        exported = session.run(None, {TORCH_INPUT_NAME: _random_batch(spec, n)[0]})[0]
        assert exported.shape == (n, spec['num_classes'])
        np.testing.assert_allclose(exported, np.asarray(logits[str(n)]), atol=1e-4, rtol=0)


def test_rounds_interleave_the_rows_and_keep_each_rows_fastest_round(tmp_path, monkeypatch, capsys):
    """--rounds 3: every row is timed once per round, round after round (not three times in a row), and keeps
    its fewest seconds per batch size; a row that fails is not asked again."""
    import tools.benchmark as benchmark
    calls = []
    slow_spell = {('onnxruntime', 0): 3.0, ('openvino', 1): 5.0}  # a busy machine in one round for each

    def time_backend(python, backend, spec, args):
        calls.append(backend)
        if backend == 'openvino_bf16':
            return None
        round_index = calls.count(backend) - 1
        factor = slow_spell.get((backend, round_index), 1.0 + 0.1 * round_index)
        return dict(seconds={b: factor * b for b in args.batch_sizes}, probs=None)

    monkeypatch.setattr(benchmark, '_has_module', lambda python, *modules: True)
    monkeypatch.setattr(benchmark, '_export', lambda spec, export, rows: None)
    monkeypatch.setattr(benchmark, '_time_backend', time_backend)
    out = tmp_path / 'bench.json'
    assert main(['--model', 'cvt_tiny', '--batch_sizes', '1', '2', '--image', 'none.png', '--rounds', '3',
                 '--backends', 'onnxruntime', 'openvino', 'openvino_bf16', '--output_json', str(out)]) == 0
    assert calls == ['onnxruntime', 'openvino', 'openvino_bf16', 'onnxruntime', 'openvino', 'onnxruntime', 'openvino']
    record = json.loads(out.read_text())
    assert record['median_seconds'] == {'onnxruntime': {'1': 1.1, '2': 2.2}, 'openvino': {'1': 1.0, '2': 2.0}}
    assert record['rounds'] == 3 and record['skipped'] == ['openvino_bf16']
    with pytest.raises(ValueError, match='--rounds must be >= 1, got 0'):
        resolve_mode_defaults(build_parser().parse_args(['--rounds', '0']))

"""On the real ImageNet val photo (../shared/reference), with weights converted from the independent PyTorch
reference (tests/fixtures/parity/official.pth), predict.py and the exported infer.py agree."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / 'tests' / 'fixtures' / 'parity' / 'official.pth'


def _run(*args):
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_predict_and_exported_infer_agree_on_the_val_photo(shared_reference, tmp_path):
    image = shared_reference / 'ILSVRC2012_val_00020010.JPEG'
    weights = tmp_path / 'cvt_tiny_ref.pdparams'
    _run('tools/convert_weights.py', WEIGHTS, weights, '--model', 'cvt_tiny', '--num_classes', '10')
    common = ['--model', 'cvt_tiny', '--pretrained', weights, '--num_classes', '10']
    _run('predict.py', '--infer_imgs', image, *common, '--topk', '5', '--output_json', tmp_path / 'predict.json')
    _run('export_model.py', *common, '--output', tmp_path / 'export')
    _run('infer.py', '--model_dir', tmp_path / 'export', '--input_file', image, '--topk', '5',
         '--output_json', tmp_path / 'infer.json')
    dygraph = json.loads((tmp_path / 'predict.json').read_text())
    deployed = json.loads((tmp_path / 'infer.json').read_text())
    assert len(dygraph) == len(deployed) == 1
    assert dygraph[0]['class_ids'] == deployed[0]['class_ids']
    # scores are printed to 5 decimals: within 1e-5 of each other, plus one rounding step
    assert np.abs(np.array(dygraph[0]['scores']) - np.array(deployed[0]['scores'])).max() <= 2e-5
    assert Path(dygraph[0]['file_name']).name == image.name

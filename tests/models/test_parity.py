"""Logit parity with a PyTorch reference of the official CvT, on committed tiny fixtures (no torch needed).

The fixtures come from tools/dev/make_parity_fixtures.py (transformers' CvT with QuickGELU, random weights,
saved in the official microsoft/CvT layout and as Hugging Face .bin/.safetensors); see its docstring to
regenerate them.
"""
import json
from pathlib import Path

import numpy as np
import paddle
import pytest

from models import create_model
from models import load_weights

FIXTURES = Path(__file__).resolve().parents[1] / 'fixtures' / 'parity'
META = json.loads((FIXTURES / 'meta.json').read_text())
WEIGHT_FILES = sorted(META['weights'].values())
CASES = {case['size']: case for case in META['cases']}
TOL = 1e-5


def _tiny_with(filename: str):
    model = create_model('cvt_tiny', num_classes=META['num_classes'])
    load_weights(model, str(FIXTURES / filename))
    model.eval()
    return model


def _run(model, size: str) -> np.ndarray:
    with paddle.no_grad():
        return model(paddle.to_tensor(np.load(FIXTURES / CASES[size]['input']))).numpy()


def _reference(size: str) -> np.ndarray:
    return np.load(FIXTURES / CASES[size]['logits'])


@pytest.fixture(scope='module')
def logits():
    """{weight file: {input size: our logits}}, each file loaded into a fresh cvt_tiny."""
    return {name: {size: _run(model, size) for size in CASES}
            for name, model in ((name, _tiny_with(name)) for name in WEIGHT_FILES)}


def test_fixtures_cover_every_format_and_an_odd_size():
    assert set(META['weights']) == {'official', 'bin', 'safetensors'}
    assert '64x64' in CASES and any(h != w for h, w in (map(int, s.split('x')) for s in CASES))


@pytest.mark.parametrize('size', sorted(CASES))
@pytest.mark.parametrize('filename', WEIGHT_FILES)
def test_logits_match_reference(logits, filename, size):
    ours, reference = logits[filename][size], _reference(size)
    assert ours.shape == reference.shape == (META['batch'], META['num_classes'])
    assert np.abs(ours - reference).max() <= TOL


@pytest.mark.parametrize('size', sorted(CASES))
def test_hugging_face_files_match_official_file(logits, size):
    official = logits[META['weights']['official']][size]
    for fmt in ('bin', 'safetensors'):
        np.testing.assert_array_equal(logits[META['weights'][fmt]][size], official)


def test_reference_tells_quickgelu_from_exact_gelu():
    # Guards the fixture itself: its random weights must be strong enough that the official activation
    # (QuickGELU) and exact GELU give logits far apart, or the parity tests above would prove little.
    model = _tiny_with(META['weights']['official'])
    for name, layer in model.named_sublayers():
        if name.endswith('.mlp'):
            layer.act = paddle.nn.GELU()
    assert np.abs(_run(model, '64x64') - _reference('64x64')).max() > 100 * TOL

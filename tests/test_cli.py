"""cli.py: one image flag under three spellings in every script, and a checkpoint read once by load_model."""
import runpy

import numpy as np
import pytest

from cli import load_model
from models import create_model
from tests.scripts import ROOT
from utils import torch_pickle
from utils.weights import save_checkpoint


@pytest.mark.parametrize('script, required', [('predict.py', ['--model', 'cvt_tiny']),
                                              ('infer.py', ['--model_dir', 'export']),
                                              ('tools/check_export.py', ['--model_dir', 'export'])])
@pytest.mark.parametrize('flag', ['--images', '--infer_imgs', '--input_file'])
def test_every_image_script_takes_every_spelling(script, required, flag):
    args = runpy.run_path(str(ROOT / script))['build_parser']().parse_args([*required, flag, 'a.png', 'dir/'])
    assert args.images == ['a.png', 'dir/']


def test_load_model_reads_a_checkpoint_once_for_its_settings_and_weights(tmp_path, monkeypatch):
    source = create_model('cvt_tiny', num_classes=3)
    path = tmp_path / 'checkpoint-best.pd'
    save_checkpoint({'model': source.state_dict(), 'model_ema': None, 'epoch': 2,
                     'args': {'num_classes': 3, 'input_size': 72, 'crop_pct': 0.9, 'interpolation': 'bilinear'}},
                    str(path))
    unpickled = []
    real_load = torch_pickle._RestrictedUnpickler.load
    monkeypatch.setattr(torch_pickle._RestrictedUnpickler, 'load', lambda self: unpickled.append(1) or real_load(self))
    model = load_model('cvt_tiny', resume=str(path))
    assert len(unpickled) == 1  # not once for the run settings and again for the weights
    assert model.num_classes == 3 and model.default_cfg['input_size'][-1] == 72
    for name, value in source.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[name].numpy(), value.numpy(), err_msg=name)

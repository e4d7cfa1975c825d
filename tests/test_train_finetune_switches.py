"""train.py with --freeze_stages, --bn_eval and --layer_decay end to end: frozen weights and every BatchNorm
statistic as loaded, resumed with the same switches, a changed --layer_decay reported, a changed
--freeze_stages refused."""
import numpy as np
import paddle
import pytest

from models import create_model
from tests.test_train import PLAIN, _train, digits  # noqa: F401  (digits: the module's dataset fixture)
from training.checkpoint import load_training_state
from utils.weights import save_state_dict

SWITCHES = ['--batch_size', '16', '--lr', '1e-2', '--warmup_epochs', '0', '--bn_eval', '--freeze_stages', '1',
            '--layer_decay', '0.75']


@pytest.mark.slow
def test_frozen_stage_and_statistics_survive_training_and_resume(digits, tmp_path, capsys):  # noqa: F811
    paddle.seed(1)
    start = {n: v.numpy() for n, v in create_model('cvt_tiny', num_classes=10).state_dict().items()}
    weights = tmp_path / 'start.pdparams'
    save_state_dict(start, str(weights))
    assert _train(digits, tmp_path, '--epochs', '1', '--finetune', str(weights), *SWITCHES) == 0
    run = tmp_path / 'run'
    out = capsys.readouterr().out  # the model is built before the run folder (and train.log) is known
    assert 'freeze_stages 1: stage0 frozen' in out and 'bn_eval: 9 BatchNorms' in out
    assert 'layer decay 0.75 over 3 blocks, LR scale by depth (trained tensors): 1: x0.5625' in out
    assert _train(digits, tmp_path, '--epochs', '2', *SWITCHES) == 0  # auto-resume with the same switches
    assert 'resumed from' in capsys.readouterr().out
    ckpt = load_training_state(str(run / 'checkpoint-latest.pd'))
    assert (ckpt['epoch'], ckpt['args']['freeze_stages'], ckpt['args']['bn_eval']) == (2, 1, True)
    kept = [n for n in start if n.startswith('stage0.') or n.endswith(('._mean', '._variance'))]
    for name in kept:
        np.testing.assert_array_equal(ckpt['model'][name], start[name], err_msg=name)
    assert not np.array_equal(ckpt['model']['stage1.blocks.0.mlp.fc1.weight'], start['stage1.blocks.0.mlp.fc1.weight'])
    assert not np.array_equal(ckpt['model']['stage2.blocks.0.attn.conv_proj_k.bn.weight'],
                              start['stage2.blocks.0.attn.conv_proj_k.bn.weight'])  # bn_eval: affine still trains
    owners = {key.split('@')[0] for key in ckpt['optimizer'] if '@' in key}
    assert owners and not any(name.startswith('stage0.') for name in owners)

    assert _train(digits, tmp_path, '--epochs', '3', *SWITCHES[:-1], '0.5') == 0
    assert 'changed since the checkpoint: epochs 2 -> 3, layer_decay 0.75 -> 0.5' in capsys.readouterr().out
    with pytest.raises(ValueError, match=r'checkpoint-latest.pd: its optimizer state covers other parameters '
                                         r'than this run trains .* saved with --freeze_stages 1, this run has 0: '
                                         r'resume with --freeze_stages 1, or start a new run from its weights with '
                                         r'--finetune .* --experiment NAME'):
        _train(digits, tmp_path, '--epochs', '4', *SWITCHES[:8], '0')

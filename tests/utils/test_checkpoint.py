"""Training checkpoints: optimizer state by structured name, atomic writes, numbered-file rotation."""
import os

import numpy as np
import paddle
import pytest

from models import create_model
from utils.checkpoint import (CheckpointManager, load_optimizer_state, load_training_state,
                              optimizer_state_by_name, save_checkpoint)
from utils.optim import build_optimizer


def _one_step(model, optimizer):
    loss = model(paddle.randn([2, 3, 32, 32])).mean()
    loss.backward()
    optimizer.step()
    optimizer.clear_grad()


def test_optimizer_state_moves_to_a_model_with_other_tensor_names(tmp_path):
    paddle.seed(0)
    model = create_model('cvt_tiny', num_classes=3)
    optimizer = build_optimizer(model, lr=1e-3)
    _one_step(model, optimizer)
    state = optimizer_state_by_name(optimizer, model)
    assert 'stage2.blocks.0.attn.proj_q.weight@moment1_0' in state
    assert not any(k.startswith('linear_') for k in state)
    save_checkpoint({'model': model.state_dict(), 'optimizer': state, 'epoch': 1}, str(tmp_path / 'c.pd'))

    create_model('cvt_tiny')  # shifts Paddle's auto-generated names for the next model
    fresh = create_model('cvt_tiny', num_classes=3)
    assert fresh.head.weight.name != model.head.weight.name
    fresh_opt = build_optimizer(fresh, lr=1e-3)
    ckpt = load_training_state(str(tmp_path / 'c.pd'))
    fresh.set_state_dict({k: paddle.to_tensor(v) for k, v in ckpt['model'].items()})
    load_optimizer_state(fresh_opt, fresh, ckpt['optimizer'])
    paddle.seed(1)
    _one_step(model, optimizer)
    paddle.seed(1)
    _one_step(fresh, fresh_opt)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-7, err_msg=name)


def test_unknown_parameter_in_optimizer_state_is_named():
    model = create_model('cvt_tiny')
    with pytest.raises(KeyError, match="'stage9.weight'"):
        load_optimizer_state(build_optimizer(model), model, {'stage9.weight@moment1_0': np.zeros(1)})


def test_save_is_atomic_and_keeps_permissions(tmp_path, monkeypatch):
    path = tmp_path / 'checkpoint-latest.pd'
    save_checkpoint({'model': {'w': np.ones(2)}, 'epoch': 1}, str(path))
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    def crash(obj, file):
        with open(file, 'wb') as f:
            f.write(b'half')
        raise OSError('disk full')
    monkeypatch.setattr(paddle, 'save', crash)
    with pytest.raises(OSError, match='disk full'):
        save_checkpoint({'model': {'w': np.zeros(2)}, 'epoch': 2}, str(path))
    assert load_training_state(str(path))['epoch'] == 1  # the previous file is intact
    assert sorted(os.listdir(tmp_path)) == ['checkpoint-latest.pd']  # no temp file left


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_weights_only_file_is_not_a_training_checkpoint(tmp_path):
    path = tmp_path / 'w.pdparams'
    save_checkpoint({'w': np.ones(2)}, str(path))
    with pytest.raises(ValueError, match='not a training checkpoint.*--finetune'):
        load_training_state(str(path))


def test_numbered_checkpoints_rotate(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep=2)
    for epoch in (10, 20, 30):
        manager.save_latest({'model': {}, 'epoch': epoch})
        manager.save_numbered(epoch)
    manager.copy_latest('checkpoint-best.pd')
    assert sorted(os.listdir(tmp_path)) == ['checkpoint-20.pd', 'checkpoint-30.pd', 'checkpoint-best.pd',
                                            'checkpoint-latest.pd']
    assert load_training_state(manager.path('checkpoint-best.pd'))['epoch'] == 30
    manager.save_latest({'model': {}, 'epoch': 31})
    assert load_training_state(manager.path('checkpoint-30.pd'))['epoch'] == 30  # a copy, not the same file

"""Layer-wise LR decay: depth by structured name, and the LR each parameter really gets, step by step, from
our CosineScheduler through warmup and cosine (SGD and AdamW), in one parameter group."""
import logging

import numpy as np
import paddle
import pytest

from models import create_model
from training.optim import build_optimizer, layer_depths, split_decay_params
from training.scheduler import CosineScheduler

DECAY = 0.7
# cvt_tiny with depths (1, 2, 2): 5 blocks, so L = 5. Written out by hand, not derived by the code under test.
DEPTH_BY_PREFIX = (('stage0.', 0), ('stage1.blocks.1.', 2), ('stage1.', 1), ('stage2.blocks.1.', 4), ('stage2.', 3),
                   ('norm.', 5), ('head.', 5))
# Warmup (epochs 0-1), the cosine (epochs 2-7) and past its end (min_lr), 4 updates per epoch.
POINTS = ((0, 0), (0, 3), (1, 2), (2, 0), (4, 1), (7, 3), (9, 0))


def _expected_scale(name):
    depth = next(d for prefix, d in DEPTH_BY_PREFIX if name.startswith(prefix))
    return DECAY ** (5 - depth)


@pytest.fixture
def model():
    paddle.seed(0)
    return create_model('cvt_tiny', depths=(1, 2, 2), num_classes=4)


def _scheduler():
    return CosineScheduler(0.5, 8, warmup_epochs=2, warmup_lr=0.05, min_lr=0.01, per_step=True, steps_per_epoch=4)


def _gradients(model, seed):
    paddle.seed(seed)
    loss = (model(paddle.randn([2, 3, 32, 32])) * paddle.randn([2, 4])).sum()
    loss.backward()
    return {n: p.grad.numpy().astype('float64') for n, p in model.named_parameters() if not p.stop_gradient}


def _assert_update(before, after, expected, name):
    # fp32 rounding of the update and of the two parameter values; a wrong scale is off by 30% or more
    tolerance = 2 * np.spacing(np.maximum(np.abs(before), np.abs(after)).astype('float32')) + 1e-5 * np.abs(expected)
    assert (np.abs(after - before - expected) <= tolerance).all(), (name, np.abs(after - before - expected).max())


def test_depths_of_cvt_13():
    depths, num_layers = layer_depths(create_model('cvt_13_224x224'))
    assert num_layers == 13  # 1 + 2 + 10 blocks
    assert depths['stage0.patch_embed.proj.weight'] == depths['stage0.blocks.0.mlp.fc1.weight'] == 0
    assert depths['stage1.patch_embed.norm.bias'] == depths['stage1.blocks.0.attn.proj_q.weight'] == 1
    assert depths['stage1.blocks.1.norm2.weight'] == 2
    assert depths['stage2.cls_token'] == depths['stage2.patch_embed.proj.weight'] == 3
    assert depths['stage2.blocks.0.norm1.bias'] == 3
    assert depths['stage2.blocks.9.mlp.fc2.weight'] == 12
    assert depths['norm.weight'] == depths['head.bias'] == 13


def test_a_parameter_outside_the_layout_is_refused(model):
    model.extra = paddle.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"layer_decay: cannot place parameter 'extra.weight'"):
        build_optimizer(model, layer_decay=DECAY)


@pytest.mark.parametrize('bad', [0.0, -0.5, 1.5])
def test_bad_factor_is_refused(model, bad):
    with pytest.raises(ValueError, match=r'layer_decay: expected a factor in \(0, 1\]'):
        build_optimizer(model, layer_decay=bad)


def test_sgd_update_of_every_parameter_is_scheduled_lr_times_its_scale(model):
    # momentum 0 and no decay: Nesterov SGD moves each parameter by exactly its LR times its gradient
    optimizer = build_optimizer(model, opt='sgd', lr=0.5, weight_decay=0.0, momentum=0.0, layer_decay=DECAY)
    assert not isinstance(optimizer._param_groups[0], dict)  # one group: global-norm clipping sees the whole model
    scheduler = _scheduler()
    lrs = set()
    for seed, (epoch, step) in enumerate(POINTS):
        lr = scheduler.set_lr(optimizer, epoch, step)
        lrs.add(round(lr, 6))
        grads = _gradients(model, seed)
        before = {n: p.numpy().astype('float64') for n, p in model.named_parameters()}
        optimizer.step()
        optimizer.clear_grad()
        for name, param in model.named_parameters():
            expected = -lr * _expected_scale(name) * grads[name] if name in grads else 0.0
            _assert_update(before[name], param.numpy().astype('float64'), expected, name)
    assert len(lrs) == len(POINTS)  # every point a different LR: warmup, cosine and min_lr all seen


@pytest.mark.parametrize('epoch,step', [(0, 1), (3, 2), (9, 0)])
def test_adamw_first_update_and_decoupled_decay_are_scaled(model, epoch, step):
    # AdamW's first update is lr * g / (|g| + eps) (bias correction cancels), after p *= 1 - lr * wd
    optimizer = build_optimizer(model, opt='adamw', lr=0.5, weight_decay=0.1, eps=1e-12, layer_decay=DECAY)
    lr = _scheduler().set_lr(optimizer, epoch, step)
    decayed = {n for n, _ in split_decay_params(model)[0]}
    grads = _gradients(model, 0)
    before = {n: p.numpy().astype('float64') for n, p in model.named_parameters()}
    optimizer.step()
    for name, param in model.named_parameters():
        if name not in grads:
            continue
        scaled_lr = lr * _expected_scale(name)
        shrunk = before[name] * (1 - scaled_lr * 0.1) if name in decayed else before[name]
        expected = shrunk - before[name] - scaled_lr * grads[name] / (np.abs(grads[name]) + 1e-12)
        _assert_update(before[name], param.numpy().astype('float64'), expected, name)


def test_off_resets_a_scale_left_by_an_earlier_optimizer(model):
    build_optimizer(model, opt='sgd', layer_decay=DECAY)
    build_optimizer(model, opt='sgd')
    assert {p.optimize_attr['learning_rate'] for p in model.parameters() if not p.stop_gradient} == {1.0}


def test_depth_groups_logged_once(model, caplog):
    with caplog.at_level(logging.INFO, logger='cvt'):
        build_optimizer(model, layer_decay=0.5)
    lines = [r.getMessage() for r in caplog.records if 'layer decay' in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].startswith('layer decay 0.5 over 5 blocks') and '0: x0.03125 (' in lines[0]
    assert '5: x1 (4)' in lines[0]  # final norm weight and bias, head weight and bias

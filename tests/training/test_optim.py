"""Optimizer: official CvT decay rule by structured name, decay really applied, LR and clipping."""
import logging

import paddle
import pytest

from models import create_model
from training.optim import build_optimizer, split_decay_params


@pytest.fixture
def model():
    paddle.seed(0)
    return create_model('cvt_tiny')


def _zero_grad_step(model, opt):
    """One optimizer step with all-zero gradients: only weight decay can move a parameter."""
    out = model(paddle.randn([2, 3, 64, 64]))
    (out * 0.0).sum().backward()
    opt.step()
    opt.clear_grad()


def test_groups_follow_official_rule(model):
    decay, no_decay = split_decay_params(model)
    decay_names = {n for n, _ in decay}
    no_decay_names = {n for n, _ in no_decay}
    assert 'stage2.cls_token' in no_decay_names
    assert 'stage0.blocks.0.attn.conv_proj_q.conv.weight' in decay_names  # depthwise conv: decayed
    assert {'head.weight', 'stage1.patch_embed.proj.weight', 'stage2.blocks.0.mlp.fc1.weight'} <= decay_names
    assert {'head.bias', 'norm.weight', 'stage0.patch_embed.proj.bias', 'stage0.patch_embed.norm.weight',
            'stage1.blocks.0.attn.conv_proj_k.bn.weight', 'stage1.blocks.0.attn.conv_proj_k.bn.bias'} <= no_decay_names
    # BatchNorm running statistics are (frozen) parameters in Paddle: never optimized
    assert not any(n.endswith(('._mean', '._variance')) for n in decay_names | no_decay_names)
    assert all(p.ndim >= 2 for _, p in decay)
    assert (len(decay), len(no_decay)) == (31, 61)


def test_skip_names_override(model):
    decay, _ = split_decay_params(model, skip_names=())
    assert 'stage2.cls_token' in {n for n, _ in decay}


def test_adamw_decays_only_decay_group(model):
    opt = build_optimizer(model, opt='adamw', lr=0.1, weight_decay=0.5)
    decay, no_decay = split_decay_params(model)
    before = {n: p.numpy().copy() for n, p in decay + no_decay}
    _zero_grad_step(model, opt)
    for n, p in decay:  # decoupled: p * (1 - lr * wd)
        assert paddle.allclose(p, paddle.to_tensor(before[n] * 0.95), atol=1e-6).item(), n
    for n, p in no_decay:
        assert (p.numpy() == before[n]).all(), n


def test_sgd_decays_only_decay_group(model):
    opt = build_optimizer(model, opt='sgd', lr=0.1, weight_decay=0.5, momentum=0.9)
    decay, no_decay = split_decay_params(model)
    before = {n: p.numpy().copy() for n, p in decay + no_decay}
    _zero_grad_step(model, opt)
    name, param = decay[0]  # Nesterov, zero gradient: v = wd p; p -= lr (wd p + momentum v)
    assert paddle.allclose(param, paddle.to_tensor(before[name] * (1 - 0.1 * 0.5 * 1.9)), atol=1e-6).item()
    assert all((p.numpy() == before[n]).all() for n, p in no_decay)


def test_lr_and_clip(model):
    opt = build_optimizer(model, opt='sgd', lr=1e-3, grad_clip=1.0)
    assert opt.get_lr() == pytest.approx(1e-3)
    opt.set_lr(5e-4)
    assert opt.get_lr() == pytest.approx(5e-4)
    assert isinstance(opt._grad_clip, paddle.nn.ClipGradByGlobalNorm)
    assert build_optimizer(model, grad_clip=0.5, clip_mode='value')._grad_clip is not None
    assert build_optimizer(model)._grad_clip is None


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="opt: expected"):
        build_optimizer(model, opt='lamb')
    with pytest.raises(ValueError, match='clip_mode'):
        build_optimizer(model, grad_clip=1.0, clip_mode='max')


def test_group_sizes_logged(model):
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger('cvt')
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        build_optimizer(model)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    assert any('31 tensors' in r.getMessage() and '61 tensors' in r.getMessage() for r in records)


def test_adamw_after_sgd_on_same_model_has_no_l2(model):
    build_optimizer(model, opt='sgd', lr=0.1, weight_decay=0.5)
    opt = build_optimizer(model, opt='adamw', lr=0.1, weight_decay=0.0)
    before = model.head.weight.numpy().copy()
    _zero_grad_step(model, opt)
    assert (model.head.weight.numpy() == before).all()  # a leftover L2Decay would have moved it

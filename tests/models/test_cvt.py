"""Model zoo: parameter counts, key sets, shapes at any input size, drop path, registry errors."""
from pathlib import Path

import numpy as np
import paddle
import pytest

from models import create_model, get_model_cfg, list_models
from models.cvt import QuickGELU
from models.layers import drop_path

# Trainable parameters with 1000 classes and the number of state-dict tensors (BN stats included,
# num_batches_tracked excluded), as the official microsoft/CvT models have them.
EXPECTED = {
    'cvt_13_224x224': (19_997_480, 420),
    'cvt_13_384x384': (19_997_480, 420),
    'cvt_21_224x224': (31_622_696, 668),
    'cvt_21_384x384': (31_622_696, 668),
    'cvt_w24_384x384': (277_196_392, 761),
}


def _trainable(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters() if not p.stop_gradient)  # shapes: LazyGuard too


@pytest.fixture(scope='module')
def tiny():
    paddle.seed(0)
    model = create_model('cvt_tiny', num_classes=7)
    model.eval()
    return model


def test_registry_lists_every_variant():
    assert set(EXPECTED) | {'cvt_tiny'} == set(list_models())


@pytest.mark.parametrize('name', sorted(EXPECTED))
def test_parameter_count_and_keys(name):
    with paddle.LazyGuard():  # shapes and names without initialising 277M parameters
        model = create_model(name)
    n_params, n_tensors = EXPECTED[name]
    assert _trainable(model) == n_params
    state = model.state_dict()
    assert len(state) == n_tensors
    n_bn = sum(k.endswith('._mean') for k in state)
    # official torch tensors = ours + one num_batches_tracked per BatchNorm
    assert n_tensors + n_bn == {420: 459, 668: 731, 761: 833}[n_tensors]
    assert 'stage2.cls_token' in state and 'stage1.cls_token' not in state
    assert not any('pos_embed' in k for k in state)


def test_official_layout_names():
    state = create_model('cvt_13_224x224').state_dict()
    assert list(state['stage0.patch_embed.proj.weight'].shape) == [64, 3, 7, 7]
    assert list(state['stage1.patch_embed.proj.weight'].shape) == [192, 64, 3, 3]
    assert list(state['stage2.blocks.9.attn.conv_proj_k.conv.weight'].shape) == [384, 1, 3, 3]
    assert list(state['stage2.blocks.9.attn.proj_q.weight'].shape) == [384, 384]
    assert list(state['stage2.blocks.9.mlp.fc1.weight'].shape) == [384, 1536]  # Paddle Linear: [in, out]
    assert 'stage2.blocks.9.attn.conv_proj_v.bn._variance' in state
    assert list(state['head.weight'].shape) == [384, 1000]


@pytest.mark.parametrize('name,size,crop_pct,crop_mode', [
    ('cvt_13_224x224', 224, 0.875, 'center'), ('cvt_21_384x384', 384, 1.0, 'squash'),
    ('cvt_w24_384x384', 384, 1.0, 'squash')])
def test_default_cfg_carries_eval_protocol(name, size, crop_pct, crop_mode):
    cfg = get_model_cfg(name)
    assert cfg['input_size'] == (3, size, size)
    assert (cfg['crop_pct'], cfg['crop_mode'], cfg['interpolation']) == (crop_pct, crop_mode, 'bicubic')


@pytest.mark.parametrize('size', [(64, 64), (72, 88), (33, 45)])
def test_any_input_size(tiny, size):
    out = tiny(paddle.randn([2, 3, *size]))
    assert out.shape == [2, 7]


def test_batch_of_one_keeps_batch_axis(tiny):
    assert tiny(paddle.randn([1, 3, 64, 64])).shape == [1, 7]


@pytest.mark.slow
@pytest.mark.parametrize('size', [224, 384])
def test_cvt13_native_sizes(size):
    model = create_model('cvt_13_224x224', num_classes=5)
    model.eval()
    with paddle.no_grad():
        assert model(paddle.randn([1, 3, size, size])).shape == [1, 5]


def test_overrides_reach_the_model():
    model = create_model('cvt_tiny', num_classes=3, drop_path_rate=0.4, drop_rate=0.2)
    assert model.default_cfg['num_classes'] == 3
    rates = [b.drop_path.drop_prob for b in model.stage2.blocks if hasattr(b.drop_path, 'drop_prob')]
    assert rates == []  # depth 1: linspace(0, rate, 1) == [0], so no DropPath layer
    model = create_model('cvt_13_224x224', drop_path_rate=0.3)
    rates = [getattr(b.drop_path, 'drop_prob', 0.0) for b in model.stage2.blocks]
    np.testing.assert_allclose(rates, np.linspace(0, 0.3, 10), atol=1e-7)
    assert all(not hasattr(b.drop_path, 'drop_prob') for b in model.stage0.blocks)


def test_unknown_model_name_suggests():
    with pytest.raises(ValueError, match=r"unknown model 'cvt_13_224'.*did you mean 'cvt_13_224x224'"):
        create_model('cvt_13_224')


def test_drop_path_identity_in_eval_stochastic_in_train():
    x = paddle.ones([64, 4, 8])
    assert paddle.equal_all(drop_path(x, 0.5, training=False), x)
    out = drop_path(x, 0.5, training=True).numpy()
    per_sample = out.reshape(64, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()  # whole samples dropped
    assert 0 < (per_sample[:, 0] == 0).sum() < 64


def test_eval_is_deterministic_and_train_uses_drop_path():
    paddle.seed(1)
    model = create_model('cvt_13_224x224', num_classes=4, drop_path_rate=0.5)
    x = paddle.randn([2, 3, 64, 64])
    model.eval()
    with paddle.no_grad():
        a, b = model(x), model(x)
    assert paddle.equal_all(a, b)
    model.train()
    with paddle.no_grad():
        c, d = model(x), model(x)
    assert not paddle.allclose(c, d)


def test_quick_gelu():
    x = paddle.to_tensor([-2.0, 0.0, 1.0, 3.0])
    expected = x.numpy() / (1 + np.exp(-1.702 * x.numpy()))
    np.testing.assert_allclose(QuickGELU()(x).numpy(), expected, rtol=1e-6)


def test_init_follows_official_rules():
    paddle.seed(0)
    model = create_model('cvt_13_224x224')
    state = model.state_dict()
    assert float(state['stage2.blocks.0.attn.proj_q.bias'].abs().max()) == 0.0
    assert float(state['stage2.blocks.0.norm1.weight'].min()) == 1.0
    assert abs(float(state['head.weight'].std()) - 0.02) < 0.002
    assert abs(float(state['stage2.cls_token'].std()) - 0.02) < 0.01
    # conv: torch's kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    w = state['stage0.patch_embed.proj.weight'].numpy()
    bound = 1 / np.sqrt(3 * 7 * 7)
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    dw = state['stage1.blocks.0.attn.conv_proj_q.conv.weight'].numpy()
    assert np.abs(dw).max() <= 1 / 3 and np.abs(dw).max() > 0.3


def _official_keys(family):
    """{key: shape} of the official state dict, as torch wrote it (tests/fixtures/official_keys)."""
    path = Path(__file__).resolve().parents[1] / 'fixtures' / 'official_keys' / f'{family}.txt'
    entries = [line.split(' ') for line in path.read_text().splitlines() if not line.startswith('#')]
    return {k: tuple(int(d) for d in shape.split(',') if d) for k, shape in entries}


@pytest.mark.parametrize('name,family,n_torch', [('cvt_13_224x224', 'cvt_13', 459), ('cvt_21_384x384', 'cvt_21', 731),
                                                 pytest.param('cvt_w24_384x384', 'cvt_w24', 833, marks=pytest.mark.slow)])
def test_official_key_list_converts_onto_the_model_exactly(name, family, n_torch):
    from models.cvt_weights import checkpoint_filter_fn
    official = _official_keys(family)
    assert len(official) == n_torch
    # zero-strided arrays: the shapes without the memory (W24 has 277M parameters)
    converted, _ = checkpoint_filter_fn({k: np.broadcast_to(np.float32(0), s) for k, s in official.items()})
    with paddle.LazyGuard():
        ours = {k: tuple(v.shape) for k, v in create_model(name).state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == ours

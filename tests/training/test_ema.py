"""ModelEma: timm ModelEmaV2 update math over parameters and buffers, fp32 copy, strict state dict."""
import numpy as np
import paddle
import pytest

from models import create_model
from tests.host_traffic import count_host_traffic
from training.ema import ModelEma

BN_MEAN = 'stage1.blocks.0.attn.conv_proj_q.bn._mean'


@pytest.fixture
def model():
    paddle.seed(0)
    return create_model('cvt_tiny')


def _perturb(model):
    """Shift every state entry (parameters and BN buffers) by a distinct amount."""
    with paddle.no_grad():
        for i, value in enumerate(model.state_dict().values()):
            value.set_value(value + 0.01 * (i + 1))


def test_update_is_lerp_of_params_and_buffers(model):
    ema = ModelEma(model, decay=0.5)
    start = {k: v.numpy().copy() for k, v in ema.state_dict().items()}
    _perturb(model)
    ema.update(model.state_dict())
    current = model.state_dict()
    for name, value in ema.state_dict().items():
        np.testing.assert_allclose(value.numpy(), 0.5 * start[name] + 0.5 * current[name].numpy(),
                                   rtol=0, atol=1e-6, err_msg=name)
    assert BN_MEAN in start  # buffers are part of what is averaged


def test_copy_is_independent_eval_and_frozen(model):
    ema = ModelEma(model)
    assert not ema.module.training
    assert all(p.stop_gradient for p in ema.module.parameters())
    before = ema.module.head.weight.numpy().copy()
    _perturb(model)
    assert (ema.module.head.weight.numpy() == before).all()


def test_keeps_fp32_for_half_model(model):
    model.to(dtype='float16')
    ema = ModelEma(model, decay=0.5)
    ema.update(model.state_dict())
    assert {v.dtype for v in ema.state_dict().values()} == {paddle.float32}


def test_unwraps_data_parallel_and_round_trips(model):
    class Wrapped(paddle.DataParallel):
        def __init__(self, layers):  # a DataParallel shell without a process group
            paddle.nn.Layer.__init__(self)
            self._layers = layers

    ema = ModelEma(Wrapped(model), decay=0.0)
    _perturb(model)
    ema.update(model.state_dict())
    np.testing.assert_array_equal(ema.module.norm.weight.numpy(), model.norm.weight.numpy())
    assert set(ema.state_dict()) == set(model.state_dict())

    fresh = ModelEma(create_model('cvt_tiny'))
    fresh.set_state_dict({k: v.clone() for k, v in ema.state_dict().items()})
    np.testing.assert_array_equal(fresh.module.head.weight.numpy(), ema.module.head.weight.numpy())
    with pytest.raises(KeyError, match='missing keys'):
        fresh.set_state_dict({'head.weight': ema.module.head.weight})


@pytest.mark.parametrize('decay', [0.99996, 0.9998, 0.5])
def test_update_copies_nothing_from_the_host_and_matches_lerp_with_a_float(model, decay):
    """The weight tensor made once gives the weights `lerp_(new, 1 - decay)` gave, bit for bit."""
    ema = ModelEma(model, decay=decay)
    reference = {k: v.clone() for k, v in ema.state_dict().items()}
    for _ in range(4):
        _perturb(model)
        with count_host_traffic() as traffic:
            ema.update(model.state_dict())
        assert traffic.copies == [] and traffic.syncs == []
        with paddle.no_grad():
            for name, value in reference.items():  # the formula before: a Python float weight per call
                value.lerp_(model.state_dict()[name].astype('float32'), 1.0 - decay)
    for name, value in ema.state_dict().items():
        np.testing.assert_array_equal(value.numpy(), reference[name].numpy(), err_msg=name)

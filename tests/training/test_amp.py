"""training/amp.py AmpConfig: the op lists that reach paddle.amp.auto_cast (CvT's depthwise conv projections
join the fp16 white list; softmax and layer_norm stay fp32)."""
import paddle
import pytest
from paddle.amp.auto_cast import _update_list

from training.amp import AmpConfig


def _autocast_kwargs(amp: AmpConfig, monkeypatch) -> dict:
    seen = []
    auto_cast = paddle.amp.auto_cast

    def spy(*args, **kwargs):
        seen.append(kwargs)
        return auto_cast(*args, **kwargs)
    monkeypatch.setattr(paddle.amp, 'auto_cast', spy)
    with amp.autocast():
        pass
    (kwargs,) = seen
    return kwargs


@pytest.mark.parametrize('level', ['O1', 'O2'])
def test_fp16_autocast_runs_depthwise_convs_in_fp16(level, monkeypatch):
    kwargs = _autocast_kwargs(AmpConfig(True, 'float16', level), monkeypatch)
    assert set(kwargs['custom_white_list']) == {'depthwise_conv2d'}
    assert set(kwargs['custom_black_list']) == {'softmax', 'layer_norm'}
    # what Paddle makes of them: the effective O1 lists, as auto_cast computes them
    white, black = _update_list(kwargs['custom_white_list'], kwargs['custom_black_list'], level, 'float16')
    assert 'depthwise_conv2d' in white and 'conv2d' in white
    assert {'softmax', 'layer_norm'} <= black and 'depthwise_conv2d' not in black


def test_bf16_autocast_keeps_depthwise_convs_in_fp32(monkeypatch):
    """Paddle's GPU depthwise_conv2d_grad has no bfloat16 kernel: a bf16 depthwise forward could not train."""
    kwargs = _autocast_kwargs(AmpConfig(True, 'bfloat16'), monkeypatch)
    assert not kwargs['custom_white_list']
    white, _ = _update_list(kwargs['custom_white_list'], kwargs['custom_black_list'], 'O1', 'bfloat16')
    assert 'depthwise_conv2d' not in white

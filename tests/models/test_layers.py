"""The layers' alternative compute paths agree: SDPA vs explicit attention, the CPU Linear vs F.linear,
and an export (traced under `portable_attention`) holds only ops every backend runs."""
import sys

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

import models.layers as layers
from datasets.transforms import resolve_data_cfg
from deploy.layout import read_inference_cfg
from deploy.predictors import build_predictor
from models import create_model

needs_sdpa_kernel = pytest.mark.skipif(
    layers.sdpa_kernel is None, reason=f'Paddle {paddle.__version__} has no paddle.nn.attention.sdpa_kernel: '
                                    'attention always takes the explicit path')


def _tiny(**overrides):
    paddle.seed(0)
    return create_model('cvt_tiny', num_classes=5, **overrides)


@pytest.fixture
def fused(monkeypatch):
    """set_fused_attn(flag) for one test; the module default comes back afterwards."""
    monkeypatch.setattr(layers, '_fused_attn', layers._fused_attn)
    return layers.set_fused_attn


@pytest.fixture
def sdpa_calls(monkeypatch):
    """How often F.scaled_dot_product_attention ran, so a test knows which path it compared."""
    calls = []
    real = F.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(F, 'scaled_dot_product_attention', counted)
    return calls


def _logits_and_grads(model, x, seed=1):
    paddle.seed(seed)
    model.clear_gradients()
    logits = model(x)
    logits.sum().backward()
    return logits.numpy(), {n: p.grad.numpy() for n, p in model.named_parameters() if p.grad is not None}


@needs_sdpa_kernel
@pytest.mark.parametrize('training', [True, False])
def test_sdpa_and_explicit_attention_agree(fused, sdpa_calls, training):
    model = _tiny()
    model.train() if training else model.eval()
    x = paddle.randn([3, 3, 64, 64])
    fused(True)
    sdpa_logits, sdpa_grads = _logits_and_grads(model, x)
    assert len(sdpa_calls) == 3  # one per block of cvt_tiny
    fused(False)
    explicit_logits, explicit_grads = _logits_and_grads(model, x)
    assert len(sdpa_calls) == 3
    np.testing.assert_allclose(sdpa_logits, explicit_logits, rtol=0, atol=1e-5)
    trainable = [p for p in model.parameters() if not p.stop_gradient]
    assert sdpa_grads.keys() == explicit_grads.keys() and len(sdpa_grads) == len(trainable)
    for name, grad in sdpa_grads.items():
        scale = np.abs(explicit_grads[name]).max() + 1e-6
        assert np.abs(grad - explicit_grads[name]).max() <= 1e-4 * scale, name


@pytest.mark.parametrize('use_fused', [True, False])
def test_attention_dropout_only_in_train_mode(fused, use_fused):
    fused(use_fused)
    dropped, plain = _tiny(attn_drop_rate=0.5, drop_path_rate=0.0), _tiny(drop_path_rate=0.0)
    x = paddle.randn([2, 3, 64, 64])
    for model in (dropped, plain):
        model.eval()
    np.testing.assert_array_equal(dropped(x).numpy(), plain(x).numpy())
    for model in (dropped, plain):
        model.train()
    paddle.seed(3)
    first = dropped(x).numpy()
    paddle.seed(4)
    assert np.abs(first - dropped(x).numpy()).max() > 1e-3  # a fresh mask per call
    assert np.abs(first - plain(x).numpy()).max() > 1e-3


@needs_sdpa_kernel
def test_sdpa_dropout_is_the_explicit_dropout_on_cpu(fused):
    # On CPU SDPA runs its math kernel, which draws the mask as nn.Dropout does: same seed, same output.
    model = _tiny(attn_drop_rate=0.3)
    model.train()
    x = paddle.randn([2, 3, 64, 64])
    fused(True)
    sdpa_logits, _ = _logits_and_grads(model, x, seed=7)
    fused(False)
    explicit_logits, _ = _logits_and_grads(model, x, seed=7)
    np.testing.assert_allclose(sdpa_logits, explicit_logits, rtol=0, atol=1e-5)


def test_without_sdpa_kernel_attention_is_explicit(fused, sdpa_calls, monkeypatch):
    # Paddle 2.6's SDPA cannot fall back from flash_attn on a GPU (fp32, pre-SM80): never use it there.
    monkeypatch.setattr(layers, 'sdpa_kernel', None)
    fused(True)
    assert not layers.use_fused_attn()
    model = _tiny()
    model.eval()
    assert model(paddle.randn([1, 3, 64, 64])).shape == [1, 5]
    assert not sdpa_calls


def test_default_path_is_sdpa_exactly_where_paddle_can_pick_a_kernel():
    assert layers.use_fused_attn() == (layers.sdpa_kernel is not None)


@pytest.mark.parametrize('x_needs_grad', [True, False])
def test_cpu_linear_matches_f_linear(monkeypatch, x_needs_grad):
    applied = []
    real_apply = layers._AddmmLinear.apply
    monkeypatch.setattr(layers._AddmmLinear, 'apply', lambda *a: applied.append(1) or real_apply(*a))
    paddle.seed(0)
    layer = layers.Linear(6, 4)
    x = paddle.randn([2, 5, 6])
    grads = []
    for fast in (True, False):
        xi = x.clone()
        xi.stop_gradient = not x_needs_grad
        layer.clear_gradients()
        out = layer(xi) if fast else F.linear(xi, layer.weight, layer.bias)
        (out * paddle.arange(out.size, dtype='float32').reshape(out.shape)).sum().backward()
        grads.append([out.numpy(), layer.weight.grad.numpy(), layer.bias.grad.numpy()]
                     + ([xi.grad.numpy()] if x_needs_grad else []))
    assert applied == [1]
    assert grads[0][0].shape == (2, 5, 4)
    for fast, reference in zip(*grads):
        np.testing.assert_allclose(fast, reference, rtol=1e-6, atol=1e-5)


def test_linear_traces_as_f_linear(monkeypatch):
    # The exported graph keeps Paddle's matmul + add, which inference passes fuse; no PyLayer in it.
    monkeypatch.setattr(layers._AddmmLinear, 'apply', lambda *a: pytest.fail('PyLayer traced into a graph'))
    model = _tiny()
    model.eval()
    assert _trace(model)


def test_linear_keeps_the_state_dict():
    assert list(layers.Linear(3, 2).state_dict()) == list(paddle.nn.Linear(3, 2).state_dict())


class _PickedFusedKernel(Exception):
    pass


@pytest.fixture
def gpu_like_sdpa(monkeypatch):
    """Make SDPA's kernel choice on this CPU build behave as on a GPU (flash allowed), failing loudly
    the moment it picks anything but the math kernel."""
    from paddle.nn.attention import SDPBackend
    backends = sys.modules['paddle.nn.attention.sdpa']._backend_enabled
    sdpa = sys.modules['paddle.nn.functional.sdpa']
    monkeypatch.setitem(backends, SDPBackend.FLASH_ATTENTION, True)
    monkeypatch.setitem(backends, SDPBackend.EFFICIENT_ATTENTION, True)
    monkeypatch.setattr(sdpa, 'can_use_flash_attention', lambda params: True)
    real_select = sdpa.select_sdp_for_sdpa

    def select(params):
        name = real_select(params)
        if name != 'math':
            raise _PickedFusedKernel(name)
        return name
    monkeypatch.setattr(sdpa, 'select_sdp_for_sdpa', select)


def _trace(model):
    spec = [paddle.static.InputSpec([None, 3, 64, 64], 'float32', name='x')]
    static = paddle.jit.to_static(model, input_spec=spec, full_graph=True)
    ops = static.forward.concrete_program.main_program.global_block().ops
    return {op.name() if callable(getattr(op, 'name', None)) else op.type for op in ops}  # PIR, legacy program


@needs_sdpa_kernel
def test_portable_attention_traces_math_ops_where_a_gpu_would_pick_flash(gpu_like_sdpa):
    model = _tiny()
    model.eval()
    with pytest.raises(_PickedFusedKernel, match='flash_attn'):
        _trace(model)
    with layers.portable_attention():
        ops = _trace(model)
    assert {'pd_op.matmul', 'pd_op.softmax'} <= ops
    assert not [op for op in ops if 'attention' in op or 'flash' in op]
    assert layers.use_fused_attn()  # the context changes the kernel choice, not the path


@needs_sdpa_kernel
def test_export_runs_on_paddle_inference_and_onnx_where_a_gpu_would_pick_flash(gpu_like_sdpa, tmp_path):
    from deploy.export import export_inference_model
    onnx = all(_importable(m) for m in ('paddle2onnx', 'onnx_graphsurgeon', 'onnxruntime'))
    model = _tiny()
    model.eval()
    out = tmp_path / 'export'
    export_inference_model(model, str(out), 'cvt_tiny', resolve_data_cfg(model.default_cfg), onnx=onnx)
    x = paddle.randn([2, 3, 64, 64])
    with paddle.no_grad(), layers.portable_attention():  # dygraph too would take the faked flash kernel
        reference = model(x).numpy()
    cfg = read_inference_cfg(str(out))
    for backend in ('paddle', 'onnxruntime') if onnx else ('paddle',):
        logits = build_predictor(str(out), cfg, backend=backend, max_batch_size=2)(x.numpy())
        np.testing.assert_allclose(logits, reference, rtol=0, atol=1e-5, err_msg=backend)
    if not onnx:
        pytest.skip('ONNX half skipped: needs paddle2onnx, onnx-graphsurgeon and onnxruntime')


def _importable(module: str) -> bool:
    try:
        __import__(module)
        return True
    except (ImportError, ValueError):  # paddle2onnx 2.x raises ValueError under Paddle 2.x
        return False


@needs_sdpa_kernel
def test_export_model_cli_traces_the_math_kernel(gpu_like_sdpa, tmp_path):
    import export_model
    weights = tmp_path / 'tiny.pdparams'
    paddle.save(_tiny().state_dict(), str(weights))
    # the fixture raises if the trace picks flash or memory-efficient attention, as a GPU would
    assert export_model.main(['--model', 'cvt_tiny', '--pretrained', str(weights), '--num_classes',
                              str(_tiny().num_classes), '--output', str(tmp_path / 'export')]) == 0
    assert (tmp_path / 'export' / 'inference.yml').is_file()

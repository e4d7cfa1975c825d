"""Export-only rewrites: BatchNorm folded into the depthwise convs, QuickGELU as swish with the 1.702 in the
Linears, the attention scale in the q projections; same outputs, training model untouched."""
import numpy as np
import paddle
import pytest

from models import create_model
from models.cvt import QuickGELU
from models.export_rewrites import rewrite_for_export
from tests.scripts import onnx_export_available


def _model_with_trained_bn_statistics():
    """cvt_tiny whose BatchNorms hold non-trivial statistics, as after training (init ones fold to identity)."""
    paddle.seed(0)
    model = create_model('cvt_tiny', num_classes=3)
    for layer in model.sublayers():
        if isinstance(layer, paddle.nn.BatchNorm2D):
            shape = layer.weight.shape
            layer.weight.set_value(paddle.randn(shape))
            layer.bias.set_value(paddle.randn(shape))
            layer._mean.set_value(paddle.randn(shape))
            layer._variance.set_value(paddle.rand(shape) + 0.1)
    model.eval()
    return model


def _count(model, kind) -> int:
    return sum(isinstance(layer, kind) for layer in model.sublayers())


def test_rewritten_copy_has_no_batchnorm_nor_quick_gelu_and_the_same_outputs():
    model = _model_with_trained_bn_statistics()
    x = paddle.to_tensor(np.random.RandomState(0).standard_normal((2, 3, 64, 64)).astype(np.float32))
    with paddle.no_grad():
        expected = model(x).numpy()
        rewritten = rewrite_for_export(model)
        np.testing.assert_allclose(rewritten(x).numpy(), expected, rtol=1e-5, atol=1e-5)
    assert _count(rewritten, paddle.nn.BatchNorm2D) == 0 and _count(rewritten, QuickGELU) == 0
    assert _count(rewritten, paddle.nn.Swish) == 3
    # the original keeps its BatchNorms, bias-free convs, QuickGELUs and Linear weights
    assert _count(model, paddle.nn.BatchNorm2D) == 9 and _count(model, QuickGELU) == 3
    assert model.stage0.blocks[0].attn.conv_proj_q.conv.bias is None
    np.testing.assert_array_equal(model.stage0.blocks[0].mlp.fc1.weight.numpy() * 1.702,
                                  rewritten.stage0.blocks[0].mlp.fc1.weight.numpy())
    for original, folded in ((b.attn, r.attn) for b, r in zip(model.stage1.blocks, rewritten.stage1.blocks)):
        assert original.scale == original.proj_q.weight.shape[1] ** -0.5 and folded.scale == 1.0
        np.testing.assert_allclose(original.proj_q.bias.numpy() * original.scale, folded.proj_q.bias.numpy(),
                                   rtol=1e-6)


@pytest.mark.skipif(not onnx_export_available(), reason='needs paddle2onnx (Paddle 3), onnx-graphsurgeon and '
                                                           'onnxruntime')
def test_exported_graph_has_no_multiply_on_q(tmp_path):
    """The folded scale leaves no Mul on the attention's q in model.onnx (paddle2onnx writes `q * scale` as a
    Mul and an Add of 0): the MLP's swish is the only Mul left, one per block."""
    import onnx
    from datasets.transforms import resolve_data_cfg
    from deploy.export import export_inference_model
    model = _model_with_trained_bn_statistics()
    export_inference_model(rewrite_for_export(model), str(tmp_path / 'export'), 'cvt_tiny',
                           resolve_data_cfg(model.default_cfg), onnx=True)
    ops = [node.op_type for node in onnx.load(str(tmp_path / 'export' / 'model.onnx')).graph.node]
    blocks = sum(len(getattr(model, f'stage{i}').blocks) for i in range(model.num_stages))
    assert ops.count('Mul') <= blocks, ops

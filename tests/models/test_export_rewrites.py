"""Export-only rewrites: BatchNorm folded into the depthwise convs, QuickGELU as swish with the 1.702 in the
Linears; same outputs, training model untouched."""
import numpy as np
import paddle

from models import create_model
from models.cvt import QuickGELU
from models.export_rewrites import rewrite_for_export


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

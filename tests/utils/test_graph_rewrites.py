"""Export-only rewrites: BatchNorm folded into the depthwise convs, same outputs, training model untouched."""
import numpy as np
import paddle

from models import create_model
from utils.graph_rewrites import fold_batchnorm


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


def test_folded_copy_has_no_batchnorm_and_the_same_outputs():
    model = _model_with_trained_bn_statistics()
    x = paddle.to_tensor(np.random.RandomState(0).standard_normal((2, 3, 64, 64)).astype(np.float32))
    with paddle.no_grad():
        expected = model(x).numpy()
        folded = fold_batchnorm(model)
        np.testing.assert_allclose(folded(x).numpy(), expected, rtol=1e-5, atol=1e-5)
    assert _count(folded, paddle.nn.BatchNorm2D) == 0
    assert _count(model, paddle.nn.BatchNorm2D) == 9  # the original keeps its BatchNorms and bias-free convs
    assert model.stage0.blocks[0].attn.conv_proj_q.conv.bias is None

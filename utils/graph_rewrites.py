"""Exact rewrites applied to a copy of the model before export: the deployed graph computes the same
function up to fp32 rounding with fewer ops, and the training model is never touched."""
import copy

import paddle
from paddle import nn


def fold_batchnorm(model: nn.Layer) -> nn.Layer:
    """A deep copy of eval-mode `model` in which every layer computing `bn(conv(x))` (children named
    `conv` and `bn`, as CvT's ConvProjection) has the BatchNorm folded into the conv's weight and bias,
    and `bn` replaced by Identity.

    conv(x) * g / sqrt(var + eps) + (beta - mean * g / sqrt(var + eps)) is one conv: scale each output
    channel's kernel and give the conv that bias.
    """
    folded = copy.deepcopy(model)
    folded.eval()
    for layer in folded.sublayers(include_self=True):
        conv, bn = getattr(layer, 'conv', None), getattr(layer, 'bn', None)
        if isinstance(conv, nn.Conv2D) and isinstance(bn, nn.BatchNorm2D):
            layer.conv = _conv_with_bn(conv, bn)
            layer.bn = nn.Identity()
    return folded


@paddle.no_grad()
def _conv_with_bn(conv: nn.Conv2D, bn: nn.BatchNorm2D) -> nn.Conv2D:
    # float64 for the fold itself, so the only rounding left is the final cast to the conv's dtype
    scale = bn.weight.astype('float64') / paddle.sqrt(bn._variance.astype('float64') + bn._epsilon)
    weight = conv.weight.astype('float64') * scale.reshape([-1, 1, 1, 1])
    bias = bn.bias.astype('float64') - bn._mean.astype('float64') * scale
    if conv.bias is not None:
        bias = bias + conv.bias.astype('float64') * scale
    fused = copy.deepcopy(conv)
    if fused.bias is None:
        fused.bias = fused.create_parameter([conv.weight.shape[0]], dtype=conv.weight.dtype, is_bias=True)
    fused.weight.set_value(weight.astype(conv.weight.dtype))
    fused.bias.set_value(bias.astype(conv.weight.dtype))
    fused.eval()
    return fused

"""Exact rewrites applied to a copy of the model before export: the deployed graph computes the same
function up to fp32 rounding with fewer ops, and the training model is never touched."""
import copy

import paddle
from paddle import nn

from .cvt import Attention, QuickGELU

QUICK_GELU_ALPHA = 1.702  # QuickGELU(x) = x * sigmoid(1.702 x), as models/cvt.py computes it


def rewrite_for_export(model: nn.Layer) -> nn.Layer:
    """A deep copy of eval-mode `model` with every exact rewrite applied (the model itself is untouched)."""
    rewritten = copy.deepcopy(model)
    rewritten.eval()
    fold_batchnorm(rewritten)
    quick_gelu_to_swish(rewritten)
    fold_attention_scale(rewritten)
    return rewritten


def fold_batchnorm(model: nn.Layer) -> None:
    """In place, on an eval-mode copy: every layer computing `bn(conv(x))` (children named `conv` and `bn`,
    as CvT's ConvProjection) gets the BatchNorm folded into the conv's weight and bias, `bn` -> Identity.

    conv(x) * g / sqrt(var + eps) + (beta - mean * g / sqrt(var + eps)) is one conv: scale each output
    channel's kernel and give the conv that bias.
    """
    for layer in model.sublayers(include_self=True):
        conv, bn = getattr(layer, 'conv', None), getattr(layer, 'bn', None)
        if isinstance(conv, nn.Conv2D) and isinstance(bn, nn.BatchNorm2D):
            layer.conv = _conv_with_bn(conv, bn)
            layer.bn = nn.Identity()


@paddle.no_grad()
def quick_gelu_to_swish(model: nn.Layer) -> None:
    """In place, on an eval-mode copy: every `fc2(QuickGELU(fc1(x)))` MLP (children fc1, act, fc2) becomes
    `fc2'(swish(fc1'(x)))` with fc1' = 1.702 fc1 and fc2' = fc2 / 1.702.

    With z = 1.702 h: h * sigmoid(1.702 h) = swish(z) / 1.702. Paddle Inference's oneDNN passes fuse
    swish into fc1 as a post-op (13 fusions on CvT-13), where QuickGELU runs as three ops (scale, sigmoid,
    multiply); Paddle's silu op, the same function, is neither fused nor run by oneDNN.
    """
    for layer in model.sublayers(include_self=True):
        fc1, act, fc2 = (getattr(layer, name, None) for name in ('fc1', 'act', 'fc2'))
        if isinstance(act, QuickGELU) and isinstance(fc1, nn.Linear) and isinstance(fc2, nn.Linear):
            fc1.weight.set_value(fc1.weight * QUICK_GELU_ALPHA)
            if fc1.bias is not None:
                fc1.bias.set_value(fc1.bias * QUICK_GELU_ALPHA)
            fc2.weight.set_value(fc2.weight / QUICK_GELU_ALPHA)  # Linear weight is [in, out]: scales the input
            layer.act = nn.Swish()


@paddle.no_grad()
def fold_attention_scale(model: nn.Layer) -> None:
    """In place, on an eval-mode copy: every Attention's `scale` moves into its q projection (weight and bias
    times scale, scale -> 1), so the graph has no multiply (and paddle2onnx's add of 0) on q per block.
    softmax(scale q k^T) = softmax((scale q) k^T), and scale q = x (scale W) + scale b."""
    for layer in model.sublayers(include_self=True):
        if isinstance(layer, Attention) and layer.scale != 1.0:
            layer.proj_q.weight.set_value(layer.proj_q.weight * layer.scale)
            if layer.proj_q.bias is not None:
                layer.proj_q.bias.set_value(layer.proj_q.bias * layer.scale)
            layer.scale = 1.0


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

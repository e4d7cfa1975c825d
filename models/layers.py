"""Layers and backend plumbing the model code uses: the attention-kernel switch (SDPA or an explicit
softmax, and the portable trace for export), a Linear whose CPU path is one addmm GEMM, DropPath, and the
trainable-parameter count that training logs and tools/flops.py reports."""
import contextlib

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.autograd import PyLayer

try:  # Paddle 3 (3.3 tested): SDPA picks flash / memory-efficient / math per call from device, dtype, `scale`
    from paddle.nn.attention import sdpa_kernel
except ImportError:  # Paddle 2.6 sends every GPU call to flash_attn (fp16/bf16 only), with no fallback
    sdpa_kernel = None
_fused_attn = sdpa_kernel is not None


# Called, not converted, while tracing: dy2static converts a function once with a copy of its module's globals,
# so a converted copy would keep the first value it saw and ignore set_fused_attn after the first trace.
@paddle.jit.not_to_static
def use_fused_attn() -> bool:
    """Whether attention goes through F.scaled_dot_product_attention (else an explicit softmax)."""
    return _fused_attn


def set_fused_attn(enable: bool) -> None:
    """Choose the attention path, as timm's `fused_attn`: the explicit softmax is for backends without SDPA.
    Ignored (explicit) on a Paddle whose SDPA cannot pick a kernel that fits the input (2.6)."""
    global _fused_attn
    _fused_attn = bool(enable) and sdpa_kernel is not None


@contextlib.contextmanager
def portable_attention():
    """Trace attention as the explicit matmul/softmax path, for an export that runs anywhere (Paddle Inference
    on CPU, ONNX, the legacy program): traced SDPA picks its kernel from the tracing device (flash_attn ops on a
    GPU), and its math form scales q twice (our head-count share, then 1/sqrt(head_dim)); the explicit path
    scales once, not at all once models.export_rewrites has folded the scale into the q projection.
    deploy.export traces every export under this."""
    fused = use_fused_attn()
    set_fused_attn(False)
    try:
        yield
    finally:
        set_fused_attn(fused)


class _AddmmLinear(PyLayer):
    """y = b + x @ W for 2-D x in one GEMM, with the bias gradient as a GEMV (ones @ dy). Paddle's CPU
    broadcast add runs ~2x and its backward (a reduce over rows) ~25x slower than that GEMV."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.needs_grad = (not x.stop_gradient, not weight.stop_gradient, not bias.stop_gradient)
        return paddle.addmm(bias, x, weight)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensor()
        need_x, need_weight, need_bias = ctx.needs_grad
        dx = paddle.matmul(dy, weight, transpose_y=True) if need_x else None
        dweight = paddle.matmul(x, dy, transpose_x=True) if need_weight else None
        dbias = paddle.matmul(paddle.ones([1, dy.shape[0]], dy.dtype), dy).reshape([-1]) if need_bias else None
        return dx, dweight, dbias


class Linear(nn.Linear):
    """nn.Linear (same parameters and names) whose fp32 CPU dygraph path is `_AddmmLinear`; everywhere else
    (GPU, tracing for export) it is F.linear, so exported graphs and mixed precision are unchanged. Paddle
    switches autocast off on CPU, so the CPU path never meets AMP."""

    def forward(self, x):
        if (self.bias is None or not paddle.in_dynamic_mode() or not x.place.is_cpu_place()
                or x.dtype != paddle.float32):
            return F.linear(x, self.weight, self.bias)
        out = _AddmmLinear.apply(x.reshape([-1, x.shape[-1]]), self.weight, self.bias)
        return out.reshape(x.shape[:-1] + [out.shape[-1]])


def drop_path(x, drop_prob: float = 0.0, training: bool = False):
    """Stochastic depth: zero whole samples of a residual branch, rescaling the survivors."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    mask_shape = [x.shape[0]] + [1] * (x.ndim - 1)
    mask = paddle.floor(keep_prob + paddle.rand(mask_shape, dtype=x.dtype))
    return x / keep_prob * mask


class DropPath(nn.Layer):
    """Layer around `drop_path` ("DropPath" is timm's name for stochastic depth per sample)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self):
        return f'drop_prob={self.drop_prob:.3f}'


def count_parameters(model: nn.Layer) -> int:
    """Trainable parameters (elements of every parameter that takes gradients)."""
    return sum(int(p.numel()) for p in model.parameters() if not p.stop_gradient)

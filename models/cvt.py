"""CvT: Introducing Convolutions to Vision Transformers (Wu et al., ICCV 2021).

Paper: https://arxiv.org/abs/2103.15808, official code: https://github.com/microsoft/CvT.
Parameter names match the official `lib/models/cls_cvt.py` state dict, so converting released
weights is a rename of BatchNorm statistics and a transpose of Linear weights, nothing more.
"""
import inspect
import math
from typing import List, Sequence, Union

import paddle
import paddle.nn as nn
import paddle.nn.functional as F

from .layers import DropPath, Linear, use_fused_attn
from .registry import register_model

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Paddle >= 3 takes absolute cut points a/b; older lines always cut at mean +- 2 std.
_TRUNC_NORMAL_HAS_BOUNDS = 'a' in inspect.signature(nn.initializer.TruncatedNormal).parameters


def _trunc_normal(param, std=0.02):
    # timm's trunc_normal_ cuts at +-2 absolute, i.e. 100 std at std .02: in effect a plain normal.
    # A +-2 std cut (Paddle < 3) would shrink the std by 12%, so there the plain normal is the faithful one.
    if _TRUNC_NORMAL_HAS_BOUNDS:
        nn.initializer.TruncatedNormal(mean=0.0, std=std, a=-2.0, b=2.0)(param)
    else:
        nn.initializer.Normal(mean=0.0, std=std)(param)


def _torch_default_conv_init(conv: nn.Conv2D):
    # The official code keeps torch's Conv2d default: kaiming_uniform(a=sqrt(5)) on the weight, which is
    # U(-1/sqrt(fan_in), 1/sqrt(fan_in)), and the same bound for the bias. Paddle's default differs.
    fan_in = conv.weight.shape[1] * conv.weight.shape[2] * conv.weight.shape[3]
    bound = 1.0 / math.sqrt(fan_in)
    nn.initializer.Uniform(-bound, bound)(conv.weight)
    if conv.bias is not None:
        nn.initializer.Uniform(-bound, bound)(conv.bias)


def map_to_tokens(x):
    """(B, C, H, W) -> (B, H*W, C). Transposed to channels-last first, then merged: a runtime that computes
    the conv channels-last (OpenVINO, oneDNN) drops that transpose, where flatten-then-transpose costs it a
    layout change back and forth."""
    return x.transpose([0, 2, 3, 1]).flatten(1, 2)


def tokens_to_map(x, h: int, w: int):
    """(B, H*W, C) -> (B, C, H, W), the inverse of map_to_tokens (split to channels-last, then transposed)."""
    return x.reshape([0, h, w, x.shape[-1]]).transpose([0, 3, 1, 2])


class QuickGELU(nn.Layer):
    """x * sigmoid(1.702 x): the MLP activation of the official CvT (not exact GELU)."""

    def forward(self, x):
        return x * F.sigmoid(1.702 * x)


class Mlp(nn.Layer):
    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim)
        self.act = QuickGELU()
        self.fc2 = Linear(hidden_dim, dim)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


class ConvProjection(nn.Layer):
    """Depthwise conv + BatchNorm ('dw_bn'), mapping a (B, C, H, W) map to (B, H'*W', C) tokens."""

    def __init__(self, dim: int, kernel_size: int, stride: int, padding: int):
        super().__init__()
        self.conv = nn.Conv2D(dim, dim, kernel_size, stride=stride, padding=padding, groups=dim, bias_attr=False)
        self.bn = nn.BatchNorm2D(dim)

    def forward(self, x):
        return map_to_tokens(self.bn(self.conv(x)))  # (B, H'*W', C)


class Attention(nn.Layer):
    """Multi-head attention whose q/k/v come from convolutional projections of the token map."""

    def __init__(self, dim_in: int, dim_out: int, num_heads: int, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0, kernel_size: int = 3,
                 stride_q: int = 1, stride_kv: int = 2, padding_q: int = 1, padding_kv: int = 1,
                 with_cls_token: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim_out // num_heads
        # The official code scales by the stage width, not the head width; kept for weight parity.
        self.scale = dim_out ** -0.5
        self.with_cls_token = with_cls_token
        self.conv_proj_q = ConvProjection(dim_in, kernel_size, stride_q, padding_q)
        self.conv_proj_k = ConvProjection(dim_in, kernel_size, stride_kv, padding_kv)
        self.conv_proj_v = ConvProjection(dim_in, kernel_size, stride_kv, padding_kv)
        self.proj_q = Linear(dim_in, dim_out, bias_attr=None if qkv_bias else False)
        self.proj_k = Linear(dim_in, dim_out, bias_attr=None if qkv_bias else False)
        self.proj_v = Linear(dim_in, dim_out, bias_attr=None if qkv_bias else False)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = Linear(dim_out, dim_out)
        self.proj_drop = nn.Dropout(proj_drop)
        # Opt-in, for looking inside (tools/visualize.py): each forward then also stores its attention
        # probabilities in `self.attention`; the output is computed as without it.
        self.keep_attention = False
        self.attention = None

    def _split_heads(self, x):
        return x.reshape([0, 0, self.num_heads, self.head_dim])  # (B, T, heads, d), the layout SDPA takes

    def _attend(self, q, k, v):
        """softmax(scale q k^T) v per head, on and to (B, T, heads, d)."""
        # Both paths scale q (T x d) rather than the scores (T x T'): the same product, a fraction of the work.
        if use_fused_attn():
            # SDPA applies head_dim ** -0.5 itself; passing `scale=` would switch flash off (Paddle 3.3),
            # so q carries the rest of the official scale (exactly 1 for a single head).
            q_scale = self.scale * self.head_dim ** 0.5
            q = q if q_scale == 1.0 else q * q_scale
            drop = self.attn_drop.p if self.training else 0.0
            return F.scaled_dot_product_attention(q, k, v, dropout_p=drop, training=self.training)
        attn = self.attn_drop(self._probs(q, k))
        return paddle.matmul(attn, v.transpose([0, 2, 1, 3])).transpose([0, 2, 1, 3])

    def _probs(self, q, k):
        """softmax(scale q k^T): (B, heads, T, T') from (B, T, heads, d) q and (B, T', heads, d) k."""
        q = (q if self.scale == 1.0 else q * self.scale).transpose([0, 2, 1, 3])  # (B, heads, T, d); 1: folded
        return F.softmax(paddle.matmul(q, k.transpose([0, 2, 1, 3]), transpose_y=True), axis=-1)

    def _key_grid(self, h: int, w: int):
        conv = self.conv_proj_k.conv  # its padding is the int this class passed
        return tuple((n + 2 * conv._padding - conv._kernel_size[i]) // conv._stride[i] + 1
                     for i, n in enumerate((h, w)))

    def forward(self, x, h: int, w: int):
        if self.with_cls_token:
            cls_token, x = paddle.split(x, [1, -1], axis=1)  # one op: its gradient is a concat, not two pads
        x = tokens_to_map(x, h, w)  # (B, C, H, W)
        q, k, v = self.conv_proj_q(x), self.conv_proj_k(x), self.conv_proj_v(x)
        if self.with_cls_token:  # the cls token bypasses the convolutional projection
            q = paddle.concat([cls_token, q], axis=1)
            k = paddle.concat([cls_token, k], axis=1)
            v = paddle.concat([cls_token, v], axis=1)
        q = self._split_heads(self.proj_q(q))
        k = self._split_heads(self.proj_k(k))
        v = self._split_heads(self.proj_v(v))
        if self.keep_attention:  # queries: the cls token (if any), then the h x w grid; keys: cls, then key_grid
            self.attention = dict(probs=self._probs(q, k).detach(), query_grid=(h, w),
                                  key_grid=self._key_grid(h, w), cls_token=self.with_cls_token)
        x = self._attend(q, k, v).flatten(2)  # (B, T, C)
        return self.proj_drop(self.proj(x))


class Block(nn.Layer):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0, **attn_kwargs):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, epsilon=1e-5)
        self.attn = Attention(dim, dim, num_heads, attn_drop=attn_drop, proj_drop=drop, **attn_kwargs)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, epsilon=1e-5)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)

    def forward(self, x, h: int, w: int):
        x = x + self.drop_path(self.attn(self.norm1(x), h, w))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConvEmbed(nn.Layer):
    """Overlapping strided conv that turns a (B, C, H, W) map into the next stage's tokens, then LayerNorm."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int, padding: int):
        super().__init__()
        self.proj = nn.Conv2D(in_chans, embed_dim, patch_size, stride=stride, padding=padding)
        self.norm = nn.LayerNorm(embed_dim, epsilon=1e-5)

    def forward(self, x):
        x = self.proj(x)
        h, w = x.shape[2], x.shape[3]
        return self.norm(map_to_tokens(x)), h, w  # (B, H*W, C)


def _recompute(block: nn.Layer, x, h: int, w: int):
    """block(x, h, w) keeping only its input for backward, which runs the block again (Paddle's recompute).

    The second run starts from the first run's RNG state, so drop path and dropout draw the same masks and
    the gradients are the plain run's; the BatchNorm running statistics it would move a second time, and the
    RNG state, are put back after it. The RNG state is handled here: Paddle 2.6's own `preserve_rng_state` is
    GPU-only in the non-reentrant recompute, the one DataParallel's gradient hooks work with.
    """
    from paddle.distributed.fleet.utils import recompute  # (Paddle 2.6 and 3.x) loads fleet: only when used
    running = [buffer for layer in block.sublayers() if isinstance(layer, nn.BatchNorm2D)
               for buffer in (layer._mean, layer._variance)]
    forward_rng = []

    def run(x):
        if not forward_rng:  # the forward pass
            forward_rng.append(paddle.get_rng_state())
            return block(x, h, w)
        rng, statistics = paddle.get_rng_state(), [buffer.clone() for buffer in running]  # in backward
        paddle.set_rng_state(forward_rng[0])
        out = block(x, h, w)
        paddle.set_rng_state(rng)
        for buffer, value in zip(running, statistics):
            buffer.set_value(value)
        return out

    return recompute(run, x, preserve_rng_state=False, use_reentrant=False)


class Stage(nn.Layer):
    """One CvT stage: conv token embedding, optional cls token, `depth` blocks; no position embedding."""

    def __init__(self, in_chans: int, embed_dim: int, depth: int, num_heads: int, patch_size: int,
                 patch_stride: int, patch_padding: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 with_cls_token: bool = False, kernel_size: int = 3, stride_q: int = 1, stride_kv: int = 2,
                 padding_q: int = 1, padding_kv: int = 1):
        super().__init__()
        self.patch_embed = ConvEmbed(in_chans, embed_dim, patch_size, patch_stride, patch_padding)
        if with_cls_token:
            self.cls_token = self.create_parameter([1, 1, embed_dim])
            _trunc_normal(self.cls_token)
        else:
            self.cls_token = None
        self.pos_drop = nn.Dropout(drop_rate)
        rates = [drop_path_rate * i / (depth - 1) if depth > 1 else 0.0 for i in range(depth)]  # linspace(0, rate, depth)
        self.blocks = nn.LayerList([
            Block(embed_dim, num_heads, mlp_ratio, drop_rate, attn_drop_rate, rate, qkv_bias=qkv_bias,
                  kernel_size=kernel_size, stride_q=stride_q, stride_kv=stride_kv, padding_q=padding_q,
                  padding_kv=padding_kv, with_cls_token=with_cls_token)
            for rate in rates
        ])
        self.grad_checkpointing = False

    def forward(self, x):
        x, h, w = self.patch_embed(x)
        cls_token = None
        if self.cls_token is not None:
            x = paddle.concat([self.cls_token.expand([x.shape[0], -1, -1]), x], axis=1)
        x = self.pos_drop(x)
        checkpoint = self.grad_checkpointing and paddle.in_dynamic_mode() and not x.stop_gradient
        for block in self.blocks:
            x = _recompute(block, x, h, w) if checkpoint else block(x, h, w)
        if self.cls_token is not None:
            cls_token, x = paddle.split(x, [1, -1], axis=1)
        return tokens_to_map(x, h, w), cls_token  # (B, C, H, W)


class ConvolutionalVisionTransformer(nn.Layer):
    """CvT: stages `stage0..stage{n-1}`, then LayerNorm on the cls token (or mean token) and a Linear head."""

    def __init__(self, depths: Sequence[int] = (1, 2, 10), dims: Sequence[int] = (64, 192, 384),
                 heads: Sequence[int] = (1, 3, 6), drop_path_rates: Sequence[float] = (0.0, 0.0, 0.1),
                 num_classes: int = 1000, in_chans: int = 3, patch_sizes: Sequence[int] = (7, 3, 3),
                 patch_strides: Sequence[int] = (4, 2, 2), patch_paddings: Sequence[int] = (2, 1, 1),
                 cls_tokens: Sequence[bool] = (False, False, True), mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, attn_drop_rate: float = 0.0,
                 drop_path_rate: float = None):
        super().__init__()
        self.num_classes = num_classes
        self.num_stages = len(depths)
        if drop_path_rate is not None:  # one number overrides the last stage's rate, as the official specs vary it
            drop_path_rates = tuple(drop_path_rates[:-1]) + (drop_path_rate,)
        for i in range(self.num_stages):
            stage = Stage(in_chans, dims[i], depths[i], heads[i], patch_sizes[i], patch_strides[i],
                          patch_paddings[i], mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, drop_rate=drop_rate,
                          attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rates[i],
                          with_cls_token=cls_tokens[i])
            setattr(self, f'stage{i}', stage)
            in_chans = dims[i]
        self.num_features = dims[-1]
        self.use_cls_token = cls_tokens[-1]
        self.norm = nn.LayerNorm(dims[-1], epsilon=1e-5)
        self.head = Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(layer):
        if isinstance(layer, nn.Linear):
            _trunc_normal(layer.weight)
            if layer.bias is not None:
                nn.initializer.Constant(0.0)(layer.bias)
        elif isinstance(layer, (nn.LayerNorm, nn.BatchNorm2D)):
            nn.initializer.Constant(1.0)(layer.weight)
            nn.initializer.Constant(0.0)(layer.bias)
        elif isinstance(layer, nn.Conv2D):
            _torch_default_conv_init(layer)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in backward instead of keeping its activations (timm's name): less memory,
        one more forward per step; gradients, drop path draws and BatchNorm statistics stay the plain run's."""
        for i in range(self.num_stages):
            getattr(self, f'stage{i}').grad_checkpointing = enable

    def no_weight_decay_names(self):
        """Parameters excluded from weight decay by name: the cls tokens (biases and norms go by rule)."""
        return {f'stage{i}.cls_token' for i in range(self.num_stages)}

    def forward_features(self, x):
        """Pre-logits features (B, C): the normed stage-3 cls token, or the normed mean token without one."""
        cls_token = None
        for i in range(self.num_stages):
            x, cls_token = getattr(self, f'stage{i}')(x)
        return self._pool(x, cls_token)

    def _pool(self, x, cls_token):
        if self.use_cls_token:
            return self.norm(cls_token).squeeze(1)  # (B, C); squeeze(1) keeps batch size 1 intact
        return self.norm(map_to_tokens(x)).mean(axis=1)

    def forward_head(self, x, pre_logits: bool = False):
        """Logits from `forward_features`' output; with `pre_logits` that output itself, as timm has it."""
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    @property
    def feature_info(self) -> List[dict]:
        """Per stage, as timm's `feature_info`: channels, stride against the input and the layer's name."""
        return _feature_info(self)

    def forward_intermediates(self, x, indices: Union[int, Sequence[int], None] = None, norm: bool = False,
                              output_fmt: str = 'NCHW', intermediates_only: bool = False):
        """Stage maps (strides 4/8/16) of the stages in `indices` (an int n: the last n; default: all),
        each (B, C, H, W) or with `output_fmt='NHWC'` (B, H, W, C); with `norm`, the final LayerNorm is
        applied to the last stage's map. Unless `intermediates_only`, returns (forward_features' output,
        maps) from the same pass: `forward_head` of the first is the model's logits."""
        take = _take_indices(self.num_stages, indices)
        maps, x, cls_token = _stage_maps(self, x, take, norm=self.norm if norm else None, output_fmt=output_fmt,
                                         stop_early=intermediates_only)
        return maps if intermediates_only else (self._pool(x, cls_token), maps)

    def get_classifier(self) -> nn.Layer:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised head for `num_classes` outputs (0: no head, forward gives features)."""
        self.num_classes = num_classes
        self.head = Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.head.apply(self._init_weights)
        if hasattr(self, 'default_cfg'):
            self.default_cfg['num_classes'] = num_classes


OUTPUT_FORMATS = ('NCHW', 'NHWC')


def _check_output_fmt(output_fmt: str) -> str:
    if output_fmt not in OUTPUT_FORMATS:
        raise ValueError(f"output_fmt: expected one of {', '.join(OUTPUT_FORMATS)}, got '{output_fmt}'")
    return output_fmt


def _feature_info(model) -> List[dict]:
    reduction, info = 1, []
    for i in range(model.num_stages):
        embed = getattr(model, f'stage{i}').patch_embed.proj
        reduction *= embed._stride[0]
        info.append(dict(num_chs=embed.weight.shape[0], reduction=reduction, module=f'stage{i}'))
    return info


def _take_indices(num_stages: int, indices: Union[int, Sequence[int], None], name: str = 'indices') -> List[int]:
    """Sorted stage indices from None (all), an int n (the last n) or a list (negative counts from the end)."""
    if indices is None:
        return list(range(num_stages))
    if isinstance(indices, int):
        if not 0 < indices <= num_stages:
            raise ValueError(f'{name}: expected 1..{num_stages} (the last n stages), got {indices}')
        return list(range(num_stages - indices, num_stages))
    indices = list(indices)
    if not indices or any(not -num_stages <= i < num_stages for i in indices) \
            or len({i % num_stages for i in indices}) != len(indices):
        raise ValueError(f'{name}: expected distinct stage indices in -{num_stages}..{num_stages - 1}, '
                         f'got {indices}')
    return sorted(i % num_stages for i in indices)


def _stage_maps(model, x, take: Sequence[int], norm=None, output_fmt: str = 'NCHW', stop_early: bool = False):
    """Run `model`'s stages (attributes stage0.. of a CvT or a CvTFeatures); returns (the maps of the stages in
    `take`, the last stage run's map and cls token). `norm` (a LayerNorm) is applied to the last stage's map."""
    _check_output_fmt(output_fmt)
    last = take[-1] if stop_early else model.num_stages - 1
    maps, cls_token = [], None
    for i in range(last + 1):
        x, cls_token = getattr(model, f'stage{i}')(x)
        if i in take:
            out = x
            if norm is not None and i == model.num_stages - 1:
                out = norm(out.transpose([0, 2, 3, 1])).transpose([0, 3, 1, 2])  # over channels
            maps.append(out.transpose([0, 2, 3, 1]) if output_fmt == 'NHWC' else out)  # (B, H, W, C)
    return maps, x, cls_token


class CvTFeatures(nn.Layer):
    """A CvT as a multi-scale backbone (`create_model(..., features_only=True)`): forward gives the maps of
    the stages in `out_indices`, (B, C, H, W) at strides 4/8/16. It keeps the stages it needs (their
    parameter names unchanged, so its state dict is a subset of the classifier's) and drops norm and head."""

    def __init__(self, model: ConvolutionalVisionTransformer, out_indices: Sequence[int] = (0, 1, 2),
                 output_fmt: str = 'NCHW'):
        super().__init__()
        self.out_indices = _take_indices(model.num_stages, out_indices, 'out_indices')
        self.output_fmt = _check_output_fmt(output_fmt)
        self.num_stages = self.out_indices[-1] + 1
        for i in range(self.num_stages):
            setattr(self, f'stage{i}', getattr(model, f'stage{i}'))
        self.feature_info = [info for i, info in enumerate(_feature_info(model)) if i in self.out_indices]
        self.default_cfg = dict(getattr(model, 'default_cfg', {}), num_classes=0)
        self.num_classes = 0

    def forward(self, x):
        return _stage_maps(self, x, self.out_indices, output_fmt=self.output_fmt)[0]


def _cfg(size: int, **kwargs) -> dict:
    """Preprocessing and evaluation protocol of a variant: 224 resizes to 256 and centre-crops
    (crop_pct .875); the official 384 models resize straight to 384x384 with no crop."""
    cfg = dict(input_size=(3, size, size), interpolation='bicubic', mean=IMAGENET_MEAN, std=IMAGENET_STD,
               num_classes=1000, crop_pct=0.875 if size == 224 else 1.0,
               crop_mode='center' if size == 224 else 'squash')
    cfg.update(kwargs)
    return cfg


# What differs between the families; everything else is a ConvolutionalVisionTransformer default.
_ARCH = {
    'cvt_13': dict(depths=(1, 2, 10), dims=(64, 192, 384), heads=(1, 3, 6), drop_path_rates=(0.0, 0.0, 0.1)),
    'cvt_21': dict(depths=(1, 4, 16), dims=(64, 192, 384), heads=(1, 3, 6), drop_path_rates=(0.0, 0.0, 0.1)),
    'cvt_w24': dict(depths=(2, 2, 20), dims=(192, 768, 1024), heads=(3, 12, 16), drop_path_rates=(0.0, 0.0, 0.3)),
    'cvt_tiny': dict(depths=(1, 1, 1), dims=(16, 32, 64), heads=(1, 2, 4), drop_path_rates=(0.0, 0.0, 0.1)),
}


def _build(arch: str, **overrides) -> ConvolutionalVisionTransformer:
    return ConvolutionalVisionTransformer(**dict(_ARCH[arch], **overrides))


@register_model(_cfg(224))
def cvt_13_224x224(**kwargs):
    return _build('cvt_13', **kwargs)


@register_model(_cfg(384))
def cvt_13_384x384(**kwargs):
    return _build('cvt_13', **kwargs)


@register_model(_cfg(224))
def cvt_21_224x224(**kwargs):
    return _build('cvt_21', **kwargs)


@register_model(_cfg(384))
def cvt_21_384x384(**kwargs):
    return _build('cvt_21', **kwargs)


@register_model(_cfg(384))
def cvt_w24_384x384(**kwargs):
    return _build('cvt_w24', **kwargs)


@register_model(_cfg(64, crop_pct=0.875, crop_mode='center'))
def cvt_tiny(**kwargs):
    """A micro CvT from the same code, for tests, demos and CPU experiments (64x64 input)."""
    return _build('cvt_tiny', **kwargs)

"""Optimizer builder: AdamW (official CvT recipe) or SGD with momentum, with decay / no-decay parameters.

Weight-decay rule, matching microsoft/CvT lib/optim/build.py `set_wd` with the recipe's
WITHOUT_WD_LIST ['bn', 'ln', 'bias']: no decay on BatchNorm and LayerNorm weights and biases, on every
parameter named `*.bias`, and on names listed by `model.no_weight_decay_names()` (the cls tokens;
matched as substrings like the official `no_weight_decay()`). The official list has no 'dw', so
depthwise conv weights ARE decayed. In CvT this is exactly: every 1-D parameter plus the cls tokens.
Frozen parameters (`stop_gradient`, which includes Paddle's BatchNorm running statistics) are left out.

Layer-wise LR decay (`layer_decay` D, as timm's `--layer-decay` and BEiT's fine-tuning) scales each
parameter's LR by D^(L - depth): blocks are numbered 0..L-1 in order across the stages, a stage's
patch embedding and cls token go with its first block, the final norm and head sit at depth L. The
scale is the parameter's own LR multiplier (ParamAttr learning_rate, which Paddle's AdamW and Momentum
multiply into the optimizer's LR at every step), so the model stays one parameter group and every
`optimizer.set_lr()` of the scheduler reaches every parameter scaled (timm PR#2532: a per-group scale
that only timm's own scheduler applied).
"""
import re
from collections import Counter
from typing import Dict, Iterable, List, Optional, Tuple

import paddle
import paddle.nn as nn

from utils.distributed import unwrap_model
from utils.logger import get_logger

_logger = get_logger(__name__)

_OPTIMIZERS = ('adamw', 'sgd')


def split_decay_params(model: nn.Layer, skip_names: Optional[Iterable[str]] = None
                       ) -> Tuple[List[Tuple[str, paddle.Tensor]], List[Tuple[str, paddle.Tensor]]]:
    """(decay, no_decay) lists of (structured name, parameter) over the trainable parameters.

    `skip_names` defaults to `model.no_weight_decay_names()` when the model has it.
    """
    model = unwrap_model(model)
    if skip_names is None:
        skip_names = model.no_weight_decay_names() if hasattr(model, 'no_weight_decay_names') else ()
    skip_names = tuple(skip_names)
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.stop_gradient:
            continue
        exempt = param.ndim <= 1 or name.endswith('.bias') or any(skip in name for skip in skip_names)
        (no_decay if exempt else decay).append((name, param))
    return decay, no_decay


def layer_depths(model: nn.Layer) -> Tuple[Dict[str, int], int]:
    """({structured parameter name: depth}, L) for layer-wise LR decay, from the parameter names alone.

    `stage{k}.blocks.{j}.*` is block j of stage k, numbered across the stages; anything else in stage k
    (patch embedding, cls token) goes with the stage's first block; `norm.*` and `head.*` are at L, the
    number of blocks (CvT-13: 13). A name outside that layout is refused, never guessed.
    """
    names = [name for name, _ in unwrap_model(model).named_parameters()]
    located = {}  # name -> (stage, block within the stage, or None for the stage's own parameters)
    for name in names:
        match = re.match(r'stage(\d+)\.(?:blocks\.(\d+)\.)?', name)
        if match:
            located[name] = (int(match[1]), None if match[2] is None else int(match[2]))
        elif name.split('.')[0] not in ('norm', 'head'):
            raise ValueError(f"layer_decay: cannot place parameter '{name}' by depth (expected stage<k>.*, "
                             f"norm.* or head.*)")
    blocks = Counter()  # blocks per stage
    for stage, block in located.values():
        blocks[stage] = max(blocks[stage], 0 if block is None else block + 1)
    first_block, num_layers = {}, 0
    for stage in sorted(blocks):
        first_block[stage], num_layers = num_layers, num_layers + blocks[stage]
    depths = {}
    for name in names:
        stage, block = located.get(name, (None, None))
        depths[name] = num_layers if stage is None else first_block[stage] + (block or 0)
    return depths, num_layers


def _layer_lr_scales(model: nn.Layer, layer_decay: float, trained) -> Dict[str, float]:
    """{structured parameter name: layer_decay ** (L - depth)}; logs depth -> scale (tensors) of `trained`."""
    if not 0 < layer_decay <= 1:
        raise ValueError(f'layer_decay: expected a factor in (0, 1], got {layer_decay}')
    depths, num_layers = layer_depths(model)
    per_depth = Counter(depths[name] for name, _ in trained)
    _logger.info('layer decay %g over %d blocks, LR scale by depth (trained tensors): %s', layer_decay, num_layers,
                 ', '.join(f'{d}: x{layer_decay ** (num_layers - d):.4g} ({n})' for d, n in sorted(per_depth.items())))
    return {name: layer_decay ** (num_layers - depth) for name, depth in depths.items()}


def _grad_clip(grad_clip: Optional[float], clip_mode: str):
    if grad_clip is None or grad_clip <= 0:
        return None
    if clip_mode == 'norm':
        return nn.ClipGradByGlobalNorm(grad_clip)
    if clip_mode == 'value':
        return nn.ClipGradByValue(grad_clip)
    raise ValueError(f"clip_mode: expected 'norm' or 'value', got '{clip_mode}'")


def build_optimizer(model: nn.Layer, *, opt: str = 'adamw', lr: float = 1e-3, weight_decay: float = 0.05,
                    betas: Tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, momentum: float = 0.9,
                    grad_clip: Optional[float] = None, clip_mode: str = 'norm',
                    skip_names: Optional[Iterable[str]] = None,
                    layer_decay: Optional[float] = None) -> paddle.optimizer.Optimizer:
    """AdamW ('adamw') or Nesterov momentum SGD ('sgd', timm's meaning).

    The LR is a float so a scheduler can `optimizer.set_lr()` it. All parameters sit in one group, so
    ClipGradByGlobalNorm sees the norm over the whole model (Paddle clips each param group separately).
    Decay is applied by structured name: AdamW through `apply_decay_param_fun` (decoupled, as torch's
    AdamW), SGD through an L2Decay regularizer on the decayed parameters only (torch SGD's weight_decay).
    `layer_decay` D (None: off) multiplies each parameter's LR, and so its decoupled decay step, by
    D^(L - depth) (see `layer_depths`).
    """
    opt = opt.lower()
    if opt not in _OPTIMIZERS:
        raise ValueError(f"opt: expected one of {', '.join(_OPTIMIZERS)}, got '{opt}'")
    decay, no_decay = split_decay_params(model, skip_names)
    _log_groups(opt, weight_decay, decay, no_decay)
    params = [p for _, p in decay + no_decay]
    scales = _layer_lr_scales(model, layer_decay, decay + no_decay) if layer_decay is not None else {}
    # Decay and LR scale are decided here only: a regularizer or multiplier left on a parameter by an
    # earlier optimizer would act on top.
    for name, p in decay + no_decay:
        p.regularizer = None
        p.optimize_attr['learning_rate'] = scales.get(name, 1.0)
    clip = _grad_clip(grad_clip, clip_mode)
    if opt == 'adamw':
        # Paddle matches apply_decay_param_fun on the unique tensor name, not the structured one.
        decay_tensor_names = {p.name for _, p in decay}
        return paddle.optimizer.AdamW(learning_rate=lr, beta1=betas[0], beta2=betas[1], epsilon=eps,
                                      parameters=params, weight_decay=weight_decay, grad_clip=clip,
                                      apply_decay_param_fun=lambda name: name in decay_tensor_names)
    # A per-parameter regularizer overrides the optimizer-wide one, which stays off.
    for _, p in decay:
        p.regularizer = paddle.regularizer.L2Decay(weight_decay)
    return paddle.optimizer.Momentum(learning_rate=lr, momentum=momentum, parameters=params,
                                     use_nesterov=True, grad_clip=clip)


def _log_groups(opt: str, weight_decay: float, decay, no_decay) -> None:
    def numel(group):
        return sum(int(p.numel()) for _, p in group)
    if not weight_decay:
        _logger.info('optimizer %s: no weight decay (weight_decay 0) on %d tensors (%d params)', opt,
                     len(decay) + len(no_decay), numel(decay) + numel(no_decay))
        return
    _logger.info('optimizer %s: weight decay %g on %d tensors (%d params), none on %d tensors (%d params)',
                 opt, weight_decay, len(decay), numel(decay), len(no_decay), numel(no_decay))

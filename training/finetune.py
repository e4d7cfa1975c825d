"""Fine-tuning switches: frozen first stages (`--freeze_stages`) and BatchNorms that keep their running
statistics (`--bn_eval`).

CvT's BatchNorms sit in every attention block's depthwise conv projections; with the small or
accumulated batches of fine-tuning their batch statistics are noisy and the running ones drift. A
BatchNorm switched here normalises with its running mean and variance and never updates them, in
training as in evaluation: it is built into the layer (Paddle's `use_global_stats`, the switch
PaddleDetection's `freeze_norm` uses), not a mode, so no later `model.train()`, DataParallel wrapper or
EMA copy turns it back. Its affine weight and bias still train unless their stage is frozen.
"""
from typing import Iterator

import paddle.nn as nn

from utils.distributed import unwrap_model
from utils.logger import get_logger

_logger = get_logger(__name__)


def _batch_norms(layer: nn.Layer) -> Iterator[nn.BatchNorm2D]:
    return (sub for sub in layer.sublayers(include_self=True) if isinstance(sub, nn.BatchNorm2D))


def use_running_stats(layer: nn.Layer) -> int:
    """Every BatchNorm in `layer` normalises with, and keeps, its running statistics; returns how many."""
    count = 0
    for bn in _batch_norms(layer):
        bn._use_global_stats = True  # read by its forward in train and eval mode alike (Paddle 2.6 and 3)
        count += 1
    return count


def apply_finetune_switches(model: nn.Layer, *, freeze_stages: int = 0, bn_eval: bool = False) -> None:
    """Freeze stages 1..`freeze_stages` (no gradient, so no optimizer state; BatchNorms on running
    statistics) and, with `bn_eval`, put every BatchNorm on its running statistics. Call before the
    optimizer is built: it leaves out what does not take gradients."""
    model = unwrap_model(model)
    num_stages = getattr(model, 'num_stages', 0)
    if not 0 <= freeze_stages <= num_stages:
        raise ValueError(f'freeze_stages: expected 0..{num_stages} (the stages of {type(model).__name__}), '
                         f'got {freeze_stages}')
    for index in range(freeze_stages):
        stage = getattr(model, f'stage{index}')
        params = [p for p in stage.parameters() if not p.stop_gradient]
        for param in params:
            param.stop_gradient = True
        frozen_bns = use_running_stats(stage)
        _logger.info('freeze_stages %d: stage%d frozen (%d tensors, %d params; %d BatchNorms on running statistics)',
                     freeze_stages, index, len(params), sum(int(p.numel()) for p in params), frozen_bns)
    if bn_eval:
        _logger.info('bn_eval: %d BatchNorms normalise with, and keep, their running statistics',
                     use_running_stats(model))

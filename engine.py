"""The training loop: one epoch of optimizer updates with AMP, accumulation, mixup and EMA.

It loops and returns averages; it builds nothing, writes no files and leaves evaluation to
`utils.evaluation.evaluate` (the same loop eval.py uses).
"""
import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np
import paddle

from utils.distributed import all_reduce_mean, get_world_size
from utils.logger import get_logger
from utils.metrics import MetricLogger, SmoothedValue

_logger = get_logger(__name__)


def step_seed(seed: int, rank: int, epoch: int, step: int) -> int:
    """Seed for the model-side randomness (dropout, drop path, mixup) of one step: a resumed run
    redraws exactly what the uninterrupted run drew at that step."""
    return int(np.random.SeedSequence([seed, rank, epoch, step]).generate_state(1)[0] % (2 ** 31))


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a non-finite loss or gradient."""


@dataclass
class AmpConfig:
    enable: bool = False
    dtype: str = 'float16'
    level: str = 'O1'

    def autocast(self):
        # softmax and layer_norm stay fp32: attention logits and norm statistics overflow fp16 first.
        return paddle.amp.auto_cast(enable=self.enable, dtype=self.dtype, level=self.level,
                                    custom_black_list={'softmax', 'layer_norm'})


@dataclass
class TrainState:
    """What the loop advances and a checkpoint must carry to resume mid-epoch."""
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0  # optimizer updates so far
    bad_steps: int = 0  # consecutive skipped steps


def train_one_epoch(model: paddle.nn.Layer, criterion: Callable, loader, optimizer, scheduler, state: TrainState, *,
                    seed: int = 0, rank: int = 0, amp: AmpConfig = AmpConfig(), scaler=None, mixup=None,
                    update_freq: int = 1, model_ema=None, max_bad_steps: int = 20, print_freq: int = 50,
                    on_update: Optional[Callable[[TrainState], None]] = None) -> Dict[str, float]:
    """Train from `state.step_in_epoch` to the end of `state.epoch`; returns epoch averages.

    The sampler must already be positioned (set_epoch / set_start_batch). Each micro-batch is one
    loader step; every `update_freq` steps the optimizer updates, the LR is set for that update and
    `on_update(state)` runs (checkpointing every N steps). A step whose loss or gradient is not finite
    is skipped; `max_bad_steps` consecutive ones raise NonFiniteLossError.
    """
    model.train()
    world_size = get_world_size()
    logger = MetricLogger(logger=_logger)
    logger.add_meter('lr', SmoothedValue(window_size=1, fmt='{value:.6f}'))
    header = f'Epoch: [{state.epoch}]'
    # Whole accumulation groups only: every update sees batch x world x update_freq images, and the
    # trailing micro-batches that cannot fill one are skipped (len() counts only what is left to read).
    steps_per_epoch = loader.batch_sampler.num_batches // update_freq * update_freq
    start = state.step_in_epoch
    optimizer.clear_grad()
    if start:
        _logger.info('resuming inside epoch %d at step %d/%d', state.epoch, start, steps_per_epoch)
    for images, targets in logger.log_every(loader, print_freq, header):
        step = state.step_in_epoch
        if step >= steps_per_epoch:
            break
        update_now = (step + 1) % update_freq == 0
        paddle.seed(step_seed(seed, rank, state.epoch, step))
        if mixup is not None:
            mixup.reseed(step_seed(seed, rank, state.epoch, step))
            images, targets = mixup(images, targets)
        lr = scheduler.set_lr(optimizer, state.epoch, step // update_freq)
        sync_context = model.no_sync() if world_size > 1 and not update_now and hasattr(model, 'no_sync') else None
        with amp.autocast():
            output = model(images)
        loss = criterion(output.astype('float32'), targets)
        if not math.isfinite(float(loss)):  # one host sync per step, as DeiT's loss.item() check
            _skip_step(optimizer, state, max_bad_steps, f'loss is {float(loss)}', scaler)
            continue
        scaled = (scaler.scale(loss) if scaler is not None else loss) / update_freq
        if sync_context is not None:
            with sync_context:
                scaled.backward()
        else:
            scaled.backward()
        state.step_in_epoch += 1
        if update_now:
            if not _apply_update(optimizer, scaler, state, max_bad_steps):
                continue
            state.global_step += 1
            state.bad_steps = 0
            if model_ema is not None:
                model_ema.update(model)
            if on_update is not None:
                on_update(state)
        logged = all_reduce_mean(loss.detach().clone()) if world_size > 1 else loss.detach()
        logger.update(n=images.shape[0], loss=logged, lr=lr)
    logger.synchronize_between_processes()
    stats = logger.global_avgs()
    _logger.info('Averaged stats: %s', logger)
    state.epoch += 1
    state.step_in_epoch = 0
    return stats


def _apply_update(optimizer, scaler, state: TrainState, max_bad_steps: int) -> bool:
    """Optimizer step (through the loss scaler when there is one); False if it was skipped."""
    if scaler is not None:
        scaler.step(optimizer)
        skipped = bool(getattr(scaler, '_found_inf', False))  # read before update() consumes it
        scaler.update()
        optimizer.clear_grad()
        if skipped:
            _skip_step(optimizer, state, max_bad_steps, 'gradient overflow', scaler)
            return False
        return True
    optimizer.step()
    optimizer.clear_grad()
    return True


def _skip_step(optimizer, state: TrainState, max_bad_steps: int, why: str, scaler) -> None:
    optimizer.clear_grad()
    state.bad_steps += 1
    scale = f', loss scale {float(scaler._scale):g}' if scaler is not None and hasattr(scaler, '_scale') else ''
    _logger.warning('epoch %d step %d: %s, step skipped (%d in a row%s)', state.epoch, state.step_in_epoch, why,
                    state.bad_steps, scale)
    state.step_in_epoch += 1
    if max_bad_steps and state.bad_steps >= max_bad_steps:
        raise NonFiniteLossError(f'{state.bad_steps} consecutive steps had a non-finite loss or gradient '
                                 f'(last: {why}); stopping. checkpoint-latest.pd holds the last good state; '
                                 f'lower --lr, set --clip_grad, or try --amp_dtype bfloat16')

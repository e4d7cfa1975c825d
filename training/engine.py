"""The training loop: one epoch of optimizer updates with AMP, accumulation, mixup and EMA.

It loops and returns averages; it builds nothing, writes no files and leaves evaluation to
`training.evaluation.evaluate` (the same loop eval.py uses). Every decision that changes control flow
(skip an update, stop the run) is taken on values all ranks share, so ranks never diverge.
"""
import contextlib
import math
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import paddle

from training.amp import AmpConfig, fp32_state_dict
from utils.distributed import all_reduce_sum, get_world_size, unwrap_model
from utils.logger import get_logger
from training.metrics import MetricLogger, SmoothedValue

_logger = get_logger(__name__)


def step_seed(seed: int, rank: int, epoch: int, step: int) -> int:
    """Seed for the model-side randomness (dropout, drop path, mixup) of one step: a resumed run
    redraws exactly what the uninterrupted run drew at that step."""
    return int(np.random.SeedSequence([seed, rank, epoch, step]).generate_state(1)[0] % (2 ** 31))


class NonFiniteLossError(RuntimeError):
    """Too many consecutive updates skipped for a non-finite loss or gradient."""


class StopRequested(RuntimeError):
    """Every rank agreed to stop at this update boundary (a preemption signal); the state is consistent."""


@dataclass
class TrainState:
    """What the loop advances and a checkpoint must carry to resume mid-epoch."""
    epoch: int = 0
    step_in_epoch: int = 0  # micro-batches of this epoch consumed (updates x update_freq at a boundary)
    global_step: int = 0  # optimizer updates applied so far
    bad_steps: int = 0  # consecutive updates skipped


def _agree(loss: paddle.Tensor, stop: bool, world_size: int) -> Tuple[float, bool]:
    """(mean loss over ranks, any rank wants to stop) from one all-reduce and one host sync.

    A NaN or inf loss on any rank makes the mean non-finite on every rank, so all skip together.
    """
    if world_size == 1:
        return float(loss), stop
    packed = paddle.stack([loss.detach().astype('float32').reshape([]),
                           paddle.to_tensor(float(stop), dtype='float32')])
    total, stops = all_reduce_sum(packed).numpy().tolist()
    return total / world_size, stops > 0


def train_one_epoch(model: paddle.nn.Layer, criterion: Callable, loader, optimizer, scheduler, state: TrainState, *,
                    seed: int = 0, rank: int = 0, amp: AmpConfig = AmpConfig(), scaler=None, mixup=None,
                    update_freq: int = 1, model_ema=None, max_bad_steps: int = 20, print_freq: int = 50,
                    on_update: Optional[Callable[[TrainState], None]] = None,
                    stop_requested: Optional[Callable[[], bool]] = None) -> Dict[str, float]:
    """Train from `state.step_in_epoch` to the end of epoch `state.epoch`; returns epoch averages.

    The sampler must already be positioned (set_epoch / set_start_batch). Each micro-batch is one
    loader step; every `update_freq` steps the optimizer updates with the LR of that update, and
    `on_update(state)` runs (checkpointing every N updates). An accumulation group with a non-finite
    loss, or whose gradients overflow the loss scale, is skipped whole; `max_bad_steps` skipped
    updates in a row raise NonFiniteLossError. When `stop_requested()` is true on any rank at an
    update, all ranks raise StopRequested right after it. The caller advances `state.epoch`.
    """
    model.train()
    world_size = get_world_size()
    logger = MetricLogger(logger=_logger)
    logger.add_meter('lr', SmoothedValue(window_size=1, fmt='{value:.6f}'))
    # Whole accumulation groups only: every update sees batch x world x update_freq images, and the
    # trailing micro-batches that cannot fill one are skipped (len() counts only what is left to read).
    steps_per_epoch = loader.batch_sampler.num_batches // update_freq * update_freq
    start = state.step_in_epoch
    if start:
        _logger.info('resuming inside epoch %d at step %d/%d', state.epoch, start, steps_per_epoch)
    optimizer.clear_grad()
    skip_reason = None  # set when a loss of the current accumulation group is not finite
    batches = logger.log_every(loader, print_freq, f'Epoch: [{state.epoch}]')
    for step, (images, targets) in enumerate(batches, start=start):
        if step >= steps_per_epoch:
            break
        update_now = (step + 1) % update_freq == 0
        paddle.seed(step_seed(seed, rank, state.epoch, step))
        if mixup is not None:
            mixup.reseed(step_seed(seed, rank, state.epoch, step))
            images, targets = mixup(images, targets)
        lr = scheduler.set_lr(optimizer, state.epoch, step // update_freq)
        # DataParallel arms its gradient all-reduce in forward, so the forward belongs inside no_sync too;
        # once armed, the all-reduce must run (on every rank alike), even for a loss that will be discarded.
        all_reduce_grads = world_size > 1 and update_now and skip_reason is None
        with contextlib.nullcontext() if world_size == 1 or all_reduce_grads else model.no_sync():
            with amp.autocast():
                output = model(images)
            loss = criterion(output.astype('float32'), targets)
            mean_loss, stop = _agree(loss, update_now and stop_requested is not None and stop_requested(),
                                     world_size)
            finite = math.isfinite(mean_loss)
            if (finite and skip_reason is None) or all_reduce_grads:
                scaled = scaler.scale(loss) if scaler is not None else loss
                (scaled / update_freq).backward()
        state.step_in_epoch = step + 1
        if finite:
            logger.update(n=images.shape[0], loss=mean_loss, lr=lr)
        elif skip_reason is None:
            skip_reason = f'mean loss over ranks is {mean_loss} at step {step}'
        if not update_now:
            continue
        applied = skip_reason is None and _step(optimizer, scaler)
        optimizer.clear_grad()
        if applied:
            state.global_step += 1
            state.bad_steps = 0
            if model_ema is not None:
                model_ema.update(fp32_state_dict(unwrap_model(model), optimizer))
            if on_update is not None:
                on_update(state)
        else:
            _count_skipped_update(state, max_bad_steps, skip_reason or 'gradient overflow', scaler)
        skip_reason = None
        if stop:
            raise StopRequested(f'stopped at epoch {state.epoch} step {state.step_in_epoch}')
    logger.synchronize_between_processes()
    _logger.info('Averaged stats: %s', logger)
    return logger.global_avgs()


def _step(optimizer, scaler) -> bool:
    """One optimizer update (through the loss scaler when there is one); False if it overflowed."""
    if scaler is not None:
        return scaler.step_and_update(optimizer)
    optimizer.step()
    return True


def _count_skipped_update(state: TrainState, max_bad_steps: int, why: str, scaler) -> None:
    state.bad_steps += 1
    scale = f', loss scale now {scaler.loss_scale():g}' if scaler is not None else ''
    _logger.warning('epoch %d, update ending at step %d: %s; update skipped (%d in a row%s)', state.epoch,
                    state.step_in_epoch - 1, why, state.bad_steps, scale)
    if max_bad_steps and state.bad_steps >= max_bad_steps:
        raise NonFiniteLossError(f'{state.bad_steps} consecutive updates had a non-finite loss or gradient '
                                 f'(last: {why}); stopping. checkpoint-latest.pd holds the last good state; '
                                 f'lower --lr, set --clip_grad, or try --amp_dtype bfloat16')

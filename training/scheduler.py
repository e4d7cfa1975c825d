"""Warmup + cosine learning rate as a pure function of the epoch, matching timm's CosineLRScheduler.

The official CvT code (microsoft/CvT lib/scheduler/build.py, tools/train.py) builds timm 0.3.2's
cosine scheduler with t_initial = TRAIN.END_EPOCH (300), cycle_limit 1, no warmup prefix and no
noise; the recipe warms up 5 epochs from 1e-6 and ends at min_lr 1e-5. It is stepped once per epoch
(`step(begin_epoch)` before the first, `step(epoch + 1)` after each), so the LR is constant within
an epoch.
"""
import math
from typing import Optional


def scale_lr(base_lr: float, base_batch: int, global_batch: int) -> float:
    """Linear scaling rule: `base_lr` was tuned for `base_batch` images per step over all processes."""
    if base_batch <= 0 or global_batch <= 0:
        raise ValueError(f'scale_lr: batch sizes must be positive, got base_batch={base_batch}, '
                         f'global_batch={global_batch}')
    return base_lr * global_batch / base_batch


def cosine_lr(epoch: float, base_lr: float, epochs: int, warmup_epochs: float = 5, warmup_lr: float = 1e-6,
              min_lr: float = 1e-5) -> float:
    """LR at a (possibly fractional) epoch: linear warmup from `warmup_lr`, then one cosine cycle to `min_lr`.

    As in timm (warmup_prefix=False) the cosine is measured from epoch 0, not from the end of warmup,
    so the first post-warmup epoch gets cos(pi * warmup_epochs / epochs), and past `epochs` the LR
    stays at `min_lr` (cycle_limit=1).
    """
    if epoch < warmup_epochs:
        return warmup_lr + epoch * (base_lr - warmup_lr) / warmup_epochs
    if epoch >= epochs:
        return min_lr
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + math.cos(math.pi * epoch / epochs))


class CosineScheduler:
    """`cosine_lr` bound to one run's settings, stepped per epoch (official) or per optimizer update.

    Per-update mode follows timm's `--sched-on-updates`: update `step` of epoch `epoch` gets the LR of
    the fractional epoch `epoch + step / steps_per_epoch`. In per-epoch mode `step` is ignored, so the
    training loop may call `set_lr(optimizer, epoch, step)` every iteration either way.
    """

    def __init__(self, base_lr: float, epochs: int, *, warmup_epochs: float = 5, warmup_lr: float = 1e-6,
                 min_lr: float = 1e-5, per_step: bool = False, steps_per_epoch: Optional[int] = None):
        if epochs <= 0:
            raise ValueError(f'CosineScheduler: epochs must be positive, got {epochs}')
        if warmup_epochs < 0:
            raise ValueError(f'CosineScheduler: warmup_epochs must be >= 0, got {warmup_epochs}')
        if per_step and (steps_per_epoch is None or steps_per_epoch <= 0):
            raise ValueError(f'CosineScheduler: per_step needs a positive steps_per_epoch, got {steps_per_epoch}')
        self.base_lr = base_lr
        self.epochs = epochs
        self.warmup_epochs = warmup_epochs
        self.warmup_lr = warmup_lr
        self.min_lr = min_lr
        self.per_step = per_step
        self.steps_per_epoch = steps_per_epoch

    def lr_at(self, epoch: int, step: int = 0) -> float:
        """LR for optimizer update `step` (0-based, within the epoch) of epoch `epoch` (0-based)."""
        t = epoch + step / self.steps_per_epoch if self.per_step else epoch
        return cosine_lr(t, self.base_lr, self.epochs, self.warmup_epochs, self.warmup_lr, self.min_lr)

    def set_lr(self, optimizer, epoch: int, step: int = 0) -> float:
        """Write `lr_at(epoch, step)` into a Paddle optimizer built with a float LR; returns the LR."""
        lr = self.lr_at(epoch, step)
        optimizer.set_lr(lr)
        return lr

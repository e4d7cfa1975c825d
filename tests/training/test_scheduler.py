"""LR schedule: official CvT-13 curve (timm CosineLRScheduler semantics), per-step mode, scaling rule."""
import math

import paddle
import pytest

from training.scheduler import CosineScheduler, cosine_lr, scale_lr

TOL = 1e-9


@pytest.fixture
def cvt13():
    """cvt-13 recipe at global batch 2048: base 2e-3, 300 epochs, 5 warmup from 1e-6, min 1e-5."""
    return CosineScheduler(base_lr=2e-3, epochs=300, warmup_epochs=5, warmup_lr=1e-6, min_lr=1e-5)


@pytest.mark.parametrize('epoch, expected', [
    (0, 1e-6),
    (1, 4.008e-4),
    (2, 8.006e-4),
    (4, 1.6002e-3),
    # warmup ends at epoch 5 with no prefix offset: the cosine is already at pi * 5 / 300
    (5, 1e-5 + 0.995e-3 * 2 * math.cos(math.pi * 5 / 600) ** 2),
    (150, 1.005e-3),
    # 1 + cos(pi * 299/300) = 2 sin^2(pi/600)
    (299, 1.005455648131543e-05),
    (300, 1e-5),
    (400, 1e-5),
])
def test_cvt13_curve(cvt13, epoch, expected):
    assert cvt13.lr_at(epoch) == pytest.approx(expected, abs=TOL)


def test_epoch5_is_just_below_base(cvt13):
    assert cvt13.lr_at(5) == pytest.approx(1.998636387080801e-3, abs=TOL)
    assert cvt13.lr_at(5) < 2e-3


def test_per_epoch_mode_ignores_step(cvt13):
    assert cvt13.lr_at(3, step=0) == cvt13.lr_at(3, step=700)


def test_per_step_uses_fractional_epoch():
    sched = CosineScheduler(2e-3, 300, per_step=True, steps_per_epoch=4)
    assert sched.lr_at(1, 2) == pytest.approx(1e-6 + 1.5 * (2e-3 - 1e-6) / 5, abs=TOL)
    assert sched.lr_at(7, 0) == pytest.approx(cosine_lr(7, 2e-3, 300), abs=TOL)
    assert sched.lr_at(150, 2) == pytest.approx(
        1e-5 + 0.5 * (2e-3 - 1e-5) * (1 + math.cos(math.pi * 150.5 / 300)), abs=TOL)
    # last update of the run still lies inside the single cosine cycle
    assert 1e-5 < sched.lr_at(299, 3) < sched.lr_at(299, 0)


def test_no_warmup_starts_at_base():
    assert cosine_lr(0, 1e-3, 10, warmup_epochs=0) == pytest.approx(1e-3, abs=TOL)


def test_per_step_requires_steps_per_epoch():
    with pytest.raises(ValueError, match='steps_per_epoch'):
        CosineScheduler(1e-3, 10, per_step=True)


def test_set_lr_writes_optimizer(cvt13):
    layer = paddle.nn.Linear(2, 2)
    opt = paddle.optimizer.AdamW(learning_rate=0.1, parameters=layer.parameters())
    lr = cvt13.set_lr(opt, 1)
    assert lr == opt.get_lr() == pytest.approx(4.008e-4, abs=TOL)


def test_scale_lr_linear_rule():
    assert scale_lr(2e-3, 2048, 1024) == pytest.approx(1e-3)
    assert scale_lr(2.5e-4, 256, 2048) == pytest.approx(2e-3)
    with pytest.raises(ValueError, match='global_batch'):
        scale_lr(1e-3, 256, 0)

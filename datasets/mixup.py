"""Batch Mixup / CutMix with label smoothing, producing soft targets (timm's `Mixup` semantics).

Mixup: https://arxiv.org/abs/1710.09412, CutMix: https://arxiv.org/abs/1905.04899. Each sample is
mixed with its partner in the reversed batch (`x.flip(0)`), as timm does.
"""
from typing import Optional, Sequence, Tuple

import numpy as np
import paddle
import paddle.nn.functional as F

MODES = ('batch', 'pair', 'elem')


def smoothed_one_hot(target: paddle.Tensor, num_classes: int, smoothing: float = 0.0) -> paddle.Tensor:
    """One-hot rows with `1 - smoothing + smoothing/num_classes` on the label and `smoothing/num_classes` elsewhere."""
    off_value = smoothing / num_classes
    on_value = 1.0 - smoothing + off_value
    return F.one_hot(target.astype('int64').flatten(), num_classes) * (on_value - off_value) + off_value


def mixup_target(target: paddle.Tensor, num_classes: int, lam, smoothing: float = 0.0) -> paddle.Tensor:
    """`lam * y + (1 - lam) * y.flip(0)` of the smoothed one-hot targets; `lam` a float or (B, 1)."""
    y = smoothed_one_hot(target, num_classes, smoothing)
    return y * lam + y.flip([0]) * (1.0 - lam)


def rand_bbox(rng: np.random.RandomState, img_hw: Tuple[int, int], lam, count: Optional[int] = None):
    """CutMix box with area ~(1 - lam) of the image, centred uniformly, clipped at the borders."""
    img_h, img_w = img_hw
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = (img_h * ratio).astype(int), (img_w * ratio).astype(int)
    cy = rng.randint(0, img_h, size=count)
    cx = rng.randint(0, img_w, size=count)
    yl, yh = np.clip(cy - cut_h // 2, 0, img_h), np.clip(cy + cut_h // 2, 0, img_h)
    xl, xh = np.clip(cx - cut_w // 2, 0, img_w), np.clip(cx + cut_w // 2, 0, img_w)
    return yl, yh, xl, xh


def rand_bbox_minmax(rng: np.random.RandomState, img_hw: Tuple[int, int], minmax: Sequence[float],
                     count: Optional[int] = None):
    """CutMix box whose height and width are uniform fractions in [min, max) of the image's."""
    img_h, img_w = img_hw
    cut_h = rng.randint(int(img_h * minmax[0]), int(img_h * minmax[1]), size=count)
    cut_w = rng.randint(int(img_w * minmax[0]), int(img_w * minmax[1]), size=count)
    yl = rng.randint(0, img_h - cut_h, size=count)
    xl = rng.randint(0, img_w - cut_w, size=count)
    return yl, yl + cut_h, xl, xl + cut_w


def box_mask(boxes: paddle.Tensor, img_hw) -> paddle.Tensor:
    """(B, 1, H, W) bool, True inside each row's box [yl, yh) x [xl, xh) of `boxes` (B, 4) float32.

    Made on the boxes' device from two aranges, so only the B x 4 corners cross from the host.
    """
    rows = paddle.arange(img_hw[0], dtype='float32').reshape([1, 1, -1, 1])
    cols = paddle.arange(img_hw[1], dtype='float32').reshape([1, 1, 1, -1])
    yl, yh, xl, xh = paddle.unbind(boxes.reshape([-1, 4, 1, 1, 1]), axis=1)
    return (rows >= yl) & (rows < yh) & (cols >= xl) & (cols < xh)


class Mixup:
    """Mix a batch (B, C, H, W) with its reverse and return (mixed images, soft targets (B, num_classes)).

    Args:
        mixup_alpha: Beta(alpha, alpha) for the mixup ratio; 0 turns mixup off.
        cutmix_alpha: Beta(alpha, alpha) for the cutmix ratio; 0 turns cutmix off.
        cutmix_minmax: (min, max) box side fractions; turns cutmix on and replaces cutmix_alpha.
        prob: probability of mixing a batch ('batch') or an element ('pair'/'elem').
        switch_prob: probability of cutmix instead of mixup when both are on.
        mode: 'batch' (one ratio for the batch), 'pair' (one per mirrored pair) or 'elem' (one per sample).
        label_smoothing: smoothing of the one-hot targets before mixing.
        seed: seed of this object's own RNG. It does not draw from the global np.random, which
            the transforms use; see also `reseed`.

    The cutmix ratio is corrected to the clipped box: lam = 1 - box_area / (H * W), as timm's
    default `correct_lam=True` does. Set `mixup_enabled = False` to stop mixing (mixup_off_epoch);
    the targets stay smoothed one-hot then.
    """

    def __init__(self, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0,
                 cutmix_minmax: Optional[Sequence[float]] = None, prob: float = 1.0, switch_prob: float = 0.5,
                 mode: str = 'batch', label_smoothing: float = 0.1, num_classes: int = 1000, seed: int = 0):
        if mode not in MODES:
            raise ValueError(f'mixup mode: expected one of {MODES}, found {mode!r}')
        if num_classes <= 0:
            raise ValueError(f'num_classes: expected a positive integer for mixup targets, found {num_classes}')
        if cutmix_minmax is not None:
            if len(cutmix_minmax) != 2 or not 0 < cutmix_minmax[0] < cutmix_minmax[1] <= 1:
                raise ValueError(f'cutmix_minmax: expected (min, max) with 0 < min < max <= 1, found {cutmix_minmax}')
            cutmix_alpha = 1.0  # as timm: the box comes from minmax, alpha only marks cutmix as on
        if mixup_alpha <= 0 and cutmix_alpha <= 0:
            raise ValueError(f'mixup: expected mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax, '
                             f'found {mixup_alpha}, {cutmix_alpha}, {cutmix_minmax}')
        if not 0 <= label_smoothing < 1:
            raise ValueError(f'label_smoothing: expected a value in [0, 1), found {label_smoothing}')
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.cutmix_minmax = cutmix_minmax
        self.mix_prob = prob
        self.switch_prob = switch_prob
        self.mode = mode
        self.label_smoothing = label_smoothing
        self.num_classes = num_classes
        self.mixup_enabled = True
        self.rng = np.random.RandomState(seed % 2**32)

    def reseed(self, seed: int) -> None:
        """Restart the RNG from `seed` (the train loop passes a per-step seed, so a resumed run
        draws what the uninterrupted run drew)."""
        self.rng = np.random.RandomState(seed % 2**32)

    def _draw_lam(self, use_cutmix, size=None):
        cut = self.rng.beta(self.cutmix_alpha, self.cutmix_alpha, size=size) if self.cutmix_alpha > 0 else 1.0
        mix = self.rng.beta(self.mixup_alpha, self.mixup_alpha, size=size) if self.mixup_alpha > 0 else 1.0
        return np.where(use_cutmix, cut, mix)

    def _draw_use_cutmix(self, size=None):
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            return self.rng.rand(*(() if size is None else (size,))) < self.switch_prob
        return np.full(() if size is None else size, self.cutmix_alpha > 0)

    def _params_per_batch(self) -> Tuple[float, bool]:
        if not (self.mixup_enabled and self.rng.rand() < self.mix_prob):
            return 1.0, False
        use_cutmix = bool(self._draw_use_cutmix())
        return float(self._draw_lam(use_cutmix)), use_cutmix

    def _params_per_elem(self, n: int) -> Tuple[np.ndarray, np.ndarray]:
        if not self.mixup_enabled:
            return np.ones(n, dtype=np.float32), np.zeros(n, dtype=bool)
        use_cutmix = self._draw_use_cutmix(n)
        lam = self._draw_lam(use_cutmix, n)
        mixed = self.rng.rand(n) < self.mix_prob
        return np.where(mixed, lam, 1.0).astype(np.float32), use_cutmix & mixed

    def _cutmix_box(self, img_hw, lam, count=None):
        """Box corners and the ratio corrected to the clipped box's area."""
        if self.cutmix_minmax is not None:
            box = rand_bbox_minmax(self.rng, img_hw, self.cutmix_minmax, count)
        else:
            box = rand_bbox(self.rng, img_hw, lam, count)
        yl, yh, xl, xh = box
        return box, 1.0 - (yh - yl) * (xh - xl) / float(img_hw[0] * img_hw[1])

    def _mix_batch(self, x: paddle.Tensor, partner: paddle.Tensor) -> Tuple[paddle.Tensor, float]:
        """One draw for the whole batch: the partner's pixels inside a box (cutmix) or a blend (mixup).

        Single-kernel ops (where, lerp): on CPU they are about twice as fast as slice assignment and
        a multiply-add of two tensors.
        """
        lam, use_cutmix = self._params_per_batch()
        if lam == 1.0:
            return x, 1.0
        if not use_cutmix:
            return paddle.lerp(partner, x, lam), lam  # lam * x + (1 - lam) * partner
        box, lam = self._cutmix_box(tuple(x.shape[-2:]), lam)
        in_box = box_mask(paddle.to_tensor(np.reshape(box, (1, 4)), dtype='float32', place=x.place), x.shape[-2:])
        return paddle.where(in_box, partner, x), float(lam)

    def _elem_draws(self, batch_size: int, img_hw) -> np.ndarray:
        """Per-sample (B, 6) float32 rows [yl, yh, xl, xh, use_cutmix, lam]; 'pair' mirrors one draw onto
        each partner. Float32 holds the box corners exactly (integers far below 2**24)."""
        n = batch_size // 2 if self.mode == 'pair' else batch_size
        lam, use_cutmix = self._params_per_elem(n)
        boxes, cut_lam = self._cutmix_box(img_hw, lam, count=n)
        lam = np.where(use_cutmix, cut_lam, lam).astype(np.float32)
        draws = np.stack([*boxes, use_cutmix, lam], axis=1).astype(np.float32)
        return np.concatenate([draws, draws[::-1]]) if self.mode == 'pair' else draws

    def __call__(self, x: paddle.Tensor, target: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """x (B, C, H, W) float, target (B,) int -> (mixed x, soft target (B, num_classes) float32)."""
        batch_size, img_hw = x.shape[0], tuple(x.shape[-2:])
        if self.mode != 'batch' and batch_size % 2:
            raise ValueError(f"mixup mode '{self.mode}': expected an even batch size, found {batch_size}")
        # The mirrored batch; index_select is several times faster than flip on CPU.
        partner = paddle.index_select(x, paddle.arange(batch_size - 1, -1, -1))
        if self.mode == 'batch':
            x, lam = self._mix_batch(x, partner)
        else:
            # One small host-to-device copy of the draws; the (B, 1, H, W) weights are made on the device.
            draws = paddle.to_tensor(self._elem_draws(batch_size, img_hw), place=x.place)
            use_cutmix, lam = draws[:, 4].astype('bool').reshape([-1, 1, 1, 1]), draws[:, 5:6]
            keep = paddle.logical_not(box_mask(draws[:, :4], img_hw)).astype(x.dtype)
            # weight 1 keeps a pixel, 0 takes the partner's (cutmix), lam blends (mixup): one formula.
            w = paddle.where(use_cutmix, keep, lam.reshape([-1, 1, 1, 1]).astype(x.dtype))
            x = x * w + partner * (1.0 - w)
        return x, mixup_target(target, self.num_classes, lam, self.label_smoothing)

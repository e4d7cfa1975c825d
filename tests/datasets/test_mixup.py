"""Mixup/CutMix: soft targets, lambda from the cutmix box, blend, switch probabilities, smoothing, modes."""
import numpy as np
import paddle
import pytest

from datasets.mixup import Mixup, mixup_target
from tests.host_traffic import count_host_traffic

B, C, H, W, K = 6, 3, 16, 20, 10


def _batch():
    # Sample i is the constant i, so every output pixel tells which sample it came from.
    x = paddle.to_tensor(np.arange(B, dtype=np.float32)[:, None, None, None] * np.ones((1, C, H, W), np.float32))
    target = paddle.to_tensor(np.arange(B, dtype=np.int64))  # distinct labels 0..B-1
    return x, target


def _own_fraction(x_out, i):
    own = np.asarray(x_out[i]) == i
    partner = np.asarray(x_out[i]) == B - 1 - i
    assert np.all(own | partner)  # cutmix copies pixels, never blends
    return own.mean(), partner[0]


@pytest.mark.parametrize('mode', ['batch', 'pair', 'elem'])
@pytest.mark.parametrize('alphas', [(0.8, 1.0), (0.8, 0.0), (0.0, 1.0)])
def test_targets_are_distributions(mode, alphas):
    x, target = _batch()
    mixup = Mixup(*alphas, mode=mode, num_classes=K, seed=1)
    for _ in range(5):
        x_out, soft = mixup(x, target)
        assert x_out.shape == x.shape and soft.shape == [B, K] and soft.dtype == paddle.float32
        np.testing.assert_allclose(soft.numpy().sum(axis=1), 1.0, rtol=1e-6)
        assert soft.numpy().min() >= 0


def test_cutmix_lambda_is_one_minus_box_area():
    x, target = _batch()
    mixup = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=K, seed=3)
    boxes_seen = 0
    for _ in range(10):
        x_out, soft = mixup(x, target)
        for i in range(B):
            own, partner_mask = _own_fraction(x_out.numpy(), i)
            lam = soft.numpy()[i, i]
            assert lam == pytest.approx(own, abs=1e-6)  # lam = 1 - box_area / (H * W)
            assert soft.numpy()[i, B - 1 - i] == pytest.approx(1 - own, abs=1e-6)
            rows, cols = np.nonzero(partner_mask)
            if rows.size:  # the partner's pixels form one axis-aligned rectangle
                boxes_seen += 1
                assert rows.size == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    assert boxes_seen > 0


def test_mixup_blends_with_the_reversed_batch():
    x = paddle.to_tensor(np.random.RandomState(0).rand(B, C, H, W).astype(np.float32))
    target = paddle.to_tensor(np.arange(B, dtype=np.int64))
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=K, seed=4)
    x_out, soft = mixup(x, target)
    lam = soft.numpy()[0, 0]
    assert 0 < lam < 1
    np.testing.assert_allclose(soft.numpy()[:, :B].diagonal(), lam, rtol=1e-6)  # one lam per batch
    expected = lam * x.numpy() + (1 - lam) * x.numpy()[::-1]
    np.testing.assert_allclose(x_out.numpy(), expected, rtol=1e-5, atol=1e-6)


def test_switch_and_mix_probabilities():
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.6, switch_prob=0.3, num_classes=K, seed=0)
    draws = [mixup._params_per_batch() for _ in range(4000)]
    mixed = [use_cutmix for lam, use_cutmix in draws if lam != 1.0]
    assert len(mixed) / len(draws) == pytest.approx(0.6, abs=0.03)
    assert np.mean(mixed) == pytest.approx(0.3, abs=0.03)
    lam, use_cutmix = mixup._params_per_elem(4000)
    assert np.mean(lam != 1.0) == pytest.approx(0.6, abs=0.03)
    assert np.mean(use_cutmix[lam != 1.0]) == pytest.approx(0.3, abs=0.03)


def test_smoothing_values_and_mixup_off():
    x, target = _batch()
    mixup = Mixup(label_smoothing=0.1, num_classes=K, seed=0)
    mixup.mixup_enabled = False  # what the train loop does from mixup_off_epoch on
    x_out, soft = mixup(x, target)
    np.testing.assert_array_equal(x_out.numpy(), x.numpy())
    expected = np.full((B, K), 0.1 / K, np.float32)
    expected[np.arange(B), np.arange(B)] = 1 - 0.1 + 0.1 / K
    np.testing.assert_allclose(soft.numpy(), expected, rtol=1e-6)


def test_pair_mode_mirrors_each_draw():
    x, target = _batch()
    mixup = Mixup(mixup_alpha=1.0, cutmix_alpha=1.0, mode='pair', label_smoothing=0.0, num_classes=K, seed=5)
    for _ in range(5):
        x_out, soft = mixup(x, target)
        lam = soft.numpy()[np.arange(B), np.arange(B)]
        np.testing.assert_allclose(lam, lam[::-1], rtol=1e-6)
        out = x_out.numpy()
        np.testing.assert_allclose(out[0] + out[B - 1], B - 1, rtol=1e-6)  # swapped box or mirrored blend


def test_elem_mode_draws_per_sample():
    x, target = _batch()
    mixup = Mixup(mixup_alpha=1.0, cutmix_alpha=0.0, mode='elem', label_smoothing=0.0, num_classes=K, seed=6)
    x_out, soft = mixup(x, target)
    lam = soft.numpy()[np.arange(B), np.arange(B)]
    assert len(np.unique(lam)) == B
    expected = lam[:, None, None, None] * x.numpy() + (1 - lam[:, None, None, None]) * x.numpy()[::-1]
    np.testing.assert_allclose(x_out.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_cutmix_minmax_box_sides():
    x, target = _batch()
    mixup = Mixup(mixup_alpha=0.0, cutmix_alpha=0.0, cutmix_minmax=(0.25, 0.5), label_smoothing=0.0,
                  num_classes=K, seed=7)
    for _ in range(10):
        x_out, soft = mixup(x, target)
        _, partner = _own_fraction(x_out.numpy(), 0)
        rows, cols = np.nonzero(partner)
        assert int(H * 0.25) <= rows.max() - rows.min() + 1 < int(H * 0.5)
        assert int(W * 0.25) <= cols.max() - cols.min() + 1 < int(W * 0.5)
        assert soft.numpy()[0, 0] == pytest.approx(1 - partner.mean(), abs=1e-6)


def test_seeded_and_reseed_reproducible():
    x, target = _batch()
    a, b = Mixup(num_classes=K, seed=11), Mixup(num_classes=K, seed=11)
    for _ in range(3):
        np.testing.assert_array_equal(a(x, target)[1].numpy(), b(x, target)[1].numpy())
    a.reseed(4)
    first = a(x, target)[0].numpy()
    a(x, target)
    a.reseed(4)
    np.testing.assert_array_equal(a(x, target)[0].numpy(), first)


def test_input_is_not_modified():
    x, target = _batch()
    before = x.numpy().copy()
    Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, num_classes=K, seed=0)(x, target)
    np.testing.assert_array_equal(x.numpy(), before)


@pytest.mark.parametrize('mode', ['pair', 'elem'])
def test_odd_batch_is_an_error_for_pair_and_elem(mode):
    x, target = _batch()
    with pytest.raises(ValueError, match=f"mixup mode '{mode}': expected an even batch size, found 5"):
        Mixup(mode=mode, num_classes=K)(x[:5], target[:5])
    Mixup(mode='batch', num_classes=K)(x[:5], target[:5])


@pytest.mark.parametrize('kwargs, message', [
    (dict(mode='half'), "mixup mode: expected one of"),
    (dict(num_classes=0), 'num_classes: expected a positive integer'),
    (dict(mixup_alpha=0.0, cutmix_alpha=0.0), 'mixup: expected mixup_alpha > 0, cutmix_alpha > 0 or cutmix_minmax'),
    (dict(cutmix_minmax=(0.5, 0.2)), r'cutmix_minmax: expected \(min, max\) with 0 < min < max <= 1'),
    (dict(label_smoothing=1.0), r'label_smoothing: expected a value in \[0, 1\)'),
])
def test_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Mixup(**{'num_classes': K, **kwargs})


def _host_built(mixup, x, target):
    """Mixup as it was before the masks moved to the device: boxes and weights built in numpy."""
    batch_size, img_hw = x.shape[0], tuple(x.shape[-2:])
    partner = paddle.index_select(x, paddle.arange(batch_size - 1, -1, -1))
    if mixup.mode == 'batch':
        lam, use_cutmix = mixup._params_per_batch()
        if lam == 1.0:
            pass
        elif not use_cutmix:
            x = paddle.lerp(partner, x, lam)
        else:
            (yl, yh, xl, xh), lam = mixup._cutmix_box(img_hw, lam)
            in_box = np.zeros((1, 1) + img_hw, dtype=bool)
            in_box[..., yl:yh, xl:xh] = True
            x, lam = paddle.where(paddle.to_tensor(in_box), partner, x), float(lam)
    else:
        n = batch_size // 2 if mixup.mode == 'pair' else batch_size
        lam, use_cutmix = mixup._params_per_elem(n)
        boxes, cut_lam = mixup._cutmix_box(img_hw, lam, count=n)
        lam = np.where(use_cutmix, cut_lam, lam).astype(np.float32)
        if mixup.mode == 'pair':
            lam, use_cutmix = np.concatenate([lam, lam[::-1]]), np.concatenate([use_cutmix, use_cutmix[::-1]])
            boxes = [np.concatenate([b, b[::-1]]) for b in boxes]
        rows = np.arange(img_hw[0])[None, :, None]
        cols = np.arange(img_hw[1])[None, None, :]
        yl, yh, xl, xh = (b[:, None, None] for b in boxes)
        in_box = (rows >= yl) & (rows < yh) & (cols >= xl) & (cols < xh)
        weights = np.where(use_cutmix[:, None, None], np.where(in_box, 0.0, 1.0), lam[:, None, None])
        w = paddle.to_tensor(weights[:, None].astype(np.float32), dtype=x.dtype)
        x, lam = x * w + partner * (1.0 - w), paddle.to_tensor(lam[:, None])
    return x, mixup_target(target, mixup.num_classes, lam, mixup.label_smoothing)


@pytest.mark.parametrize('mode', ['batch', 'pair', 'elem'])
@pytest.mark.parametrize('kwargs', [dict(), dict(mixup_alpha=0.0), dict(cutmix_minmax=(0.2, 0.7)),
                                    dict(prob=0.6, switch_prob=0.3)])
def test_device_masks_equal_the_host_construction_bit_for_bit(mode, kwargs):
    rng = np.random.RandomState(0)
    x = paddle.to_tensor(rng.randn(B, C, H, W).astype(np.float32))
    target = paddle.to_tensor(np.arange(B, dtype=np.int64))
    device, host = (Mixup(**kwargs, mode=mode, num_classes=K, seed=21) for _ in range(2))
    for step in range(8):
        device.reseed(step)
        host.reseed(step)
        (x_device, y_device), (x_host, y_host) = device(x, target), _host_built(host, x, target)
        np.testing.assert_array_equal(x_device.numpy(), x_host.numpy())
        np.testing.assert_array_equal(y_device.numpy(), y_host.numpy())


@pytest.mark.parametrize('mode', ['batch', 'pair', 'elem'])
def test_host_to_device_traffic_per_call_does_not_grow_with_the_image(mode):
    """A few small copies of the draws per call, the same for 16 x 20 and 160 x 200 images."""
    per_size = []
    for scale in (1, 10):
        x = paddle.zeros([B, C, H * scale, W * scale])
        target = paddle.to_tensor(np.arange(B, dtype=np.int64))
        mixup = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, mode=mode, num_classes=K, seed=2)
        with count_host_traffic() as traffic:
            mixup(x, target)
        assert traffic.syncs == []
        per_size.append((len(traffic.copies), traffic.copied_bytes))
    assert per_size[0] == per_size[1]
    assert per_size[0][0] <= 3 and per_size[0][1] <= 64 * B

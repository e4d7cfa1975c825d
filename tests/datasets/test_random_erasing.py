"""RandomErasing: box geometry and count, probability, fill statistics per mode."""
import math
import random

import numpy as np
import pytest

from datasets.random_erasing import RandomErasing


def _box_fits(box_h, box_w, area_lo, area_hi, aspect_lo, aspect_hi):
    """Some (area, aspect) in range rounds to this box (sides are rounded square roots)."""
    area_ok = (box_h - 0.5) * (box_w - 0.5) <= area_hi and (box_h + 0.5) * (box_w + 0.5) >= area_lo
    aspect_ok = (box_h - 0.5) / (box_w + 0.5) <= aspect_hi and (box_h + 0.5) / (box_w - 0.5) >= aspect_lo
    return area_ok and aspect_ok


@pytest.mark.parametrize('min_count, max_count', [(1, None), (1, 3), (2, 2)])
def test_boxes_count_area_and_aspect(min_count, max_count):
    random.seed(0)
    erasing = RandomErasing(1.0, min_count=min_count, max_count=max_count)
    high = max_count or min_count
    counts = set()
    for _ in range(400):
        boxes = erasing.sample_boxes(48, 64)
        counts.add(len(boxes))
        for top, left, box_h, box_w in boxes:
            assert 0 <= top and top + box_h <= 48 and 0 <= left and left + box_w <= 64
            area = 48 * 64 / len(boxes)
            assert _box_fits(box_h, box_w, 0.02 * area, area / 3, 0.3, 1 / 0.3)
    assert counts == set(range(min_count, high + 1))


def test_custom_area_and_aspect_bounds():
    random.seed(1)
    erasing = RandomErasing(1.0, min_area=0.1, max_area=0.2, min_aspect=0.5, max_aspect=1.0)
    for _ in range(200):
        (_, _, box_h, box_w), = erasing.sample_boxes(100, 100)
        assert _box_fits(box_h, box_w, 1000, 2000, 0.5, 1.0)


def test_probability_zero_leaves_input_unchanged():
    x = np.random.default_rng(0).standard_normal((3, 16, 16)).astype(np.float32)
    before = x.copy()
    erasing = RandomErasing(0.0, mode='pixel')
    for _ in range(50):
        assert erasing(x) is x
    np.testing.assert_array_equal(x, before)


def test_probability_is_respected():
    random.seed(2)
    erasing = RandomErasing(0.3, mode='const')
    erased = sum((erasing(np.ones((3, 16, 16), np.float32)) == 0).any() for _ in range(2000))
    assert abs(erased - 600) < 100  # > 4.5 sigma


def test_const_mode_erases_one_rectangle_with_zeros():
    random.seed(3)
    erasing = RandomErasing(1.0, mode='const')
    for _ in range(50):
        x = erasing(np.ones((3, 40, 50), np.float32))
        mask = (x == 0).all(axis=0)
        assert ((x == 0) | (x == 1)).all() and (mask == (x == 0).any(axis=0)).all()
        rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        box_h, box_w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
        assert mask.sum() == box_h * box_w  # a filled rectangle
        assert _box_fits(box_h, box_w, 0.02 * 2000, 2000 / 3, 0.3, 1 / 0.3)


def test_pixel_mode_fills_standard_normal_noise():
    random.seed(4)
    np.random.seed(4)
    x = RandomErasing(1.0, mode='pixel', min_area=0.3, max_area=0.3)(np.full((3, 64, 64), 9.0, np.float32))
    noise = x[x != 9.0]
    assert x.dtype == np.float32 and noise.size > 3000
    assert abs(noise.mean()) < 0.1 and abs(noise.std() - 1) < 0.1


def test_rand_mode_fills_one_normal_value_per_channel():
    random.seed(5)
    np.random.seed(5)
    values = []
    for _ in range(200):
        x = RandomErasing(1.0, mode='rand')(np.full((3, 32, 32), 9.0, np.float32))
        mask = x[0] != 9.0
        per_channel = [np.unique(x[c][mask]) for c in range(3)]
        assert all(v.size == 1 for v in per_channel)
        values.extend(v[0] for v in per_channel)
    assert abs(np.mean(values)) < 0.15 and abs(np.std(values) - 1) < 0.15


def test_batch_input_erases_each_image():
    random.seed(6)
    x = RandomErasing(1.0, mode='const')(np.ones((4, 3, 16, 16), np.float32))
    assert all((img == 0).any() for img in x)


def test_max_count_defaults_to_min_count_and_bad_args_raise():
    assert RandomErasing(0.5, min_count=2).max_count == 2
    with pytest.raises(ValueError, match='mode'):
        RandomErasing(0.5, mode='noise')
    with pytest.raises(ValueError, match='count'):
        RandomErasing(0.5, min_count=3, max_count=2)
    with pytest.raises(ValueError, match='CHW'):
        RandomErasing(1.0)(np.zeros((16, 16), np.float32))


def test_default_aspect_range_is_symmetric_in_log_space():
    erasing = RandomErasing(0.5, min_aspect=0.25)
    assert erasing.log_aspect == pytest.approx((math.log(0.25), math.log(4.0)))


def test_box_must_be_strictly_smaller_than_the_image():
    random.seed(7)
    whole = RandomErasing(1.0, min_area=1.0, max_area=1.0, min_aspect=1.0, max_aspect=1.0)
    assert whole.sample_boxes(10, 10) == []  # timm skips a box after 10 draws that do not fit
    x = np.ones((3, 10, 10), np.float32)
    np.testing.assert_array_equal(whole(x), np.ones((3, 10, 10), np.float32))

"""build_loader: batch layout, seeded determinism (0 and 2 workers), epochs, resume, bad images, eval coverage."""
import numpy as np
import paddle
import pytest

from datasets.imagenet import build_dataset
from datasets.loader import build_loader
from datasets.samplers import sample_seeds


@pytest.fixture
def train_set(tiny_imagefolder, noisy_transform):
    return build_dataset(str(tiny_imagefolder), 'train', transform=noisy_transform)


def _epoch(loader, epoch):
    loader.batch_sampler.set_epoch(epoch)
    return [(x.numpy(), y.numpy()) for x, y in loader]


def _assert_same(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)


def test_batches_are_float_images_and_int64_labels(train_set):
    batches = _epoch(build_loader(train_set, 4, is_train=True, num_workers=0), 0)
    assert len(batches) == 3
    for x, y in batches:
        assert x.shape == (4, 3, 32, 32) and x.dtype == np.float32
        assert y.shape == (4,) and y.dtype == np.int64
    assert sorted(np.concatenate([y for _, y in batches]).tolist()) == sorted(train_set.labels.tolist())


@pytest.mark.parametrize('num_workers', [0, 2])
def test_same_seed_same_batches_new_epoch_new_batches(train_set, num_workers):
    make = lambda: build_loader(train_set, 4, is_train=True, seed=3, num_workers=num_workers)  # noqa: E731
    first = _epoch(make(), 1)
    _assert_same(first, _epoch(make(), 1))
    other_epoch = _epoch(make(), 2)
    assert not np.array_equal(np.concatenate([y for _, y in first]), np.concatenate([y for _, y in other_epoch]))
    other_seed = _epoch(build_loader(train_set, 4, is_train=True, seed=4, num_workers=num_workers), 1)
    assert not np.array_equal(first[0][0], other_seed[0][0])


def test_workers_draw_different_random_numbers(train_set, tiny_imagefolder):
    plain = build_dataset(str(tiny_imagefolder), 'train',
                          transform=lambda img: np.asarray(img.resize((32, 32)), np.float32).transpose(2, 0, 1) / 255)
    loader = build_loader(train_set, 2, is_train=True, num_workers=2)
    loader.batch_sampler.set_epoch(0)
    order = [i for batch in loader.batch_sampler for i, _ in batch]
    noise = [x[k, 0, 0, 0] - plain[order[2 * b + k]][0][0, 0, 0]
             for b, (x, _) in enumerate(_epoch(loader, 0)) for k in range(2)]
    assert len(np.unique(np.round(noise, 5))) == len(noise)  # no stream shared by two workers


def test_sample_seeds_are_distinct_per_position_rank_epoch_and_seed():
    seeds = {int(s) for r in range(2) for e in range(3) for s in sample_seeds(0, r, e, 50)}
    assert len(seeds) == 300
    assert sample_seeds(1, 0, 0, 4).tolist() != sample_seeds(0, 0, 0, 4).tolist()
    assert sample_seeds(0, 0, 0, 4).tolist() == sample_seeds(0, 0, 0, 9)[:4].tolist()


@pytest.mark.parametrize('num_workers', [0, 2])
def test_resumed_epoch_draws_the_same_augmentations(train_set, num_workers):
    loader = build_loader(train_set, 4, is_train=True, seed=7, num_workers=num_workers)
    full = _epoch(loader, 3)
    loader.batch_sampler.set_epoch(3)
    loader.batch_sampler.set_start_batch(1)
    _assert_same([(x.numpy(), y.numpy()) for x, y in loader], full[1:])
    _assert_same(_epoch(build_loader(train_set, 4, is_train=True, seed=7, num_workers=2 - num_workers), 3), full)


def test_resume_mid_epoch_yields_the_remaining_batches(train_set):
    loader = build_loader(train_set, 4, is_train=True, num_workers=0)
    full = _epoch(loader, 5)
    loader.batch_sampler.set_epoch(5)
    loader.batch_sampler.set_start_batch(1)
    assert len(loader) == 2
    rest = [y.numpy() for _, y in loader]
    assert [y.tolist() for y in rest] == [y.tolist() for _, y in full[1:]]


def test_eval_loader_sees_every_image_once_over_ranks(tiny_imagefolder, noisy_transform):
    val = build_dataset(str(tiny_imagefolder), 'val', transform=noisy_transform)
    labels = []
    for rank in range(2):
        loader = build_loader(val, 5, is_train=False, num_replicas=2, rank=rank, num_workers=0)
        sizes = [len(y) for _, y in loader]
        assert sizes == [5, 1]
        labels += [int(v) for _, y in loader for v in y.numpy()]
    assert labels == val.labels.tolist()


@pytest.mark.parametrize('num_workers', [0, 2])
def test_bad_images_are_replaced_and_counted(tiny_imagefolder, noisy_transform, num_workers):
    (tiny_imagefolder / 'train' / 'n02' / 'a.jpeg').write_bytes(b'junk')
    (tiny_imagefolder / 'train' / 'n03' / 'b.JPEG').write_bytes(b'\xff\xd8\xff junk')
    ds = build_dataset(str(tiny_imagefolder), 'train', transform=noisy_transform)
    batches = _epoch(build_loader(ds, 3, is_train=True, num_workers=num_workers), 0)
    assert sum(len(y) for _, y in batches) == 12
    assert ds.num_replaced == 2


def test_error_policy_raises_one_line_from_the_loader(tiny_imagefolder, noisy_transform):
    bad = tiny_imagefolder / 'train' / 'n01' / 'a.JPEG'
    bad.write_bytes(b'junk')
    ds = build_dataset(str(tiny_imagefolder), 'train', transform=noisy_transform, bad_image_policy='error')
    loader = build_loader(ds, 12, is_train=True, num_workers=0)
    with pytest.raises(ValueError, match=f"^{bad}: unreadable image .*bad_image_policy='skip'"):
        _epoch(loader, 0)


def test_loader_argument_errors(train_set):
    with pytest.raises(ValueError, match='eval loader: repeated_aug and drop_last must be off'):
        build_loader(train_set, 4, is_train=False, drop_last=True)
    with pytest.raises(ValueError, match=r'12 images give no batch of 16 on each of 1 rank\(s\)'):
        build_loader(train_set, 16, is_train=True)


def test_repeated_aug_loader(train_set):
    loader = build_loader(train_set, 2, is_train=True, num_replicas=2, rank=0, repeated_aug=True, num_workers=0)
    assert len(loader) == 3  # ceil(12 / 2) samples per rank on a dataset smaller than one 256-round
    labels = [int(v) for _, y in loader for v in y.numpy()]
    assert len(labels) == 6


def test_with_project_transforms_and_mixup(tiny_imagefolder):
    from datasets.mixup import Mixup
    from datasets.transforms import build_transform
    transform = build_transform(True, 32, aa='rand-m9-mstd0.5-inc1', reprob=0.25)
    ds = build_dataset(str(tiny_imagefolder), 'train', transform=transform, num_classes=3)
    loader = build_loader(ds, 4, is_train=True, num_workers=2)
    mixup = Mixup(num_classes=3)
    for x, y in _epoch(loader, 0):
        assert x.shape == (4, 3, 32, 32) and x.dtype == np.float32
        _, soft = mixup(paddle.to_tensor(x), paddle.to_tensor(y))
        np.testing.assert_allclose(soft.numpy().sum(axis=1), 1.0, rtol=1e-6)

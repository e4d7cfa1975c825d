"""build_loader: batch layout, seeded determinism (0 and 2 workers), epochs, resume, bad images, eval coverage,
persistent workers, uint8 transfer with normalisation and random erasing on the device."""
import gc
import os
import signal
import threading
import time

import numpy as np
import paddle
import pytest

from datasets import loader as loader_module
from datasets.imagenet import build_dataset
from datasets.loader import NormalizeOnDevice, build_loader
from datasets.random_erasing import RandomErasing
from datasets.samplers import sample_seeds
from datasets.transforms import ToNormalizedArray, build_transform


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
    with pytest.raises(ValueError, match=f"^{bad}: unreadable image .*replace or remove that file$"):
        _epoch(loader, 0)


def test_loader_argument_errors(train_set):
    with pytest.raises(ValueError, match='eval loader: repeated_aug, drop_last and update_freq must be off'):
        build_loader(train_set, 4, is_train=False, drop_last=True)
    with pytest.raises(ValueError, match=r'12 images give no batch of 16 on each of 1 rank\(s\) .*; '
                                         r'lower --batch_size or add images'):
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


class _Pids(paddle.io.Dataset):
    """Each sample is the pid of the process that read it."""

    def __init__(self, size):
        super().__init__()
        self.size = size

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        return np.full((1,), os.getpid(), np.int64), 0


def _running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _pids(loader):
    return {int(p) for x, _ in loader for p in x.numpy().ravel()}


def test_persistent_workers_live_across_epochs_resumes_and_evaluations():
    train = build_loader(_Pids(12), 2, is_train=True, num_workers=2)
    val = build_loader(_Pids(6), 2, is_train=False, num_workers=2)
    train.batch_sampler.set_epoch(0)
    train_pids, val_pids = _pids(train), _pids(val)
    assert len(train_pids) == len(val_pids) == 2 and os.getpid() not in train_pids | val_pids
    for epoch, start in [(1, 4), (2, 0)]:  # a mid-epoch resume start, then a whole epoch
        train.batch_sampler.set_epoch(epoch)
        train.batch_sampler.set_start_batch(start)
        assert _pids(train) == train_pids
        assert _pids(val) == val_pids


def _wait_ended(pids):
    deadline = time.monotonic() + 10
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(_running(pid) for pid in pids)


def test_dropping_a_loader_ends_its_persistent_workers():
    loader = build_loader(_Pids(4), 2, is_train=False, num_workers=2)
    workers = _pids(loader)
    assert all(_running(pid) for pid in workers)
    del loader
    gc.collect()
    assert _wait_ended(workers)


def test_leaving_a_pass_early_ends_its_workers_at_once():
    loader = build_loader(_Pids(12), 2, is_train=True, num_workers=2)
    loader.batch_sampler.set_epoch(0)
    workers = {int(x.numpy()[0, 0]) for _, (x, _) in zip(range(3), loader)}  # 3 of 6 batches, more prefetched
    assert _wait_ended(workers)  # not kept idle (with their prefetched batches) until the next pass
    assert len(_pids(loader)) == 2


@pytest.mark.parametrize('uint8_transfer', [True, False])
def test_persistent_workers_give_the_batches_of_inline_reading(tiny_imagefolder, uint8_transfer):
    transform = build_transform(True, 32, aa='rand-m9-mstd0.5-inc1', reprob=0.5)
    train_set = build_dataset(str(tiny_imagefolder), 'train', transform=transform)
    val_set = build_dataset(str(tiny_imagefolder), 'val', transform=build_transform(False, 32))

    def run(num_workers):
        train = build_loader(train_set, 4, is_train=True, seed=5, num_workers=num_workers,
                             uint8_transfer=uint8_transfer)
        val = build_loader(val_set, 5, is_train=False, num_workers=num_workers, uint8_transfer=uint8_transfer)
        passes = []
        for epoch, start in [(0, 0), (1, 1), (2, 0)]:
            train.batch_sampler.set_epoch(epoch)
            train.batch_sampler.set_start_batch(start)
            passes += [[(x.numpy(), y.numpy()) for x, y in train], [(x.numpy(), y.numpy()) for x, y in val]]
        return passes

    for inline, persistent in zip(run(0), run(2)):
        _assert_same(inline, persistent)


def test_a_pass_left_early_does_not_leak_into_the_next(train_set):
    reference = _epoch(build_loader(train_set, 2, is_train=True, num_workers=0), 1)
    loader = build_loader(train_set, 2, is_train=True, num_workers=2)
    loader.batch_sampler.set_epoch(0)
    for _ in zip(range(2), loader):  # leave after 2 of 6 batches, with more prefetched
        pass
    _assert_same(_epoch(loader, 1), reference)


def test_update_freq_yields_only_whole_accumulation_groups(train_set):
    loader = build_loader(train_set, 2, is_train=True, num_workers=0, update_freq=4)
    assert loader.batch_sampler.num_batches == 4  # 6 batches of 2, one whole group of 4
    assert len(_epoch(loader, 0)) == 4
    with pytest.raises(ValueError, match=r'12 images give no batch of 4 in groups of update_freq=4 on each of 1 '
                                         r'.*lower --batch_size or --update_freq'):
        build_loader(train_set, 4, is_train=True, update_freq=4)


def test_uint8_transfer_sends_uint8_and_yields_the_float_pipeline_output(tiny_imagefolder):
    train_set = build_dataset(str(tiny_imagefolder), 'train', transform=build_transform(True, 32))
    loader = build_loader(train_set, 4, is_train=True, seed=2, num_workers=0, uint8_transfer=True)
    assert loader.dataset[0][0].dtype == np.uint8 and loader.dataset[0][0].shape == (3, 32, 32)
    assert train_set[0][0].dtype == np.float32  # the caller's dataset keeps its float transform
    assert build_loader(train_set, 4, is_train=True).device_stage is None  # on a CPU device: float32 by default
    on_device = _epoch(loader, 0)
    on_host = _epoch(build_loader(train_set, 4, is_train=True, seed=2, num_workers=0, uint8_transfer=False), 0)
    for (xa, ya), (xb, yb) in zip(on_device, on_host):
        assert xa.dtype == np.float32
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_allclose(xa, xb, rtol=0, atol=1e-6)


def test_device_erasing_follows_the_sample_seed_only(tiny_imagefolder):
    transform = build_transform(True, 32, reprob=0.5, remode='pixel', recount=2)
    train_set = build_dataset(str(tiny_imagefolder), 'train', transform=transform)
    unerased = build_dataset(str(tiny_imagefolder), 'train', transform=build_transform(True, 32))
    make = lambda ds, workers: build_loader(ds, 4, is_train=True, seed=9, num_workers=workers,  # noqa: E731
                                            uint8_transfer=True)
    erased = _epoch(make(train_set, 2), 3)
    _assert_same(erased, _epoch(make(train_set, 0), 3))
    resumed = make(train_set, 0)
    resumed.batch_sampler.set_epoch(3)
    resumed.batch_sampler.set_start_batch(2)
    _assert_same([(x.numpy(), y.numpy()) for x, y in resumed], erased[2:])
    changed = [np.any(xa != xb, axis=(1, 2, 3)) for (xa, _), (xb, _) in zip(erased, _epoch(make(unerased, 0), 3))]
    assert 0 < np.concatenate(changed).sum() < 12  # about half the images erased, the rest untouched


@pytest.mark.parametrize('mode', ['const', 'rand', 'pixel'])
def test_normalize_on_device_erases_boxes_with_the_mode_fill(mode):
    stage = NormalizeOnDevice(ToNormalizedArray((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
                              RandomErasing(1.0, mode=mode, min_area=0.2, max_area=0.2))
    images = paddle.full([2, 3, 16, 16], 255, dtype='uint8')
    x = stage(images, sample_seeds=[11, 12]).numpy()
    kept = x == np.float32(2.0)  # (1 - 0.5) / 0.25
    erased = ~kept
    assert 0.1 < erased.mean() < 0.3  # one box of ~20% of each image, on all channels
    assert np.array_equal(erased[:, 0], erased[:, 1])
    if mode == 'const':
        assert np.all(x[erased] == 0)
    elif mode == 'rand':  # one value per channel and image
        assert all(len(np.unique(x[i, c][erased[i, c]])) == 1 for i in range(2) for c in range(3))
    else:
        assert x[erased].std() > 0.5
    np.testing.assert_array_equal(stage(images, sample_seeds=[11, 12]).numpy(), x)
    assert not np.array_equal(stage(images, sample_seeds=[12, 11]).numpy(), x)


class _StuckAfter(_Pids):
    """The first `readable` samples are the reading process's pid; reading any later one never returns."""

    def __init__(self, size, readable):
        super().__init__(size)
        self.readable = readable

    def __getitem__(self, index):
        if index >= self.readable:
            time.sleep(3600)  # a read from a hung network file system
        return super().__getitem__(index)


def test_shutdown_kills_a_worker_stuck_in_a_read(monkeypatch):
    monkeypatch.setattr(loader_module, 'WORKER_SHUTDOWN_S', 0.5)
    loader = build_loader(_StuckAfter(8, readable=2), 1, is_train=False, num_workers=2)
    batches = iter(loader)
    workers = {int(next(batches)[0].numpy()[0, 0]) for _ in range(2)}  # one each; then both are stuck
    shutdown = threading.Thread(target=loader.shutdown_workers, daemon=True)
    shutdown.start()
    shutdown.join(timeout=60)
    try:
        assert not shutdown.is_alive(), 'shutdown_workers waits for a worker that never reads its stop token'
        assert len(workers) == 2 and _wait_ended(workers)
    finally:
        for pid in filter(_running, workers):
            os.kill(pid, signal.SIGKILL)

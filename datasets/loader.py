"""build_loader: dataset + batch sampler (per-sample augmentation seeds) + numpy collate -> paddle.io.DataLoader,
with persistent workers and uint8 transfer (normalisation and random erasing on the device)."""
import atexit
import copy
import multiprocessing.util  # noqa: F401  (its exit hook is registered before the loaders' one below)
import random
import sys
import weakref
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import paddle
from paddle.io import DataLoader
from paddle.tensor.random import gaussian  # the one random op with a per-call seed (0 = global generator)

from utils.env import limit_worker_threads

from .random_erasing import RandomErasing
from .samplers import DistributedEvalSampler, DistributedTrainSampler, RepeatedAugSampler
from .transforms import Pipeline, ToNormalizedArray
from .worker_signals import end_with_parent, ignore_stop_signals

# Device-side random erasing draws from its own stream per sample: the sample seed itself already
# drives the worker's crop/flip/RandAugment draws.
_ERASING_STREAM = 0xE5A5E

# How long a worker may take to finish the batch in hand and read its stop token before it is killed.
WORKER_SHUTDOWN_S = 10.0


def collate_numpy(samples: Sequence[Tuple[np.ndarray, int]]) -> List[np.ndarray]:
    """[(image, label), ...] -> [images stacked (B, ...), labels int64 (B,)]."""
    images = np.stack([s[0] for s in samples])
    labels = np.asarray([s[1] for s in samples], dtype=np.int64)
    return [images, labels]


class NormalizeOnDevice:
    """The end of a build_transform pipeline, run on a uint8 (B, C, H, W) batch where it lands:
    (x / 255 - mean) / std in float32, then RandomErasing per sample.

    A sample's erasing is a function of its sampler seed only, so it stays the same with any
    num_workers and after a resume; its noise comes from Paddle's generator on the current device.
    """

    def __init__(self, normalize: ToNormalizedArray, erasing: Optional[RandomErasing] = None):
        mean, std = np.asarray(normalize.mean), np.asarray(normalize.std)
        self.scale = (1.0 / (255.0 * std)).astype(np.float32).reshape(1, 3, 1, 1)
        self.shift = (-mean / std).astype(np.float32).reshape(1, 3, 1, 1)
        self.erasing = erasing
        self._on_device = None  # (scale, shift) tensors, made on first use (after the workers forked)

    def __call__(self, images: paddle.Tensor, sample_seeds: Optional[Sequence[int]] = None) -> paddle.Tensor:
        if self._on_device is None:
            self._on_device = paddle.to_tensor(self.scale), paddle.to_tensor(self.shift)
        scale, shift = self._on_device
        x = images.astype('float32') * scale + shift
        if self.erasing is not None:
            assert sample_seeds is not None, 'random erasing on the device needs the sampler seeds'
            self._erase(x, sample_seeds)
        return x

    def _erase(self, x: paddle.Tensor, sample_seeds: Sequence[int]) -> None:
        channels, height, width = x.shape[1:]
        mode = self.erasing.mode
        for i, seed in enumerate(sample_seeds):
            rng = random.Random(_ERASING_STREAM << 32 | seed)
            for top, left, box_h, box_w in self.erasing.draw(height, width, rng):
                if mode == 'const':
                    fill = 0.0  # the dataset mean
                else:  # 'pixel': noise per element, 'rand': one value per channel
                    shape = [channels, box_h, box_w] if mode == 'pixel' else [channels, 1, 1]
                    fill = gaussian(shape, seed=rng.randrange(1, 2**31)).expand([channels, box_h, box_w])
                x[i, :, top:top + box_h, left:left + box_w] = fill

    def __repr__(self) -> str:
        return f'{type(self).__name__}(erasing={self.erasing!r})'


class InlineReadDataLoader(DataLoader):
    """DataLoader whose num_workers=0 mode reads batches in the calling thread, which raises a
    dataset's recorded failure (bad_image_policy='error') right after the batch it happened in,
    which finishes uint8 batches with `device_stage`, whose persistent workers survive only
    passes that were read to the end, and whose workers end with the process, however it ends.

    Paddle's own num_workers=0 mode reads in a helper thread, which hangs the loop forever when the
    dataset raises. Paddle's persistent iterator (2.6 to 3.3) returns a stale batch of the previous
    pass, or fails with "pop from empty list", after a pass that was left early: its reset empties
    the blocking queue, not the batches its reader already took from it. Such an iterator is shut
    down and replaced.
    """
    device_stage: Optional[NormalizeOnDevice] = None
    _pass_unfinished = False
    _workers_iterator = None  # Paddle's multi-process iterator of the last pass: it owns the worker processes

    def shutdown_workers(self) -> None:
        """End the workers now (a worker still busy after WORKER_SHUTDOWN_S is killed); the next pass
        starts new ones.

        Paddle's persistent iterator is kept alive by its own reader thread, so its workers would
        outlive a dropped loader: deleting the loader calls this, and so does the process's exit.
        """
        iterator, self._workers_iterator, self._iterator = self._workers_iterator, None, None
        if iterator is None:
            return
        try:
            iterator._try_shutdown_all(WORKER_SHUTDOWN_S)
        finally:  # also when that raises (a worker that died, a second Ctrl-C while waiting)
            for worker in iterator._workers:
                if worker.is_alive():
                    worker.kill()
                    worker.join()

    def __del__(self):
        # At interpreter shutdown no thread can start, and ending Paddle's workers starts one (a queue's
        # feeder): the exit hook has already ended them.
        if not sys.is_finalizing():
            self.shutdown_workers()

    def __iter__(self):
        if self._pass_unfinished:
            self.shutdown_workers()
        self._pass_unfinished = True
        if self.num_workers > 0:
            batches = self._workers_iterator = super().__iter__()
            _WITH_WORKERS.add(self)
        else:
            batches = self._read_in_process()
        check = getattr(self.dataset, 'raise_if_failed', None)
        stage = self.device_stage
        # The sampler is pure given (epoch, start_batch): a second pass over it gives the sample
        # seeds of the batches the workers read, in order.
        sampled = iter(self.batch_sampler) if stage is not None and stage.erasing is not None else None
        try:
            for images, labels in batches:
                if check is not None:
                    check()
                if stage is not None:
                    seeds = [seed for _, seed in next(sampled)] if sampled is not None else None
                    images = stage(images, seeds)
                yield [images, labels]
            self._pass_unfinished = False
        finally:
            if self._pass_unfinished:  # left early (break, exception): free the workers and their batches now
                self.shutdown_workers()

    def _read_in_process(self) -> Iterator[List[paddle.Tensor]]:
        for indices in self.batch_sampler:
            batch = self.collate_fn([self.dataset[i] for i in indices])
            yield [paddle.to_tensor(array) for array in batch]


# Loaders that started workers. At exit an error may still hold one (its traceback, a reference cycle) and
# garbage collection comes too late: multiprocessing's exit hook SIGTERMs the workers, which outlive stop
# signals (worker_signals.ignore_stop_signals), and waits for them. Exit hooks run last registered first.
_WITH_WORKERS: 'weakref.WeakSet[InlineReadDataLoader]' = weakref.WeakSet()


@atexit.register
def _shutdown_all_workers() -> None:
    for loader in list(_WITH_WORKERS):
        loader.shutdown_workers()


def _uint8_transfer(dataset) -> Tuple[object, Optional[NormalizeOnDevice]]:
    """A shallow copy of `dataset` whose build_transform pipeline stops before normalisation, and
    the stage that finishes it on the device; (dataset, None) for any other transform."""
    transform = getattr(dataset, 'transform', None)
    split = transform.split_normalization() if isinstance(transform, Pipeline) else None
    if split is None:
        return dataset, None
    host, normalize, erasing = split
    host_dataset = copy.copy(dataset)  # shares paths, labels and the shared-memory failure counters
    host_dataset.transform = host
    return host_dataset, NormalizeOnDevice(normalize, erasing)


def _init_worker(worker_id: int) -> None:
    limit_worker_threads()  # workers run side by side: one math thread each (utils.env)
    # Workers outlive stop signals (the launcher signals each rank's whole process group) until the
    # rank has saved and shuts them down: one killed first would abort the rank mid-step. They do not
    # outlive the rank itself (a SIGKILL, the OOM killer).
    ignore_stop_signals(worker_id)
    end_with_parent()


def build_loader(dataset, batch_size: int, *, is_train: bool, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 num_workers: int = 4, use_shared_memory: bool = True, repeated_aug: bool = False,
                 drop_last: Optional[bool] = None, update_freq: int = 1, persistent_workers: bool = True,
                 uint8_transfer: Optional[bool] = None) -> DataLoader:
    """Loader over this rank's share of `dataset`, yielding [images float32 (B, C, H, W), labels (B,) int64]
    on the current device.

    Train: shuffled per epoch (call `loader.batch_sampler.set_epoch(epoch)` before each epoch and
    `set_start_batch(n)` to resume mid-epoch), DeiT repeated augmentation with `repeated_aug`,
    incomplete last batch dropped unless `drop_last=False`, only whole groups of `update_freq`
    batches (gradient accumulation). Eval: every image once over all ranks, in order. Train
    augmentations are a function of (seed, rank, epoch, position): the same with any num_workers
    and after a resume.

    `persistent_workers`: the worker processes live as long as the loader, not one pass (read
    every pass to the end, or the next one starts new workers). `uint8_transfer`: a dataset whose
    transform is a build_transform pipeline sends uint8 images through shared memory (a quarter of
    the float32 bytes) and they are normalised and randomly erased on the device. None: on unless
    the current device is the CPU, where Paddle's elementwise kernels in the training process cost
    more than the workers' normalisation saves (see tools/benchmark_data.py).
    """
    if uint8_transfer is None:
        uint8_transfer = not paddle.device.get_device().startswith('cpu')
    if drop_last is None:
        drop_last = is_train
    if is_train:
        sampler_cls = RepeatedAugSampler if repeated_aug else DistributedTrainSampler
        batch_sampler = sampler_cls(len(dataset), batch_size, num_replicas, rank, shuffle=True, seed=seed,
                                    drop_last=drop_last, whole_groups_of=update_freq)
    elif repeated_aug or drop_last or update_freq != 1:
        raise ValueError('eval loader: repeated_aug, drop_last and update_freq must be off (every image is '
                         f'evaluated once), found repeated_aug={repeated_aug}, drop_last={drop_last}, '
                         f'update_freq={update_freq}')
    else:
        batch_sampler = DistributedEvalSampler(len(dataset), batch_size, num_replicas, rank)
    if is_train and len(batch_sampler) == 0:
        groups, knobs = (f' in groups of update_freq={update_freq}', '--batch_size or --update_freq') \
            if update_freq > 1 else ('', '--batch_size')  # train.py's flags: only training drops last batches
        raise ValueError(f'{len(dataset)} images give no batch of {batch_size}{groups} on each of {num_replicas} '
                         f'rank(s) with drop_last={drop_last}; lower {knobs} or add images')
    dataset, device_stage = _uint8_transfer(dataset) if uint8_transfer else (dataset, None)
    loader = InlineReadDataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate_numpy,
                                  num_workers=num_workers, use_shared_memory=use_shared_memory,
                                  persistent_workers=persistent_workers and num_workers > 0,
                                  worker_init_fn=_init_worker)
    loader.device_stage = device_stage
    return loader

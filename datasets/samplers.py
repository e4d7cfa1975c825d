"""Batch samplers: distributed train (shuffle per epoch, resumable), DeiT repeated augmentation, eval.

Pure python/numpy; each yields lists of dataset indices and serves as `paddle.io.DataLoader`'s
`batch_sampler`. Repeated augmentation follows DeiT's RASampler
(https://github.com/facebookresearch/deit/blob/main/samplers.py), which microsoft/CvT uses.
"""
import abc
import math
from typing import Iterator

import numpy as np


def sample_seeds(seed: int, rank: int, epoch: int, n: int) -> np.ndarray:
    """One 32-bit seed per position of a rank's epoch: a sample's augmentation depends only on
    (seed, rank, epoch, position), not on which worker reads it or where a resumed run restarts."""
    base = int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])
    return (base + np.arange(n, dtype=np.uint64) * 0x9E3779B9) % 2**32  # golden-ratio stride: distinct seeds


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    """The same permutation of range(n) on every rank for a given (seed, epoch)."""
    # Legacy RandomState: its streams are frozen across numpy versions, so a resumed run gets the
    # order the interrupted run had.
    return np.random.RandomState((seed + epoch) % 2**32).permutation(n)


class _EpochBatchSampler(abc.ABC):
    """Batches of this rank's indices for the current epoch, starting at `start_batch`.

    Train samplers (`seeded`) yield (index, seed) pairs; the dataset seeds the augmentation RNGs
    with them, so training draws the same augmentations with any number of loader workers and
    after a mid-epoch resume.

    `whole_groups_of=K` (gradient accumulation over K micro-batches) keeps only whole groups of K
    batches: the loop then reads every batch an epoch yields, so a loader with persistent workers
    is never left mid-epoch (Paddle's persistent iterator returns stale batches after that).
    """
    seeded = False
    seed = 0

    def __init__(self, dataset_len: int, batch_size: int, num_replicas: int, rank: int, drop_last: bool,
                 whole_groups_of: int = 1):
        if dataset_len <= 0:
            raise ValueError(f'dataset_len: expected a positive number of samples, found {dataset_len}')
        if batch_size <= 0:
            raise ValueError(f'batch_size: expected a positive integer, found {batch_size}')
        if num_replicas <= 0 or not 0 <= rank < num_replicas:
            raise ValueError(f'rank/num_replicas: expected 0 <= rank < num_replicas, found {rank}/{num_replicas}')
        if whole_groups_of <= 0:
            raise ValueError(f'whole_groups_of: expected a positive integer, found {whole_groups_of}')
        self.dataset_len = dataset_len
        self.batch_size = batch_size
        self.num_replicas = num_replicas
        self.rank = rank
        self.drop_last = drop_last
        self.whole_groups_of = whole_groups_of
        self.epoch = 0
        self.start_batch = 0

    @abc.abstractmethod
    def _rank_indices(self) -> np.ndarray:
        """This rank's sample indices for `self.epoch`, in order."""

    @abc.abstractmethod
    def _num_rank_samples(self) -> int:
        """Length of `_rank_indices()`."""

    @property
    def num_batches(self) -> int:
        """Batches in a whole epoch on this rank, a multiple of `whole_groups_of` (`len()` counts only
        those left after `start_batch`)."""
        n = self._num_rank_samples()
        batches = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        return batches // self.whole_groups_of * self.whole_groups_of

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order; also rewinds to its first batch."""
        self.epoch = epoch
        self.start_batch = 0

    def set_start_batch(self, start_batch: int) -> None:
        """Skip the first `start_batch` batches of the current epoch (resuming mid-epoch); call after set_epoch."""
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f'start_batch: expected 0..{self.num_batches} (batches per epoch), found {start_batch}')
        self.start_batch = start_batch

    def __iter__(self) -> Iterator[list]:
        indices = self._rank_indices()
        seeds = sample_seeds(self.seed, self.rank, self.epoch, len(indices)) if self.seeded else None
        for b in range(self.start_batch, self.num_batches):
            batch = slice(b * self.batch_size, (b + 1) * self.batch_size)
            if seeds is None:
                yield indices[batch].tolist()
            else:
                yield list(zip(indices[batch].tolist(), seeds[batch].tolist()))

    def __len__(self) -> int:
        return self.num_batches - self.start_batch


class DistributedTrainSampler(_EpochBatchSampler):
    """Shuffle by (seed + epoch), identical on all ranks, pad to a multiple of num_replicas by
    repeating the first indices, then take every num_replicas-th index from `rank`
    (torch's DistributedSampler scheme, so every rank has the same number of batches)."""
    seeded = True

    def __init__(self, dataset_len: int, batch_size: int, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True, seed: int = 0, drop_last: bool = True, whole_groups_of: int = 1):
        super().__init__(dataset_len, batch_size, num_replicas, rank, drop_last, whole_groups_of)
        self.shuffle = shuffle
        self.seed = seed

    def _num_rank_samples(self) -> int:
        return math.ceil(self.dataset_len / self.num_replicas)

    def _rank_indices(self) -> np.ndarray:
        order = (epoch_permutation(self.dataset_len, self.seed, self.epoch) if self.shuffle
                 else np.arange(self.dataset_len))
        total = self._num_rank_samples() * self.num_replicas
        order = np.resize(order, total)  # pads by repeating from the start
        return order[self.rank::self.num_replicas]


class RepeatedAugSampler(_EpochBatchSampler):
    """DeiT's RASampler: each shuffled index repeated `num_repeats` times in a row, padded and
    strided over ranks (so the copies land on different ranks), then cut to about
    dataset_len / num_replicas samples per rank: an epoch sees ~1/num_repeats of the images,
    each `num_repeats` times with different augmentations.

    DeiT's cut is floor(dataset_len // 256 * 256 / num_replicas) (`selected_round=256`);
    `selected_round=0` uses ceil(dataset_len / num_replicas). A dataset smaller than one round
    (demo data) would get no samples at all, so it falls back to the unrounded cut.
    """
    seeded = True

    def __init__(self, dataset_len: int, batch_size: int, num_replicas: int = 1, rank: int = 0,
                 shuffle: bool = True, seed: int = 0, num_repeats: int = 3, selected_round: int = 256,
                 drop_last: bool = True, whole_groups_of: int = 1):
        if num_repeats < 1:
            raise ValueError(f'num_repeats: expected >= 1, found {num_repeats}')
        super().__init__(dataset_len, batch_size, num_replicas, rank, drop_last, whole_groups_of)
        self.shuffle = shuffle
        self.seed = seed
        self.num_repeats = num_repeats
        self.selected_round = selected_round if dataset_len >= selected_round else 0

    def _num_rank_samples(self) -> int:
        if self.selected_round:
            rounded = self.dataset_len // self.selected_round * self.selected_round
            return rounded // self.num_replicas
        return math.ceil(self.dataset_len / self.num_replicas)

    def _rank_indices(self) -> np.ndarray:
        order = (epoch_permutation(self.dataset_len, self.seed, self.epoch) if self.shuffle
                 else np.arange(self.dataset_len))
        repeated = np.repeat(order, self.num_repeats)  # [a, a, a, b, b, b, ...]
        total = math.ceil(len(repeated) / self.num_replicas) * self.num_replicas
        repeated = np.resize(repeated, total)
        return repeated[self.rank::self.num_replicas][:self._num_rank_samples()]


class DistributedEvalSampler(_EpochBatchSampler):
    """Every index exactly once over all ranks, in order, no padding: rank r gets the r-th of
    `num_replicas` contiguous chunks whose sizes differ by at most one (some ranks may get one
    batch fewer, so evaluation must not run a collective per batch)."""

    def __init__(self, dataset_len: int, batch_size: int, num_replicas: int = 1, rank: int = 0):
        super().__init__(dataset_len, batch_size, num_replicas, rank, drop_last=False)

    def _bounds(self):
        base, extra = divmod(self.dataset_len, self.num_replicas)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (1 if self.rank < extra else 0)

    def _num_rank_samples(self) -> int:
        start, end = self._bounds()
        return end - start

    def _rank_indices(self) -> np.ndarray:
        return np.arange(*self._bounds())

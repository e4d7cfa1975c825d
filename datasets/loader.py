"""build_loader: dataset + batch sampler (per-sample augmentation seeds) + numpy collate -> paddle.io.DataLoader."""
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np
import paddle
from paddle.io import DataLoader

from utils.preemption import ignore_stop_signals

from .samplers import DistributedEvalSampler, DistributedTrainSampler, RepeatedAugSampler


def collate_numpy(samples: Sequence[Tuple[np.ndarray, int]]) -> List[np.ndarray]:
    """[(image, label), ...] -> [images stacked (B, ...), labels int64 (B,)]."""
    images = np.stack([s[0] for s in samples])
    labels = np.asarray([s[1] for s in samples], dtype=np.int64)
    return [images, labels]


class InlineReadDataLoader(DataLoader):
    """DataLoader whose num_workers=0 mode reads batches in the calling thread, and which raises a
    dataset's recorded failure (bad_image_policy='error') right after the batch it happened in.

    Paddle's own num_workers=0 mode reads in a helper thread, which hangs the loop forever when the
    dataset raises.
    """

    def __iter__(self):
        batches = super().__iter__() if self.num_workers > 0 else self._read_in_process()
        check = getattr(self.dataset, 'raise_if_failed', None)
        for batch in batches:
            if check is not None:
                check()
            yield batch

    def _read_in_process(self) -> Iterator[List[paddle.Tensor]]:
        for indices in self.batch_sampler:
            batch = self.collate_fn([self.dataset[i] for i in indices])
            yield [paddle.to_tensor(array) for array in batch]


def build_loader(dataset, batch_size: int, is_train: bool, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 num_workers: int = 4, use_shared_memory: bool = True, repeated_aug: bool = False,
                 drop_last: Optional[bool] = None) -> DataLoader:
    """Loader over this rank's share of `dataset`, yielding [images (B, C, H, W), labels (B,) int64].

    Train: shuffled per epoch (call `loader.batch_sampler.set_epoch(epoch)` before each epoch and
    `set_start_batch(n)` to resume mid-epoch), DeiT repeated augmentation with `repeated_aug`,
    incomplete last batch dropped unless `drop_last=False`. Eval: every image once over all ranks,
    in order. Train augmentations are a function of (seed, rank, epoch, position): the same with
    any num_workers and after a resume.
    """
    if drop_last is None:
        drop_last = is_train
    if is_train:
        sampler_cls = RepeatedAugSampler if repeated_aug else DistributedTrainSampler
        batch_sampler = sampler_cls(len(dataset), batch_size, num_replicas, rank, shuffle=True, seed=seed,
                                    drop_last=drop_last)
    elif repeated_aug or drop_last:
        raise ValueError('eval loader: repeated_aug and drop_last must be off (every image is evaluated once), '
                         f'found repeated_aug={repeated_aug}, drop_last={drop_last}')
    else:
        batch_sampler = DistributedEvalSampler(len(dataset), batch_size, num_replicas, rank)
    if is_train and len(batch_sampler) == 0:
        raise ValueError(f'{len(dataset)} images give no batch of {batch_size} on each of {num_replicas} rank(s) '
                         f'with drop_last={drop_last}; lower batch_size or add images')
    # Workers outlive stop signals (the launcher signals each rank's whole process group) until the
    # rank has saved and shuts them down: one killed first would abort the rank mid-step.
    return InlineReadDataLoader(dataset, batch_sampler=batch_sampler, collate_fn=collate_numpy,
                                num_workers=num_workers, use_shared_memory=use_shared_memory,
                                worker_init_fn=ignore_stop_signals)

"""Top-k accuracy and training-loop meters: SmoothedValue and MetricLogger (DeiT-style progress lines).

Meters accept paddle tensors lazily: `update(loss=loss)` stores the (detached) device tensor and the
host sync happens once, for all values gathered since the last read, when a line is printed or an
average is asked for, so the loop does not block on the device every step.
"""
import datetime
import sys
import time
from collections import defaultdict, deque
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Union

import numpy as np
import paddle

from utils.distributed import all_reduce_sum, get_rank, get_world_size
from utils.logger import get_logger

Number = Union[int, float, paddle.Tensor]

# Pending tensors are resolved at least this often, bounding memory when nothing reads the meter.
_MAX_PENDING = 1024


def accuracy(output: paddle.Tensor, target: paddle.Tensor, topk: Sequence[int] = (1, 5)) -> List[paddle.Tensor]:
    """Top-k accuracy in PERCENT of the batch, one 0-D float32 tensor per k (no host sync).

    `target` holds class indices (B,) or (B, 1), or soft/one-hot targets (B, C) reduced by argmax
    (Mixup targets, as the official training loop does). A k above the class count counts as the
    class count (timm), so top-5 on a 2-class model is 100%.
    """
    if target.ndim == 2 and target.shape[1] == output.shape[1] and output.shape[1] > 1:
        target = target.argmax(axis=1)
    target = target.reshape([-1, 1]).astype('int64')
    maxk = min(max(topk), output.shape[1])
    _, pred = paddle.topk(output, k=maxk, axis=1)  # (B, maxk)
    correct = (pred == target).astype('float32')
    batch = output.shape[0]
    return [correct[:, :min(k, maxk)].sum() * (100.0 / batch) for k in topk]


class SmoothedValue:
    """A series of numbers with windowed median/avg, global average, max and last value.

    `update(value, n)` takes a float or a paddle tensor (one element) weighted by `n` (e.g. batch size).
    """

    def __init__(self, window_size: int = 20, fmt: Optional[str] = None):
        self.fmt = fmt or '{median:.4f} ({global_avg:.4f})'
        self.deque = deque(maxlen=window_size)
        self.total = 0.0
        self.count = 0
        self._pending = []

    def update(self, value: Number, n: int = 1) -> None:
        if isinstance(value, paddle.Tensor):
            value = value.detach()  # keep no autograd graph alive until the next print
        self._pending.append((value, n))
        if len(self._pending) >= _MAX_PENDING:
            self._resolve()

    def _resolve(self) -> None:
        """Turn pending values into floats, with one device-to-host copy for all tensors."""
        if not self._pending:
            return
        tensors = [v.reshape([]).astype('float32') for v, _ in self._pending if isinstance(v, paddle.Tensor)]
        host = iter(paddle.stack(tensors).numpy().tolist()) if tensors else iter(())
        for value, n in self._pending:
            value = next(host) if isinstance(value, paddle.Tensor) else float(value)
            self.deque.append(value)
            self.total += value * n
            self.count += n
        self._pending.clear()

    def synchronize_between_processes(self) -> None:
        """Sum count and total over processes (the window stays local), so global_avg is global."""
        self._resolve()
        if get_world_size() == 1:
            return
        stats = paddle.to_tensor([self.count, self.total], dtype='float64')
        all_reduce_sum(stats)
        count, total = stats.numpy().tolist()
        self.count, self.total = int(round(count)), total

    @property
    def median(self) -> float:
        self._resolve()
        return float(np.median(self.deque)) if self.deque else 0.0

    @property
    def avg(self) -> float:
        self._resolve()
        return float(np.mean(self.deque)) if self.deque else 0.0

    @property
    def global_avg(self) -> float:
        self._resolve()
        return self.total / self.count if self.count else 0.0

    @property
    def max(self) -> float:
        self._resolve()
        return max(self.deque) if self.deque else 0.0

    @property
    def value(self) -> float:
        self._resolve()
        return self.deque[-1] if self.deque else 0.0

    def __str__(self) -> str:
        return self.fmt.format(median=self.median, avg=self.avg, global_avg=self.global_avg, max=self.max,
                               value=self.value)


def terminal_progress_bar(total: Optional[int], header: str):
    """A tqdm bar on rank 0 when stdout is a terminal (log lines go above it), else None."""
    if not sys.stdout.isatty() or get_rank() != 0:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=header, leave=False, dynamic_ncols=True)


def _max_memory_mb() -> Optional[float]:
    """Peak GPU memory of this process in MB, or None on CPU."""
    if paddle.device.is_compiled_with_cuda() and paddle.device.get_device().startswith('gpu'):
        return paddle.device.cuda.max_memory_allocated() / 2 ** 20
    return None


class MetricLogger:
    """Named SmoothedValues plus `log_every`, which wraps the batch iterable and logs progress lines:

    `Epoch: [263]  [2250/2502]  eta: 0:02:21  lr: 0.000086  loss: 2.9626 (2.8445)  time: 0.5627
    data: 0.0116  imgs/s: 455  max mem: 6153` (one line; max mem only on GPU). Lines go through the
    project logger, which `setup_logger` silences below WARNING on ranks other than 0.
    """

    def __init__(self, delimiter: str = '  ', logger=None):
        self.meters: Dict[str, SmoothedValue] = defaultdict(SmoothedValue)
        self.delimiter = delimiter
        self.logger = logger or get_logger()
        self._last_n = None

    def add_meter(self, name: str, meter: SmoothedValue) -> None:
        """Register a meter with its own window/format, e.g. lr: SmoothedValue(1, '{value:.6f}')."""
        self.meters[name] = meter

    def update(self, n: Optional[int] = None, **values: Number) -> None:
        """Add one value per named meter, each weighted by `n` (default 1); pass the batch size as `n`
        for per-sample means, and `log_every` also uses the latest given `n` for imgs/s."""
        for name, value in values.items():
            self.meters[name].update(value, 1 if n is None else n)
        if n is not None:
            self._last_n = n

    def __getattr__(self, name: str) -> SmoothedValue:
        meters = self.__dict__.get('meters', {})
        if name in meters:
            return meters[name]
        raise AttributeError(f"'MetricLogger' has no meter or attribute '{name}'")

    def __str__(self) -> str:
        return self.delimiter.join(f'{name}: {meter}' for name, meter in self.meters.items())

    def synchronize_between_processes(self) -> None:
        for meter in self.meters.values():
            meter.synchronize_between_processes()

    def global_avgs(self) -> Dict[str, float]:
        """{name: global average}: what train_one_epoch / evaluate return."""
        return {name: meter.global_avg for name, meter in self.meters.items()}

    def log_every(self, iterable: Iterable, print_freq: int, header: str = '',
                  samples_per_iter: Optional[int] = None) -> Iterator:
        """Yield from `iterable`, logging a progress line every `print_freq` iterations and at the end.

        imgs/s is `samples_per_iter` (default: the `n` of the latest `update`) over the mean iteration
        time of the window; pass the global batch to report the throughput of all processes.
        """
        if print_freq <= 0:
            raise ValueError(f'print_freq: expected a positive number of iterations, got {print_freq}')
        total = len(iterable) if hasattr(iterable, '__len__') else None
        width = len(str(total)) if total is not None else 1
        iter_time = SmoothedValue(fmt='{avg:.4f}')
        data_time = SmoothedValue(fmt='{avg:.4f}')
        start = end = time.time()
        i = 0
        bar = terminal_progress_bar(total, header)
        for i, obj in enumerate(iterable):
            data_time.update(time.time() - end)
            yield obj
            iter_time.update(time.time() - end)
            if bar is not None:
                bar.update(1)
            if i % print_freq == 0 or (total is not None and i == total - 1):
                self.logger.info(self._progress_line(header, i, total, width, iter_time, data_time,
                                                     samples_per_iter or self._last_n))
            end = time.time()
        if bar is not None:
            bar.close()
        elapsed = time.time() - start
        seconds_per_iter = elapsed / max(i + 1, 1)
        self.logger.info(f'{header} Total time: {datetime.timedelta(seconds=int(elapsed))} '
                         f'({seconds_per_iter:.4f} s / it)'.strip())

    def _progress_line(self, header, i, total, width, iter_time, data_time, samples) -> str:
        parts = [header] if header else []
        if total is not None:
            eta = datetime.timedelta(seconds=int(iter_time.global_avg * (total - 1 - i)))
            parts += [f'[{i:>{width}d}/{total}]', f'eta: {eta}']
        else:
            parts.append(f'[{i}]')
        if self.meters:
            parts.append(str(self))
        parts += [f'time: {iter_time}', f'data: {data_time}']
        if samples and iter_time.avg > 0:
            parts.append(f'imgs/s: {samples / iter_time.avg:.0f}')
        memory = _max_memory_mb()
        if memory is not None:
            parts.append(f'max mem: {memory:.0f}')
        return self.delimiter.join(parts)

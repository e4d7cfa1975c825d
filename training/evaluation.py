"""The evaluation loop shared by eval.py and training: top-1/top-5 and mean loss over a whole split,
every image counted once across all processes, with progress shown on rank 0."""
import datetime
import time
from typing import Dict, Iterator

import paddle
import paddle.nn.functional as F

from utils.distributed import all_reduce_sum, get_world_size, is_main_process
from utils.logger import get_logger

from .amp import AmpConfig
from .metrics import accuracy, terminal_progress_bar

# Off a terminal a progress line comes every tenth of the batches, but never sooner than this after the
# previous one, so the few-second eval after each training epoch adds no lines to the log.
LOG_MIN_SECONDS = 10.0
_logger = get_logger(__name__)


def _with_progress(loader) -> Iterator:
    """The batches of `loader`; on rank 0 a tqdm bar when stdout is a terminal, else periodic log lines:
    `eval: 1280/50000 images, 12.3 img/s, eta 0:02:05` (images of all processes, estimated from rank 0's)."""
    num_batches = len(loader)
    total_images = len(loader.dataset)
    bar = terminal_progress_bar(num_batches, 'eval')
    log = bar is None and is_main_process()
    every = max(1, num_batches // 10)
    start = last_time = time.time()
    seen = last_logged = 0
    try:
        for step, batch in enumerate(loader, 1):
            yield batch
            seen += batch[0].shape[0]
            if bar is not None:
                bar.update(1)
            now = time.time()
            if log and step < num_batches and step - last_logged >= every and now - last_time >= LOG_MIN_SECONDS:
                done = min(seen * get_world_size(), total_images)
                eta = datetime.timedelta(seconds=round((now - start) / step * (num_batches - step)))
                _logger.info(f'eval: {done}/{total_images} images, {done / (now - start):.1f} img/s, eta {eta}')
                last_logged, last_time = step, now
    finally:
        if bar is not None:
            bar.close()


@paddle.no_grad()
def evaluate(model: paddle.nn.Layer, loader, amp: AmpConfig = AmpConfig()) -> Dict[str, float]:
    """{'acc1', 'acc5' (percent), 'loss' (mean cross-entropy), 'num_images'} over all ranks.

    `amp` is the precision to run in (training passes its own, so a bf16 run is evaluated in bf16).

    Sums of correct predictions and losses, not per-batch means, are all-reduced, so uneven last
    batches and ranks holding one image fewer weigh exactly as many images as they hold.
    """
    model.eval()
    # correct@1, correct@5, summed loss, images; float64 so 1.28M-image sums stay exact
    totals = paddle.zeros([4], dtype='float64')
    for images, target in _with_progress(loader):  # build_loader yields paddle tensors
        with amp.autocast():
            output = model(images)
        output = output.astype('float32')  # loss and top-k in fp32 whatever the autocast dtype
        batch = output.shape[0]
        acc1, acc5 = accuracy(output, target, topk=(1, 5))
        loss_sum = F.cross_entropy(output, target.reshape([-1]).astype('int64'), reduction='sum')
        batch_stats = paddle.stack([acc1 * (batch / 100.0), acc5 * (batch / 100.0), loss_sum.reshape([]),
                                    paddle.to_tensor(float(batch), dtype='float32')])
        totals += batch_stats.astype('float64')
    all_reduce_sum(totals)
    correct1, correct5, loss_sum, count = totals.numpy().tolist()
    count = int(round(count))
    if count == 0:
        raise ValueError('evaluate: the loader yielded no images')
    # counts come back from float percentages; rounding removes the float32 residue
    return {'acc1': 100.0 * round(correct1) / count, 'acc5': 100.0 * round(correct5) / count,
            'loss': loss_sum / count, 'num_images': count}

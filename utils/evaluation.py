"""The evaluation loop shared by eval.py and training: top-1/top-5 and mean loss over a whole split,
every image counted once across all processes."""
from typing import Dict

import paddle
import paddle.nn.functional as F

from .amp import AmpConfig
from .distributed import all_reduce_sum
from .metrics import accuracy


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
    for images, target in loader:  # build_loader yields paddle tensors
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

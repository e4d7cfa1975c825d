"""accuracy (percent, top-k capped at class count), lazy SmoothedValue, MetricLogger progress lines."""
import logging
import re

import paddle
import pytest

from training.metrics import MetricLogger, SmoothedValue, accuracy


def test_accuracy_percent_topk():
    output = paddle.to_tensor([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0],
                               [0.8, 0.1, 0.05, 0.03, 0.02, 0.0],
                               [0.0, 0.1, 0.2, 0.3, 0.4, 0.5],
                               [0.5, 0.4, 0.3, 0.2, 0.1, 0.0]])
    target = paddle.to_tensor([1, 1, 0, 5])
    top1, top2, top5 = accuracy(output, target, topk=(1, 2, 5))
    assert isinstance(top1, paddle.Tensor)
    assert [float(top1), float(top2), float(top5)] == pytest.approx([25.0, 50.0, 50.0])


def test_accuracy_soft_targets_and_few_classes():
    output = paddle.to_tensor([[2.0, 1.0], [0.0, 3.0]])
    soft = paddle.to_tensor([[0.9, 0.1], [0.7, 0.3]])  # mixup-style targets -> argmax
    top1, top5 = accuracy(output, soft)
    assert float(top1) == pytest.approx(50.0)
    assert float(top5) == pytest.approx(100.0)  # k capped at the 2 classes


def test_smoothed_value_stats_with_lazy_tensors():
    meter = SmoothedValue(window_size=3)
    for value in (1.0, paddle.to_tensor(5.0), paddle.to_tensor([2.0]), 4.0):
        meter.update(value, n=2)
    assert meter.count == 0 and len(meter._pending) == 4  # nothing resolved before a read
    assert meter.value == 4.0
    assert meter.median == 4.0  # window holds 5, 2, 4
    assert meter.avg == pytest.approx(11 / 3)
    assert meter.max == 5.0
    assert meter.global_avg == pytest.approx(3.0)
    assert meter.count == 8
    assert str(meter) == '4.0000 (3.0000)'


def test_smoothed_value_detaches_and_syncs_single_process():
    weight = paddle.to_tensor(2.0, stop_gradient=False)
    meter = SmoothedValue()
    meter.update(weight * 3)
    assert meter._pending[0][0].stop_gradient
    meter.synchronize_between_processes()
    assert meter.global_avg == pytest.approx(6.0)


def test_log_every_lines():
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger('test_metrics_logger')
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    metric_logger = MetricLogger(logger=logger)
    metric_logger.add_meter('lr', SmoothedValue(window_size=1, fmt='{value:.6f}'))
    seen = []
    for batch in metric_logger.log_every(range(5), print_freq=2, header='Epoch: [3]'):
        seen.append(batch)
        metric_logger.update(n=8, loss=paddle.to_tensor(2.0 + batch))
        metric_logger.update(lr=8.6e-5)
    lines = [r.getMessage() for r in records]
    assert seen == list(range(5))
    assert len(lines) == 4  # iterations 0, 2, 4 and the total
    assert re.fullmatch(r'Epoch: \[3\]  \[4/5\]  eta: 0:00:00  lr: 0\.000086  loss: 4\.0000 \(4\.0000\)  '
                        r'time: \d+\.\d{4}  data: \d+\.\d{4}  imgs/s: \d+', lines[2]), lines[2]
    assert lines[0].startswith('Epoch: [3]  [0/5]')
    assert lines[-1].startswith('Epoch: [3] Total time: 0:00:00')
    assert metric_logger.global_avgs() == {'lr': pytest.approx(8.6e-5), 'loss': pytest.approx(4.0)}
    assert metric_logger.loss.count == 40
    assert metric_logger.lr.count == 5  # no n given: weight 1, and imgs/s kept the batch size 8

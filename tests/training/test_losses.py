"""Losses against hand-computed numpy: soft-target cross entropy and label smoothing."""
import numpy as np
import paddle
import pytest

from training.losses import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy


def _log_softmax(x):
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


@pytest.fixture
def logits():
    return np.random.RandomState(0).randn(4, 5).astype(np.float32) * 3


def test_soft_target_cross_entropy(logits):
    target = np.random.RandomState(1).dirichlet(np.ones(5), size=4).astype(np.float32)
    expected = -(target * _log_softmax(logits.astype(np.float64))).sum(axis=1).mean()
    loss = SoftTargetCrossEntropy()(paddle.to_tensor(logits), paddle.to_tensor(target))
    assert loss.shape == [] and float(loss) == pytest.approx(expected, rel=1e-5)


def test_soft_target_with_one_hot_is_plain_cross_entropy(logits):
    labels = np.array([0, 3, 4, 1])
    one_hot = np.eye(5, dtype=np.float32)[labels]
    soft = SoftTargetCrossEntropy()(paddle.to_tensor(logits), paddle.to_tensor(one_hot))
    hard = paddle.nn.functional.cross_entropy(paddle.to_tensor(logits), paddle.to_tensor(labels))
    assert float(soft) == pytest.approx(float(hard), rel=1e-5)


def test_label_smoothing_cross_entropy(logits):
    labels = np.array([0, 3, 4, 1])
    log_p = _log_softmax(logits.astype(np.float64))
    expected = (0.9 * -log_p[np.arange(4), labels] + 0.1 * -log_p.mean(axis=1)).mean()
    loss = LabelSmoothingCrossEntropy(0.1)(paddle.to_tensor(logits), paddle.to_tensor(labels))
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_label_smoothing_equals_soft_target_on_smoothed_one_hot(logits):
    labels = np.array([2, 2, 0, 4])
    smoothed = np.full((4, 5), 0.2 / 5, np.float32)
    smoothed[np.arange(4), labels] += 0.8
    a = LabelSmoothingCrossEntropy(0.2)(paddle.to_tensor(logits), paddle.to_tensor(labels))
    b = SoftTargetCrossEntropy()(paddle.to_tensor(logits), paddle.to_tensor(smoothed))
    assert float(a) == pytest.approx(float(b), rel=1e-5)


def test_losses_backpropagate(logits):
    x = paddle.to_tensor(logits, stop_gradient=False)
    LabelSmoothingCrossEntropy(0.1)(x, paddle.to_tensor(np.array([0, 1, 2, 3]))).backward()
    np.testing.assert_allclose(x.grad.numpy().sum(axis=1), 0.0, atol=1e-6)  # softmax grads sum to zero


def test_smoothing_out_of_range():
    with pytest.raises(ValueError, match=r'label smoothing: expected a value in \[0, 1\), found 1.0'):
        LabelSmoothingCrossEntropy(1.0)

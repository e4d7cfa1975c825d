"""Classification losses for training: soft-target cross entropy (after Mixup/CutMix) and label smoothing."""
import paddle
import paddle.nn as nn
import paddle.nn.functional as F


class SoftTargetCrossEntropy(nn.Layer):
    """Mean over the batch of sum_k -target_k * log_softmax(x)_k; targets are (B, num_classes) rows."""

    def forward(self, x: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
        # log_softmax in float32 so half-precision logits don't lose the tail probabilities.
        log_probs = F.log_softmax(x.astype('float32'), axis=-1)
        return paddle.sum(-target.astype('float32') * log_probs, axis=-1).mean()


class LabelSmoothingCrossEntropy(nn.Layer):
    """Cross entropy against (1 - smoothing) on the label plus smoothing spread uniformly over all classes."""

    def __init__(self, smoothing: float = 0.1):
        super().__init__()
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f'label smoothing: expected a value in [0, 1), found {smoothing}')
        self.smoothing = smoothing

    def forward(self, x: paddle.Tensor, target: paddle.Tensor) -> paddle.Tensor:
        log_probs = F.log_softmax(x.astype('float32'), axis=-1)
        label = target.astype('int64').reshape([-1, 1])
        nll = -paddle.take_along_axis(log_probs, label, axis=-1).squeeze(-1)
        uniform = -log_probs.mean(axis=-1)
        return ((1.0 - self.smoothing) * nll + self.smoothing * uniform).mean()

    def extra_repr(self) -> str:
        return f'smoothing={self.smoothing}'

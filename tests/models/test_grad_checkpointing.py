"""Gradient checkpointing (set_grad_checkpointing, train.py --grad_checkpointing): each block is recomputed in
backward, and loss, gradients, drop path draws and BatchNorm statistics stay those of the plain run."""
import numpy as np
import paddle
import paddle.nn.functional as F
import pytest

from models import create_model
from models.cvt import Block

pytest.importorskip('sklearn', reason='the digits dataset comes from scikit-learn (requirements-dev.txt)')
from tests.test_train import PLAIN, _final_weights, _launch  # noqa: E402
from tools.make_demo_dataset import write_digits_dataset  # noqa: E402


def _step(checkpointing: bool, monkeypatch):
    """One training forward/backward of a cvt_tiny with drop path and dropout on, from fixed seeds."""
    paddle.seed(0)
    model = create_model('cvt_tiny', num_classes=4, drop_path_rates=(0.3, 0.3, 0.5), drop_rate=0.1)
    model.train()
    model.set_grad_checkpointing(checkpointing)
    calls = []
    real = Block.forward
    monkeypatch.setattr(Block, 'forward', lambda self, *a: calls.append(1) or real(self, *a))
    paddle.seed(1)
    x, y = paddle.randn([4, 3, 64, 64]), paddle.to_tensor([0, 1, 2, 3])
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    grads = {name: p.grad.numpy() for name, p in model.named_parameters() if p.grad is not None}
    state = {name: value.numpy() for name, value in model.state_dict().items()}
    return float(loss), grads, state, float(paddle.rand([])), len(calls)


def test_loss_gradients_and_batchnorm_statistics_equal_the_plain_run(monkeypatch):
    plain_loss, plain_grads, plain_state, plain_next, plain_calls = _step(False, monkeypatch)
    loss, grads, state, next_draw, calls = _step(True, monkeypatch)
    assert calls == 2 * plain_calls == 6  # every block ran again in backward
    assert loss == plain_loss
    assert sorted(grads) == sorted(plain_grads) and len(grads) == 92  # every trainable parameter
    for name, grad in plain_grads.items():
        np.testing.assert_array_equal(grads[name], grad, err_msg=name)  # drop path redrew the same masks
    for name, value in plain_state.items():  # BN running statistics moved once, as in the plain run
        np.testing.assert_array_equal(state[name], value, err_msg=name)
    assert next_draw == plain_next  # and the global RNG continues where the plain run's does


def test_inference_is_not_recomputed(monkeypatch):
    paddle.seed(0)
    model = create_model('cvt_tiny', num_classes=4)
    model.eval()
    x = paddle.randn([2, 3, 64, 64])
    plain = model(x).numpy()
    model.set_grad_checkpointing()
    calls = []
    real = Block.forward
    monkeypatch.setattr(Block, 'forward', lambda self, *a: calls.append(1) or real(self, *a))
    with paddle.no_grad():
        np.testing.assert_array_equal(model(x).numpy(), plain)
    assert len(calls) == 3


@pytest.mark.slow
def test_two_ranks_with_accumulation_end_in_the_same_weights(tmp_path):
    data = tmp_path / 'data'
    write_digits_dataset(str(data), image_size=32, per_class=4, num_classes=4, val_fraction=0.25)
    flags = [str(data), '--output', str(tmp_path), *PLAIN, '--drop_path', '0.2', '--drop', '0.1', '--epochs', '2',
             '--batch_size', '2', '--update_freq', '2', '--lr', '1e-3', '--warmup_epochs', '0']
    runs = {name: _launch([*flags, '--experiment', name, *extra], tmp_path / f'{name}-logs')
            for name, extra in (('plain', []), ('checkpointed', ['--grad_checkpointing']))}
    for name, proc in runs.items():
        assert proc.wait(timeout=300) == 0, (tmp_path / f'{name}-logs' / 'workerlog.0').read_text()[-3000:]
    plain, checkpointed = _final_weights(tmp_path / 'plain'), _final_weights(tmp_path / 'checkpointed')
    assert len(plain) == 110
    for name, value in plain.items():
        np.testing.assert_array_equal(checkpointed[name], value, err_msg=name)
    logs = {name: (tmp_path / f'{name}-logs' / 'workerlog.0').read_text() for name in runs}
    assert 'global batch 8' in logs['checkpointed'] and 'identical on all 2 ranks' in logs['checkpointed']
    assert 'gradient checkpointing: every block is recomputed' in logs['checkpointed']
    assert 'gradient checkpointing' not in logs['plain']

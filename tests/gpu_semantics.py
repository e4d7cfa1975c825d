"""GPU semantics on a CPU: what Paddle switches off without CUDA, switched back on for tests.

- `live_grad_scaler()`: our GradScaler running Paddle's real code (check_finite_and_unscale, dynamic
  scale), with only the constructor's CUDA-place check bypassed.
- `make_o2_like(model, optimizer)`: an O2 training state (multi-precision optimizer with fp32 master
  weights; parameters holding bf16-rounded copies of them), as paddle.amp.decorate(level='O2') and
  the GPU kernels keep it. CPU has no bf16/fp16 kernels for matmul or adamw, so the parameters stay
  fp32 tensors holding bf16-representable values, and the fp32 update runs on the masters.
- Faults: an inf gradient (an fp16 overflow) or a NaN loss at a given step on a given rank, an
  update skipped by design (the reference for a skipped one), a process dying at an update.

Run as a script, it is train.py with the faults of the JSON in $CVT_TEST_FAULTS applied, so tests can
start it directly or under `python -m paddle.distributed.launch`:

    CVT_TEST_FAULTS='{"live_scaler": true, "inf_grad_at": [5]}' python tests/gpu_semantics.py DATA ...
"""
import contextlib
import json
import os
import sys
from typing import Dict, Iterable, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
import utils.env  # noqa: E402,F401  (as the scripts: threads, Pillow and a quiet paddle import)

import paddle  # noqa: E402
import paddle.amp.grad_scaler as paddle_grad_scaler  # noqa: E402
from paddle.autograd import PyLayer  # noqa: E402

from training.amp import GradScaler  # noqa: E402

FAULTS_ENV = 'CVT_TEST_FAULTS'


class _GpuPlace:
    def is_gpu_place(self):
        return True

    def is_xpu_place(self):
        return False

    def is_custom_place(self):
        return False


class _GpuTracer:
    _expected_place = _GpuPlace()


@contextlib.contextmanager
def gpu_place_for_scaler():
    """GradScaler constructors in this block believe they run on a GPU (the only CUDA check they make)."""
    real = paddle_grad_scaler._dygraph_tracer
    paddle_grad_scaler._dygraph_tracer = _GpuTracer
    try:
        yield
    finally:
        paddle_grad_scaler._dygraph_tracer = real


def live_grad_scaler(**kwargs) -> GradScaler:
    with gpu_place_for_scaler():
        scaler = GradScaler(**kwargs)
    assert scaler.is_enable(), 'the CUDA-place bypass did not take'
    return scaler


def _bf16_round(tensor: paddle.Tensor) -> paddle.Tensor:
    return tensor.astype('bfloat16').astype('float32')


def make_o2_like(model: paddle.nn.Layer, optimizer: paddle.optimizer.Optimizer) -> None:
    """Give `optimizer` and `model` O2's state: fp32 masters in the optimizer, rounded copies in the model."""
    optimizer._multi_precision = True
    optimizer._is_dtype_fp16_or_bf16 = lambda dtype: True  # every parameter gets a master weight
    params = [p for p in model.parameters() if not p.stop_gradient]
    step = optimizer.step

    @paddle.no_grad()
    def o2_step():
        masters = optimizer._master_weights
        for p in params:  # the CPU kernel updates the parameter, so let it start from the master
            if p.name in masters:
                p.set_value(masters[p.name])
        step()
        for p in params:  # GPU O2: master_out = update(master); param_out = cast(master_out)
            masters[p.name].set_value(p)
            p.set_value(_bf16_round(p))

    optimizer.step = o2_step

    @paddle.no_grad()
    def round_params(layer, inputs):  # weights loaded from an fp32 checkpoint are cast on load under O2
        if layer is not model:  # a deep copy of the model (the EMA) carries this hook along
            return
        for p in params:
            p.set_value(_bf16_round(p))

    model.register_forward_pre_hook(round_params)


class _InfGrad(PyLayer):
    """Identity forward; the backward turns every gradient into inf (an fp16 overflow)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float('inf')


class FaultyCriterion:
    """Wraps a criterion; faults keyed by this process's call count (= micro-step, counted from 0)."""

    def __init__(self, criterion, rank: int, nan_loss_at: Iterable = (), inf_grad_at: Iterable = (),
                 record_grads_at: Optional[int] = None):
        """`nan_loss_at` and `inf_grad_at` hold (step, rank) pairs; `record_grads_at` a step at which the
        gradients left by the previous micro-step are recorded (set `.model` before training)."""
        self.criterion, self.rank = criterion, rank
        self.nan_loss_at = {(int(step), int(rank)) for step, rank in nan_loss_at}
        self.inf_grad_at = {(int(step), int(rank)) for step, rank in inf_grad_at}
        self.record_grads_at, self.model = record_grads_at, None
        self.calls = 0
        self.recorded: Dict[str, float] = {}

    def __call__(self, output, target):
        call, self.calls = self.calls, self.calls + 1
        if call == self.record_grads_at:  # the previous micro-step's backward is done; this one has not run
            self.recorded = {n: float(p.grad.abs().sum()) for n, p in self.model.named_parameters()
                             if p.grad is not None}
        if (call, self.rank) in self.inf_grad_at:
            output = _InfGrad.apply(output)
        loss = self.criterion(output, target)
        if (call, self.rank) in self.nan_loss_at:
            loss = loss * float('nan')
        return loss


def _skip_updates(optimizer, updates: Iterable[int], die_at: Optional[int]):
    """The optimizer leaves out the given updates (counted from 0 in this process), or the process exits
    hard just before update `die_at` (a crash after the previous update's checkpoint)."""
    skipped = {int(u) for u in updates}
    step, calls = optimizer.step, [0]

    def faulty_step():
        call, calls[0] = calls[0], calls[0] + 1
        if call == die_at:
            os._exit(9)
        if call not in skipped:
            step()

    optimizer.step = faulty_step


def run_train_with_faults(argv, faults: dict) -> int:
    import train
    from utils.distributed import get_rank

    rank_of = get_rank
    criteria = []
    if faults.get('live_scaler'):
        build = train.build_grad_scaler

        def build_live(amp, **kwargs):
            with gpu_place_for_scaler():
                return build(amp, **kwargs)
        train.build_grad_scaler = build_live

    build_criterion = train.build_criterion

    def build_faulty_criterion(args, mixup):
        criterion = FaultyCriterion(build_criterion(args, mixup), rank_of(), faults.get('nan_loss_at', ()),
                                    faults.get('inf_grad_at', ()), faults.get('record_grads_at'))
        criteria.append(criterion)
        return criterion
    train.build_criterion = build_faulty_criterion

    build_optimizer = train.build_optimizer

    def build_faulty_optimizer(model, *args, **kwargs):  # train.py builds the criterion first
        optimizer = build_optimizer(model, *args, **kwargs)
        if faults.get('skip_updates') or faults.get('die_at_update') is not None:
            _skip_updates(optimizer, faults.get('skip_updates', ()), faults.get('die_at_update'))
        if faults.get('o2_like'):
            make_o2_like(model, optimizer)
        for criterion in criteria:
            criterion.model = model
        return optimizer
    train.build_optimizer = build_faulty_optimizer
    try:
        return train.main(argv)
    finally:
        out = faults.get('record_to')
        if out and criteria:
            with open(f'{out}.rank{rank_of()}.json', 'w') as f:
                json.dump(criteria[0].recorded, f)


if __name__ == '__main__':
    from cli import run_main
    run_main(lambda argv: run_train_with_faults(argv, json.loads(os.environ.get(FAULTS_ENV, '{}'))))

"""Training paths that only run on a GPU, run on the CPU with GPU semantics (tests/gpu_semantics.py):
a live fp16 loss scaler, inf gradients and NaN losses on one rank, O2 master weights through a
fresh-process resume, gradient sync under accumulation, clipping and evaluation precision."""
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import numpy as np
import paddle
import pytest

from datasets.mixup import Mixup
from models import create_model
from tests.gpu_semantics import FAULTS_ENV, FaultyCriterion, _skip_updates, live_grad_scaler, make_o2_like
from tests.host_traffic import count_host_traffic
from training.amp import AmpConfig, decorate_o2
from training.checkpoint import CheckpointManager, TrainingCheckpoint, load_training_state
from training.ema import ModelEma
from training.engine import TrainState, train_one_epoch
from training.optim import build_optimizer
from training.scheduler import CosineScheduler
from utils.weights import save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / 'tests' / 'gpu_semantics.py')
pytest.importorskip('sklearn', reason='the digits dataset comes from scikit-learn (requirements-dev.txt)')
from tools.make_demo_dataset import write_digits_dataset  # noqa: E402

PLAIN = ['--model', 'cvt_tiny', '--input_size', '32', '--crop_pct', '1', '--aa', 'none', '--reprob', '0',
         '--mixup', '0', '--cutmix', '0', '--smoothing', '0', '--hflip', '0', '--scale', '1', '1',
         '--ratio', '1', '1', '--drop_path', '0', '--num_workers', '0', '--print_freq', '1',
         '--warmup_epochs', '0', '--save_freq', '0', '--epochs', '1', '--lr', '1e-3']


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp('digits')
    write_digits_dataset(str(out), image_size=32, per_class=40)
    return out


class _FixedLoader:
    """`num_batches` fixed batches of noise, shaped like build_loader's output."""

    def __init__(self, num_batches: int):
        rng = np.random.default_rng(0)
        self.batches = [(rng.standard_normal([4, 3, 32, 32]).astype('float32'), rng.integers(0, 3, [4]))
                        for _ in range(num_batches)]
        self.batch_sampler = type('Sampler', (), {'num_batches': num_batches})()

    def __iter__(self):
        return iter([(paddle.to_tensor(x), paddle.to_tensor(y)) for x, y in self.batches])

    def __len__(self):
        return len(self.batches)


class _LrLog(CosineScheduler):
    def set_lr(self, optimizer, epoch, step=0):
        lr = super().set_lr(optimizer, epoch, step)
        self.applied.append(lr)
        return lr


def _train_in_process(*, inf_grad_at=(), skip_updates=()):
    paddle.seed(0)
    model = create_model('cvt_tiny', num_classes=3)
    optimizer = build_optimizer(model, lr=1e-3)
    _skip_updates(optimizer, skip_updates, None)
    scheduler = _LrLog(1e-3, 2, per_step=True, steps_per_epoch=4)
    scheduler.applied = []
    criterion = FaultyCriterion(paddle.nn.CrossEntropyLoss(), 0, inf_grad_at=[(s, 0) for s in inf_grad_at])
    scaler = live_grad_scaler(init_loss_scaling=2.0 ** 16)
    state = TrainState()
    train_one_epoch(model, criterion, _FixedLoader(8), optimizer, scheduler, state, scaler=scaler, update_freq=2,
                    amp=AmpConfig(True, 'float16'))
    return model, state, scaler, scheduler.applied


def test_fp16_overflow_skips_exactly_one_update_with_a_live_scaler():
    # Step 3 ends update 1 (steps 2-3, update_freq 2): its gradients overflow.
    model, state, scaler, lrs = _train_in_process(inf_grad_at=[3])
    reference, ref_state, ref_scaler, ref_lrs = _train_in_process(skip_updates=[1])
    assert (state.step_in_epoch, state.global_step) == (8, 3)  # every micro-batch once; one update fewer
    assert (ref_state.step_in_epoch, ref_state.global_step) == (8, 4)
    assert scaler.loss_scale() == 2.0 ** 15 and ref_scaler.loss_scale() == 2.0 ** 16
    assert lrs == ref_lrs and len(set(lrs)) == 4  # each update kept its own LR
    for name, value in reference.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[name].numpy(), value.numpy(), err_msg=name)


def _launch(tmp_path, name, faults, flags, nproc=2):
    env = {k: v for k, v in os.environ.items() if k != 'CUDA_VISIBLE_DEVICES'}
    env[FAULTS_ENV] = json.dumps(faults)
    logs = tmp_path / f'{name}-launch'
    cmd = [sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', str(nproc), '--log_dir', str(logs),
           SCRIPT, *flags, '--experiment', name]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    worker_logs = [p.read_text() for p in sorted(logs.glob('workerlog.*'))]
    assert proc.returncode == 0, '\n'.join(w[-2500:] for w in worker_logs)
    return worker_logs


@pytest.mark.slow
def test_two_ranks_skip_together_on_a_nan_loss_or_overflow_on_one_rank(digits, tmp_path):
    # 320 images / (8 x 2 ranks) = 20 micro-steps = 10 updates of 2. Rank 1's loss is NaN at step 5
    # (update 2); rank 0's gradients overflow at step 9 (update 4). Ranks must skip both updates together,
    # and end with the weights of a run that leaves out those two updates by design.
    flags = [str(digits), '--output', str(tmp_path), *PLAIN, '--batch_size', '8', '--update_freq', '2', '--amp']
    faulty = _launch(tmp_path, 'faulty', {'live_scaler': True, 'nan_loss_at': [[5, 1]], 'inf_grad_at': [[9, 0]],
                                          'record_grads_at': 1, 'record_to': str(tmp_path / 'grads')}, flags)
    _launch(tmp_path, 'reference', {'live_scaler': True, 'skip_updates': [2, 4]}, flags)
    for log in faulty:
        skipped = [line.split('] ', 1)[1] for line in log.splitlines() if 'update skipped' in line]
        assert len(skipped) == 2 and 'mean loss over ranks is nan at step 5' in skipped[0], skipped
        assert 'gradient overflow' in skipped[1] and 'loss scale now 32768' in skipped[1], skipped
    assert 'identical on all 2 ranks' in faulty[0]
    state = load_training_state(str(tmp_path / 'faulty' / 'checkpoint-latest.pd'))
    reference = load_training_state(str(tmp_path / 'reference' / 'checkpoint-latest.pd'))
    assert (state['global_step'], reference['global_step']) == (8, 10)
    for name, value in reference['model'].items():
        np.testing.assert_array_equal(state['model'][name], value, err_msg=name)
    # After micro-step 0 of an accumulation group no all-reduce may have run: each rank holds its own gradients.
    grads = [json.loads((tmp_path / f'grads.rank{r}.json').read_text()) for r in (0, 1)]
    assert grads[0] and grads[0].keys() == grads[1].keys()
    assert all(grads[0][n] != grads[1][n] for n in grads[0] if 'head' in n)


def _run(tmp_path, name, faults, flags):
    env = {**os.environ, FAULTS_ENV: json.dumps(faults)}
    return subprocess.run([sys.executable, SCRIPT, *flags, '--experiment', name], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_o2_state_saves_resumes_in_a_fresh_process_and_keeps_fp32_masters(digits, tmp_path):
    flags = [str(digits), '--output', str(tmp_path), *PLAIN, '--batch_size', '32', '--amp', '--amp_level', 'O2',
             '--amp_dtype', 'bfloat16', '--save_every_steps', '1', '--model_ema', '--model_ema_decay', '0']
    straight = _run(tmp_path, 'straight', {'o2_like': True}, flags)
    assert straight.returncode == 0, straight.stderr[-3000:]
    died = _run(tmp_path, 'resumed', {'o2_like': True, 'die_at_update': 6}, flags)  # 10 updates an epoch
    assert died.returncode == 9
    resumed = _run(tmp_path, 'resumed', {'o2_like': True}, flags)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'resumed from' in resumed.stdout and 'at epoch 0 step 6' in resumed.stdout, resumed.stdout[-3000:]
    a = load_training_state(str(tmp_path / 'straight' / 'checkpoint-latest.pd'))
    b = load_training_state(str(tmp_path / 'resumed' / 'checkpoint-latest.pd'))
    assert a['global_step'] == b['global_step'] == 10
    masters = {k.split('@')[0]: v for k, v in b['optimizer']['master_weights'].items()}
    assert len(masters) == len([k for k in b['model'] if not k.endswith(('_mean', '_variance'))])
    for name, master in masters.items():
        np.testing.assert_array_equal(b['model'][name], a['model'][name], err_msg=name)
        # checkpoint and EMA hold the fp32 masters, not the bf16 copies the forward pass used
        np.testing.assert_array_equal(b['model'][name], master, err_msg=name)
        # decay 0: ema + 1.0 * (master - ema), exact up to a rounding at the old value's scale
        np.testing.assert_allclose(b['model_ema'][name], master, rtol=0, atol=1e-8, err_msg=name)
    master = masters['head.weight']
    rounded = paddle.to_tensor(master).astype('bfloat16').astype('float32').numpy()
    assert np.abs(rounded - master).max() > 1000 * np.abs(b['model_ema']['head.weight'] - master).max()


def test_o2_global_norm_clip_runs_in_fp32(monkeypatch):
    monkeypatch.setattr(paddle.nn.clip, '_clip_by_global_norm_using_mp_type_flag', False)
    model = paddle.nn.Linear(64, 64)
    optimizer = build_optimizer(model, lr=1e-3, grad_clip=1.0)
    decorate_o2(model, optimizer, 'bfloat16')  # on a CPU only the clip setting takes effect
    grad = paddle.full([64, 64], 100.0).astype('bfloat16')  # norm 6400; in fp16 the squared sum is inf
    param = model.weight
    (clipped_param, clipped), = optimizer._grad_clip([(param, grad)])
    np.testing.assert_allclose(clipped.astype('float32').numpy(), np.full([64, 64], 1 / 64), rtol=1e-2)


def test_evaluation_runs_in_the_training_precision(digits, tmp_path, monkeypatch):
    import train
    seen = []
    auto_cast = paddle.amp.auto_cast

    def spy(enable=True, *args, **kwargs):
        seen.append((enable, kwargs.get('dtype'), kwargs.get('level')))
        return auto_cast(enable, *args, **kwargs)
    monkeypatch.setattr(paddle.amp, 'auto_cast', spy)
    assert train.main([str(digits), '--output', str(tmp_path), '--experiment', 'bf16', *PLAIN, '--batch_size', '32',
                       '--amp', '--amp_dtype', 'bfloat16']) == 0
    assert len(seen) == 10 + 3  # 10 training steps and 3 evaluation batches
    assert set(seen) == {(True, 'bfloat16', 'O1')}


def _amp_run(level: str, out: Path, resume: Optional[str] = None, updates: int = 3, scaler=None) -> str:
    """`updates` AdamW updates of a small model at AMP `level` ('O1' or the O2-like harness), from `resume`
    if given, data seeded by `resume` so runs from the same state see the same batches; returns the
    checkpoint written at the end."""
    paddle.seed(0)
    model = paddle.nn.Sequential(paddle.nn.Linear(6, 8), paddle.nn.BatchNorm1D(8), paddle.nn.LayerNorm(8),
                                 paddle.nn.Linear(8, 3))  # BN statistics: parameters that never train
    optimizer = build_optimizer(model, lr=1e-2)
    if level == 'O2':
        make_o2_like(model, optimizer)
    checkpoint = TrainingCheckpoint(CheckpointManager(str(out)), model=model, optimizer=optimizer, scaler=scaler)
    position = {'epoch': 0, 'step_in_epoch': 0, 'global_step': 0}
    if resume:
        position = checkpoint.load_state_dict(load_training_state(resume), resume)
    rng = np.random.default_rng(position['global_step'])
    for _ in range(updates):
        model(paddle.to_tensor(rng.standard_normal([4, 6]).astype('float32'))).square().mean().backward()
        optimizer.step()
        optimizer.clear_grad()
        position['global_step'] += 1
    return checkpoint.save_latest(position)


def _as_saved_at(ckpt: dict, level: str) -> dict:
    """The checkpoint as a run at `level` keeps the same state: moments by the master's name and masters
    equal to the fp32 weights under O2, by the parameter's name and no masters under O1."""
    optimizer = {k: v for k, v in ckpt['optimizer'].items() if k != 'master_weights'}
    optimizer = {k.replace('@fp32_master_0_', '@'): v for k, v in optimizer.items()}
    if level == 'O2':
        optimizer = {k.replace('@', '@fp32_master_0_'): v for k, v in optimizer.items()}
        optimizer['master_weights'] = {f'{name}@fp32_master_0': ckpt['model'][name] for name in ckpt['model']
                                       if not name.endswith(('_mean', '_variance'))}
    return {**ckpt, 'optimizer': optimizer}


@pytest.mark.parametrize('saved, resumed', [('O1', 'O2'), ('O2', 'O1')])
def test_resume_at_the_other_amp_level_trains_on_as_that_level_would_from_the_state(tmp_path, saved, resumed):
    path = _amp_run(saved, tmp_path / 'saved')
    converted = load_training_state(_amp_run(resumed, tmp_path / 'converted', resume=path))
    # The reference: the same weights, moments and masters written as a run at the new level writes them
    # (its keys are those of a real checkpoint of that level), resumed at that level.
    by_hand = _as_saved_at(load_training_state(path), resumed)
    native = load_training_state(_amp_run(resumed, tmp_path / 'native'))
    assert by_hand['optimizer'].keys() == native['optimizer'].keys()
    assert by_hand['optimizer'].get('master_weights', {}).keys() == native['optimizer'].get('master_weights', {}).keys()
    save_checkpoint(by_hand, str(tmp_path / 'by_hand.pd'))
    reference = load_training_state(_amp_run(resumed, tmp_path / 'reference', resume=str(tmp_path / 'by_hand.pd')))
    assert converted['global_step'] == reference['global_step'] == 6
    for name, value in reference['model'].items():
        np.testing.assert_array_equal(converted['model'][name], value, err_msg=name)
    masters = native['optimizer'].get('master_weights', {}).keys()  # as a run at this level has them
    assert converted['optimizer'].pop('master_weights', {}).keys() == masters
    assert reference['optimizer'].pop('master_weights', {}).keys() == masters
    for name, value in reference['optimizer'].items():
        np.testing.assert_array_equal(converted['optimizer'][name], value, err_msg=name)


def test_resume_with_fp16_loss_scaling_after_bf16_starts_a_fresh_scale(tmp_path, caplog):
    bf16 = _amp_run('O2', tmp_path / 'bf16')  # bf16 has no loss scaler: the checkpoint holds none
    scaler = live_grad_scaler(init_loss_scaling=2.0 ** 10)
    with caplog.at_level('INFO', logger='cvt'):
        fp16 = _amp_run('O2', tmp_path / 'fp16', resume=bf16, scaler=scaler)
    assert scaler.loss_scale() == 2.0 ** 10
    assert 'no loss scale' in caplog.text and '1024' in caplog.text
    _amp_run('O1', tmp_path / 'bf16-again', resume=fp16)  # and back: the fp16 scale is not needed


@pytest.mark.slow
def test_train_resumes_an_o2_run_at_o1_and_says_so(digits, tmp_path):
    flags = [str(digits), '--output', str(tmp_path), *PLAIN, '--batch_size', '32', '--amp', '--amp_dtype', 'bfloat16']
    o2 = _run(tmp_path, 'run', {'o2_like': True}, [*flags, '--amp_level', 'O2'])
    assert o2.returncode == 0, o2.stderr[-3000:]
    o1 = _run(tmp_path, 'run', {}, [*flags, '--amp_level', 'O1', '--epochs', '2'])
    assert o1.returncode == 0, o1.stderr[-3000:]
    assert 'changed since the checkpoint: epochs 1 -> 2, amp_level O2 -> O1' in o1.stdout, o1.stdout[-3000:]
    assert load_training_state(str(tmp_path / 'run' / 'checkpoint-latest.pd'))['global_step'] == 20


class _BatchesOnDevice(_FixedLoader):
    """_FixedLoader with its batches made tensors once, as the loader hands them over already on the device."""

    def __init__(self, num_batches: int):
        super().__init__(num_batches)
        self.on_device = list(super().__iter__())

    def __iter__(self):
        return iter(self.on_device)


def _host_traffic_of_an_epoch(depth: int, updates: int, scaler=None):
    """Host copies and syncs of `updates` updates of an MLP with `depth` hidden layers, EMA and CutMix on
    (and fp16 loss scaling with `scaler`)."""
    paddle.seed(0)
    model = paddle.nn.Sequential(paddle.nn.Flatten(), paddle.nn.Linear(3 * 32 * 32, 16),
                                 *[paddle.nn.Linear(16, 16) for _ in range(depth)], paddle.nn.Linear(16, 3))
    optimizer = build_optimizer(model, lr=1e-3)
    loader, ema = _BatchesOnDevice(updates), ModelEma(model)

    def soft_target_loss(output, target):
        return -(target * paddle.nn.functional.log_softmax(output, -1)).sum(-1).mean()
    with count_host_traffic() as traffic:
        train_one_epoch(model, soft_target_loss, loader, optimizer, CosineScheduler(1e-3, 2), TrainState(),
                        mixup=Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, mode='elem', num_classes=3),
                        model_ema=ema, print_freq=1000, scaler=scaler, amp=AmpConfig(scaler is not None))
    return traffic


@pytest.mark.parametrize('fp16', [False, True])
def test_an_update_copies_and_syncs_a_few_scalars_however_many_parameters(fp16):
    """Per update (one rank): the CutMix draws go to the device, the loss comes back once (`_agree`), and
    with fp16 loss scaling the overflow flag once."""
    small, large = (_host_traffic_of_an_epoch(depth, 4, live_grad_scaler() if fp16 else None) for depth in (1, 20))
    assert (small.copies, small.syncs) == (large.copies, large.syncs)
    assert small.copies == ['to_tensor'] * 4
    assert sorted(small.syncs) == sorted(['__float__'] * 4 + ['__bool__'] * 4 * fp16), small.syncs

"""train.py end to end: learning on real digits, run files, auto-resume after SIGKILL, 2-process data
parallel, AMP code path, non-finite steps, the official LR curve from the shipped config."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import paddle
import pytest

import train
from training.args import build_train_parser
from training.checkpoint import load_training_state
from training.engine import NonFiniteLossError, TrainState, train_one_epoch
from training.scheduler import CosineScheduler, scale_lr
from utils.config import parse_args

ROOT = Path(__file__).resolve().parents[1]
pytest.importorskip('sklearn', reason='the digits dataset comes from scikit-learn (requirements-dev.txt)')
from tools.make_demo_dataset import write_digits_dataset  # noqa: E402

# No random augmentation unless a test asks for it: runs compare weights.
PLAIN = ['--model', 'cvt_tiny', '--input_size', '32', '--crop_pct', '1', '--aa', 'none', '--reprob', '0',
         '--mixup', '0', '--cutmix', '0', '--smoothing', '0', '--hflip', '0', '--scale', '1', '1',
         '--ratio', '1', '1', '--drop_path', '0', '--no_amp', '--num_workers', '0', '--print_freq', '1',
         '--warmup_epochs', '1', '--save_freq', '0']


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp('digits')
    write_digits_dataset(str(out), image_size=32, per_class=40)
    return out


def _train(data, out, *flags):
    return train.main([str(data), '--output', str(out), '--experiment', 'run', *PLAIN, *flags])


def _final_weights(run_dir):
    return load_training_state(str(run_dir / 'checkpoint-latest.pd'))['model']


def _log(run_dir):
    return [json.loads(line) for line in (run_dir / 'log.txt').read_text().splitlines()]


@pytest.mark.slow
def test_learns_digits_and_writes_the_run_files(digits, tmp_path):
    assert _train(digits, tmp_path, '--epochs', '6', '--batch_size', '16', '--lr', '2e-3', '--model_ema',
                  '--model_ema_decay', '0.9', '--save_freq', '3', '--keep_checkpoints', '1') == 0
    run = tmp_path / 'run'
    records = _log(run)
    assert [r['epoch'] for r in records] == list(range(6))
    assert records[-1]['test_acc1'] > 60.0  # chance is 10%
    assert records[-1]['test_num_images'] == 80
    assert records[-1]['best_acc1'] == max(r['test_acc1'] for r in records)
    assert 'test_ema_acc1' in records[-1] and records[0]['train_loss'] > records[-1]['train_loss']
    files = sorted(p.name for p in run.iterdir())
    assert files == ['args.yaml', 'checkpoint-5.pd', 'checkpoint-best-ema.pd', 'checkpoint-best.pd',
                     'checkpoint-latest.pd', 'log.txt', 'train.log']
    assert 'Epoch: [5]' in (run / 'train.log').read_text()
    assert load_training_state(str(run / 'checkpoint-5.pd'))['epoch'] == 6  # after log.txt's epoch 5: resume at 6
    state = load_training_state(str(run / 'checkpoint-latest.pd'))
    assert (state['epoch'], state['step_in_epoch'], state['global_step']) == (6, 0, 6 * 20)
    assert any(k.startswith('stage2.blocks.0.attn.proj_q.weight@') for k in state['optimizer'])
    resolved = parse_args(build_train_parser(), ['--config', str(run / 'args.yaml')])
    assert resolved.lr == 2e-3 and resolved.num_classes == 10 and resolved.model_ema
    # eval.py on the final checkpoint, with no protocol flags, reproduces training's last evaluation
    import eval as eval_script
    out = tmp_path / 'eval.json'
    assert eval_script.main([str(digits), '--model', 'cvt_tiny', '--resume', str(run / 'checkpoint-latest.pd'),
                             '--num_workers', '0', '--output_json', str(out)]) == 0
    result = json.loads(out.read_text())
    assert (result['img_size'], result['crop_pct']) == (32, 1.0)
    assert result['acc1'] == round(records[-1]['test_acc1'], 3) and result['num_images'] == 80
    assert abs(result['loss'] - records[-1]['test_loss']) < 1e-5
    # the settings travel inside the checkpoint: renamed and moved away from args.yaml, it scores the same
    moved = tmp_path / 'elsewhere' / 'final.pd'
    moved.parent.mkdir()
    shutil.copy(run / 'checkpoint-latest.pd', moved)
    assert eval_script.main([str(digits), '--model', 'cvt_tiny', '--resume', str(moved), '--num_workers', '0',
                             '--output_json', str(out)]) == 0
    assert {**json.loads(out.read_text()), 'weights': result['weights']} == result


def _run_script(args, log_path, env=None):
    return subprocess.Popen([sys.executable, *args], cwd=ROOT, stdout=open(log_path, 'w'), stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_sigkill_mid_epoch_then_same_command_resumes_to_identical_weights(digits, tmp_path):
    # Random augmentation, mixup and drop path on: the resumed run must redraw exactly the same.
    flags = [str(digits), '--output', str(tmp_path), *PLAIN, '--aa', 'rand-m9-mstd0.5-inc1', '--reprob', '0.25',
             '--mixup', '0.8', '--cutmix', '1.0', '--smoothing', '0.1', '--drop_path', '0.1', '--hflip', '0.5',
             '--scale', '0.5', '1', '--epochs', '2', '--batch_size', '16', '--lr', '1e-3', '--save_every_steps', '1',
             '--sched_on_updates']
    # All three runs are fresh processes: state an earlier test left in this one (Paddle flags) can't differ.
    straight = _run_script(['train.py', *flags, '--experiment', 'straight'], tmp_path / 'straight.log')
    assert straight.wait(timeout=300) == 0, (tmp_path / 'straight.log').read_text()[-2000:]
    proc = _run_script(['train.py', *flags, '--experiment', 'killed'], tmp_path / 'first.log')
    log = tmp_path / 'killed' / 'train.log'
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and 'Epoch: [1]  [ 5/20]' in log.read_text()):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 'done:' not in log.read_text(), 'the run finished before it could be killed'
    interrupted = load_training_state(str(tmp_path / 'killed' / 'checkpoint-latest.pd'))
    assert interrupted['epoch'] == 1 and interrupted['step_in_epoch'] > 0
    second = _run_script(['train.py', *flags, '--experiment', 'killed'], tmp_path / 'second.log')
    assert second.wait(timeout=300) == 0, (tmp_path / 'second.log').read_text()[-2000:]
    assert 'resumed from' in (tmp_path / 'second.log').read_text()
    straight, resumed = _final_weights(tmp_path / 'straight'), _final_weights(tmp_path / 'killed')
    for name in straight:
        np.testing.assert_array_equal(resumed[name], straight[name], err_msg=name)
    assert [r['epoch'] for r in _log(tmp_path / 'killed')] == [0, 1]  # no duplicated epoch lines


def _identical_images_dataset(root):
    """4 classes x 3 train images that are all the same picture (labels differ): BatchNorm's batch
    statistics are then the same for any split of a batch, so runs that split the global batch
    differently (ranks, accumulation) must agree."""
    write_digits_dataset(str(root), image_size=32, per_class=4, num_classes=4, val_fraction=0.25)
    one = next((root / 'train' / 'digit_0').iterdir()).read_bytes()
    for image in (root / 'train').rglob('*.png'):
        image.write_bytes(one)
    return root


def test_gradient_accumulation_equals_the_large_batch(tmp_path):
    data = _identical_images_dataset(tmp_path / 'same')
    sgd = ['--opt', 'sgd', '--lr', '0.05', '--weight_decay', '0.05', '--epochs', '3']
    assert train.main([str(data), '--output', str(tmp_path), *PLAIN, *sgd, '--batch_size', '8',
                       '--experiment', 'big']) == 0
    assert train.main([str(data), '--output', str(tmp_path), *PLAIN, *sgd, '--batch_size', '4', '--update_freq', '2',
                       '--experiment', 'accumulated']) == 0
    big, accumulated = _final_weights(tmp_path / 'big'), _final_weights(tmp_path / 'accumulated')
    # BatchNorm running statistics advance once per forward pass (twice per update here), as in torch
    for name in (k for k in big if not k.endswith(('._mean', '._variance'))):
        np.testing.assert_allclose(accumulated[name], big[name], atol=1e-5, err_msg=name)
    state = load_training_state(str(tmp_path / 'accumulated' / 'checkpoint-latest.pd'))
    assert state['global_step'] == 3  # one optimizer update per epoch of 2 micro-batches


@pytest.mark.slow
def test_two_process_data_parallel_equals_one_process_with_the_same_global_batch(tmp_path):
    # Identical images: per-rank BatchNorm statistics equal the global ones (no SyncBatchNorm kernel on
    # CPU), so any difference comes from the data-parallel machinery.
    data = _identical_images_dataset(tmp_path / 'same')
    # SGD: its update is linear in the gradient. Adam's first steps move every weight by ~lr * sign(grad), so
    # float rounding of near-zero gradients (summed over ranks vs over one batch) would flip whole steps.
    sgd = ['--opt', 'sgd', '--lr', '0.05', '--weight_decay', '0.05', '--epochs', '3']
    flags = [str(data), '--output', str(tmp_path), *PLAIN, *sgd]
    env = {k: v for k, v in os.environ.items() if k != 'CUDA_VISIBLE_DEVICES'}  # a set (even empty) value means GPU jobs
    proc = subprocess.run([sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', '2',
                           '--log_dir', str(tmp_path / 'launch'), 'train.py', *flags, '--batch_size', '4',
                           '--experiment', 'dp'], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    logs = ''.join(p.read_text() for p in sorted((tmp_path / 'launch').glob('workerlog.*')))
    assert proc.returncode == 0, logs[-3000:]
    assert _train(data, tmp_path, *sgd, '--batch_size', '8') == 0
    dp, single = _final_weights(tmp_path / 'dp'), _final_weights(tmp_path / 'run')
    assert json.loads((tmp_path / 'dp' / 'log.txt').read_text().splitlines()[-1])['test_num_images'] == 4
    for name in single:
        np.testing.assert_allclose(dp[name], single[name], atol=1e-5, err_msg=name)
    assert 'global batch 8' in logs
    assert 'identical on all 2 ranks' in logs  # rank 1 saves nothing; train.py compares its weights


@pytest.mark.parametrize('amp', [['--amp', '--amp_dtype', 'float16'], ['--amp', '--amp_dtype', 'bfloat16',
                                                                        '--amp_level', 'O2']])
def test_amp_code_path_runs_on_cpu(digits, tmp_path, amp, capsys):
    assert _train(digits, tmp_path, '--epochs', '1', '--batch_size', '32', '--lr', '1e-3', *amp) == 0
    assert _log(tmp_path / 'run')[0]['test_num_images'] == 80
    if not paddle.is_compiled_with_cuda():
        assert capsys.readouterr().out.count('has no effect on this CPU build of Paddle') == 1


def test_bad_yaml_key_and_missing_data_fail_clearly(tmp_path):
    cfg = tmp_path / 'c.yaml'
    cfg.write_text('weight_decy: 0.1\n')
    with pytest.raises(ValueError, match=r"unknown key 'weight_decy' \(did you mean 'weight_decay'\?\)"):
        train.main([str(tmp_path), '--config', str(cfg)])
    with pytest.raises(FileNotFoundError, match='does-not-exist: data directory not found'):
        train.main([str(tmp_path / 'does-not-exist'), '--output', str(tmp_path)])


class _Loader:
    """Two batches of noise, shaped like build_loader's output."""

    class batch_sampler:  # noqa: N801
        num_batches = 2

    def __iter__(self):
        return iter([(paddle.randn([2, 3, 32, 32]), paddle.to_tensor([0, 1])) for _ in range(2)])

    def __len__(self):
        return 2


def test_non_finite_losses_skip_steps_then_stop():
    from models import create_model
    from training.optim import build_optimizer
    model = create_model('cvt_tiny', num_classes=2)
    before = {k: v.numpy().copy() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(model, lr=1e-3)
    nan_loss = lambda output, target: output.mean() * float('nan')  # noqa: E731
    state = TrainState()
    with pytest.raises(NonFiniteLossError, match='2 consecutive updates had a non-finite loss'):
        train_one_epoch(model, nan_loss, _Loader(), optimizer, CosineScheduler(1e-3, 10), state, max_bad_steps=2)
    for k, v in model.state_dict().items():
        if not k.endswith(('_mean', '_variance')):  # BN running stats move in the forward pass
            np.testing.assert_array_equal(v.numpy(), before[k], err_msg=k)
    assert state.global_step == 0


def test_official_cvt13_lr_curve_from_the_shipped_config():
    args = parse_args(build_train_parser(), ['--config', str(ROOT / 'configs/train/cvt/cvt_13_224x224.yaml')])
    lr = scale_lr(args.base_lr, args.base_batch_size, args.batch_size * 8)  # 8 GPUs x 256 = 2048
    sched = CosineScheduler(lr, args.epochs, warmup_epochs=args.warmup_epochs, warmup_lr=args.warmup_lr,
                            min_lr=args.min_lr)
    expected = {0: 1e-6, 1: 4.008e-4, 2: 8.006e-4, 3: 1.2004e-3, 4: 1.6002e-3,
                5: 1e-5 + 0.5 * (2e-3 - 1e-5) * (1 + np.cos(np.pi * 5 / 300)),
                150: 1.005e-3, 299: 1e-5 + 0.5 * (2e-3 - 1e-5) * (1 + np.cos(np.pi * 299 / 300))}
    for epoch, value in expected.items():
        assert abs(sched.lr_at(epoch, step=123) - value) < 1e-9, epoch  # constant within the epoch
    assert abs(sched.lr_at(299) - 1.0055e-5) < 1e-9


def test_unreadable_training_image_is_replaced_and_counted(digits, tmp_path):
    data = tmp_path / 'data'
    shutil.copytree(digits, data)
    bad = next((data / 'train' / 'digit_4').iterdir())
    bad.write_bytes(b'\x89PNG\r\n\x1a\n truncated')
    assert _train(data, tmp_path, '--epochs', '1', '--batch_size', '16', '--lr', '1e-3') == 0
    assert _log(tmp_path / 'run')[0]['bad_images_replaced'] == 1
    assert f'{bad}: unreadable image' in (tmp_path / 'run' / 'train.log').read_text()
    # --bad_image_policy error, the image read in a worker process: one line naming it, no worker traceback
    proc = subprocess.run([sys.executable, 'train.py', str(data), '--output', str(tmp_path), '--experiment', 'strict',
                           *PLAIN, '--num_workers', '2', '--bad_image_policy', 'error', '--epochs', '1',
                           '--batch_size', '16'], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f'error: {bad}: unreadable image (') and last.endswith('replace or remove that file')
    assert 'Traceback' not in proc.stderr


def test_wandb_logs_offline_without_an_api_key(digits, tmp_path, monkeypatch):
    pytest.importorskip('wandb', reason='wandb is an optional extra (requirements-dev.txt)')
    monkeypatch.setenv('WANDB_MODE', 'offline')
    monkeypatch.delenv('WANDB_API_KEY', raising=False)
    monkeypatch.setenv('WANDB_SILENT', 'true')
    assert _train(digits, tmp_path, '--epochs', '1', '--batch_size', '32', '--lr', '1e-3', '--log_wandb',
                  '--wandb_project', 'cvt-test') == 0
    runs = list((tmp_path / 'run' / 'wandb').glob('offline-run-*'))
    assert len(runs) == 1 and list(runs[0].glob('*.wandb'))


def _tree_bytes(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_rerun_on_other_data_or_without_auto_resume_refuses_and_leaves_the_run_untouched(digits, tmp_path):
    assert _train(digits, tmp_path, '--epochs', '1', '--batch_size', '32', '--lr', '1e-3') == 0
    run = tmp_path / 'run'
    before = _tree_bytes(run)
    other = tmp_path / 'other'
    shutil.copytree(digits, other)
    with pytest.raises(ValueError, match=rf"holds another run \(data_dir '{digits}' -> '{other}'\); start a new one "
                                         r"with --experiment NAME, or continue that checkpoint anyway with --resume"):
        _train(other, tmp_path, '--epochs', '2', '--batch_size', '32', '--lr', '1e-3')
    with pytest.raises(ValueError, match=r"holds another run \(input_size 32 -> 40\)"):
        _train(digits, tmp_path, '--epochs', '2', '--batch_size', '32', '--lr', '1e-3', '--input_size', '40')
    with pytest.raises(ValueError, match='--no_auto_resume would overwrite it: add --overwrite to start over there'):
        _train(digits, tmp_path, '--epochs', '1', '--batch_size', '32', '--lr', '1e-3', '--no_auto_resume')
    assert _tree_bytes(run) == before
    assert _train(digits, tmp_path, '--epochs', '1', '--batch_size', '32', '--lr', '2e-3', '--no_auto_resume',
                  '--overwrite') == 0
    assert len(_log(run)) == 1 and load_training_state(str(run / 'checkpoint-latest.pd'))['args']['lr'] == 2e-3


def test_extending_epochs_gives_the_schedule_of_the_longer_run(digits, tmp_path, capsys):
    common = ['--batch_size', '32', '--lr', '1e-3', '--min_lr', '1e-5', '--warmup_epochs', '0']
    assert _train(digits, tmp_path / 'a', '--epochs', '2', *common) == 0
    assert _train(digits, tmp_path / 'b', '--epochs', '1', *common) == 0
    capsys.readouterr()
    assert _train(digits, tmp_path / 'b', '--epochs', '2', *common) == 0
    out = capsys.readouterr().out
    assert 'LR schedule from the flags (epochs 2,' in out and 'changed since the checkpoint: epochs 1 -> 2' in out
    straight, extended = _final_weights(tmp_path / 'a' / 'run'), _final_weights(tmp_path / 'b' / 'run')
    for name in straight:
        np.testing.assert_array_equal(extended[name], straight[name], err_msg=name)
    assert [r['train_lr'] for r in _log(tmp_path / 'b' / 'run')] == [r['train_lr'] for r in _log(tmp_path / 'a' / 'run')]


def test_world_size_change_maps_the_mid_epoch_position_by_images_seen():
    args = parse_args(build_train_parser(), ['d', '--batch_size', '16', '--lr', '1e-3', '--update_freq', '2'])
    ckpt = {'args': {'batch_size': 16, 'world_size': 1, 'update_freq': 2, 'lr': 1e-3}}
    position, line = train.resumed_position(ckpt, {'epoch': 3, 'step_in_epoch': 10, 'global_step': 70}, args, 2)
    assert position == {'epoch': 3, 'step_in_epoch': 4, 'global_step': 70}  # 160 images = 5 steps of 32 -> 4 (whole updates)
    assert 'world_size 1 -> 2' in line and 'step 10 x 16 images -> step 4 x 32' in line
    same, line = train.resumed_position(ckpt, {'epoch': 3, 'step_in_epoch': 10, 'global_step': 70}, args, 1)
    assert same['step_in_epoch'] == 10 and 'changed' not in line


def _launch(flags, log_dir, nproc=2):
    env = {k: v for k, v in os.environ.items() if k != 'CUDA_VISIBLE_DEVICES'}  # a set (even empty) value means GPU jobs
    return subprocess.Popen([sys.executable, '-m', 'paddle.distributed.launch', '--nproc_per_node', str(nproc),
                             '--log_dir', str(log_dir), 'train.py', *flags], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _descendants(pid):
    """PIDs of every live process below `pid` (the launcher's ranks and their loader workers)."""
    rows = [line.split() for line in subprocess.run(['ps', '-eo', 'pid=,ppid=,stat='], capture_output=True,
                                                    text=True).stdout.splitlines() if line.strip()]
    children = {}
    for child, parent, stat in rows:
        if 'Z' not in stat:
            children.setdefault(int(parent), []).append(int(child))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _alive(pids):
    alive = []
    for pid in pids:
        try:
            with open(f'/proc/{pid}/stat') as f:
                if f.read().rsplit(')', 1)[1].split()[0] != 'Z':
                    alive.append(pid)
        except FileNotFoundError:
            pass
    return alive


@pytest.mark.slow
def test_sigterm_to_the_launcher_saves_mid_epoch_and_the_same_command_resumes_exactly(digits, tmp_path):
    flags = [str(digits), '--output', str(tmp_path), *PLAIN, '--aa', 'rand-m9-mstd0.5-inc1', '--mixup', '0.8',
             '--drop_path', '0.1', '--epochs', '2', '--batch_size', '8', '--lr', '1e-3', '--num_workers', '2']
    straight = _launch([*flags, '--experiment', 'straight'], tmp_path / 'straight-logs')
    assert straight.wait(timeout=300) == 0
    step = int(np.random.default_rng().integers(3, 17))  # of 20 per epoch
    run = _launch([*flags, '--experiment', 'stopped'], tmp_path / 'logs-1')
    log = tmp_path / 'logs-1' / 'workerlog.0'
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and f'Epoch: [1]  [{step:2d}/20]' in log.read_text()):
        time.sleep(0.05)
    started = _descendants(run.pid)
    assert len(started) >= 2 + 2 * 2  # 2 ranks with 2 loader workers each
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=120) != 0
    text = log.read_text()
    assert 'done:' not in text, 'the run finished before the signal'
    stopped = next(line for line in text.splitlines() if 'stopped by SIGTERM at epoch 1 step' in line)
    assert 'run the same command again to resume (exit status 75)' in stopped
    assert not _alive(started)  # no rank and no loader worker outlives the launcher
    state = load_training_state(str(tmp_path / 'stopped' / 'checkpoint-latest.pd'))
    assert state['epoch'] == 1 and f"step {state['step_in_epoch']} " in stopped and state['step_in_epoch'] >= step
    resumed = _launch([*flags, '--experiment', 'stopped'], tmp_path / 'logs-2')
    assert resumed.wait(timeout=300) == 0, (tmp_path / 'logs-2' / 'workerlog.0').read_text()[-3000:]
    a, b = _final_weights(tmp_path / 'straight'), _final_weights(tmp_path / 'stopped')
    for name in a:
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    assert [r['epoch'] for r in _log(tmp_path / 'stopped')] == [0, 1]


def test_visualdl_logs_scalars_offline(digits, tmp_path):
    pytest.importorskip('visualdl', reason='visualdl is an optional extra (requirements-dev.txt)')
    from visualdl import LogReader
    assert _train(digits, tmp_path, '--epochs', '1', '--batch_size', '32', '--lr', '1e-3', '--log_visualdl') == 0
    logs = list((tmp_path / 'run' / 'visualdl').glob('vdlrecords.*.log'))
    assert len(logs) == 1
    reader = LogReader(file_path=str(logs[0]))
    assert {'train/loss', 'test/acc1'} <= set(reader.get_tags()['scalar'])
    assert reader.get_data('scalar', 'test/acc1')[0].value == _log(tmp_path / 'run')[0]['test_acc1']

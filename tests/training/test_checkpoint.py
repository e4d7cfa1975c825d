"""Training checkpoints: optimizer state by structured name, atomic writes, numbered-file rotation,
fallback to a readable checkpoint, storage errors, the run-directory lock."""
import errno
import logging
import os
import shutil
import socket
import subprocess
import sys

import numpy as np
import paddle
import pytest

from models import create_model
from training.checkpoint import (BEST, LATEST, LOCK, SCHEDULE_KEYS, CheckpointManager, RunLock, TrainingCheckpoint,
                                 differing_settings, load_optimizer_state, load_training_state,
                                 optimizer_state_by_name)
from training.optim import build_optimizer
from utils import weights
from utils.fileio import StorageError
from utils.weights import save_checkpoint


@pytest.fixture
def warnings_log(caplog):
    """Warnings of the project logger, also after a script's setup_logger stopped it propagating."""
    logger = logging.getLogger('cvt')
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.WARNING, logger='cvt')
    yield caplog
    logger.removeHandler(caplog.handler)


def _one_step(model, optimizer):
    loss = model(paddle.randn([2, 3, 32, 32])).mean()
    loss.backward()
    optimizer.step()
    optimizer.clear_grad()


def test_optimizer_state_moves_to_a_model_with_other_tensor_names(tmp_path):
    paddle.seed(0)
    model = create_model('cvt_tiny', num_classes=3)
    optimizer = build_optimizer(model, lr=1e-3)
    _one_step(model, optimizer)
    state = optimizer_state_by_name(optimizer, model)
    assert 'stage2.blocks.0.attn.proj_q.weight@moment1_0' in state
    assert not any(k.startswith('linear_') for k in state)
    save_checkpoint({'model': model.state_dict(), 'optimizer': state, 'epoch': 1}, str(tmp_path / 'c.pd'))

    create_model('cvt_tiny')  # shifts Paddle's auto-generated names for the next model
    fresh = create_model('cvt_tiny', num_classes=3)
    assert fresh.head.weight.name != model.head.weight.name
    fresh_opt = build_optimizer(fresh, lr=1e-3)
    ckpt = load_training_state(str(tmp_path / 'c.pd'))
    fresh.set_state_dict({k: paddle.to_tensor(v) for k, v in ckpt['model'].items()})
    load_optimizer_state(fresh_opt, fresh, ckpt['optimizer'])
    paddle.seed(1)
    _one_step(model, optimizer)
    paddle.seed(1)
    _one_step(fresh, fresh_opt)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-7, err_msg=name)


def test_resume_restores_from_the_checkpoint_as_read_without_reading_it_again(tmp_path, monkeypatch):
    paddle.seed(0)
    model = create_model('cvt_tiny', num_classes=3)
    optimizer = build_optimizer(model, lr=1e-3)
    _one_step(model, optimizer)
    position = {'epoch': 1, 'step_in_epoch': 4, 'global_step': 9}
    path = TrainingCheckpoint(CheckpointManager(str(tmp_path)), model=model, optimizer=optimizer).save_latest(position)
    ckpt = load_training_state(path)
    monkeypatch.setattr(weights, 'load_checkpoint', lambda p: pytest.fail(f'{p} read a second time'))
    fresh = create_model('cvt_tiny', num_classes=3)
    restored = TrainingCheckpoint(CheckpointManager(str(tmp_path)), model=fresh,
                                  optimizer=build_optimizer(fresh, lr=1e-3))
    assert restored.load_state_dict(ckpt, path) == position
    assert ckpt['optimizer'] == {}  # each array released as its tensor was made: the state is held once
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(fresh.state_dict()[name].numpy(), value.numpy(), err_msg=name)


def test_unknown_parameter_in_optimizer_state_is_named():
    model = create_model('cvt_tiny')
    with pytest.raises(KeyError, match="'stage9.weight'"):
        load_optimizer_state(build_optimizer(model), model, {'stage9.weight@moment1_0': np.zeros(1)})


def test_save_is_atomic_and_keeps_permissions(tmp_path, monkeypatch):
    path = tmp_path / 'checkpoint-latest.pd'
    save_checkpoint({'model': {'w': np.ones(2)}, 'epoch': 1}, str(path))
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    def crash(obj, file):
        with open(file, 'wb') as f:
            f.write(b'half')
        raise OSError('disk full')
    monkeypatch.setattr(paddle, 'save', crash)
    with pytest.raises(OSError, match='disk full'):
        save_checkpoint({'model': {'w': np.zeros(2)}, 'epoch': 2}, str(path))
    assert load_training_state(str(path))['epoch'] == 1  # the previous file is intact
    assert sorted(os.listdir(tmp_path)) == ['checkpoint-latest.pd']  # no temp file left


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_weights_only_file_is_not_a_training_checkpoint(tmp_path):
    path = tmp_path / 'w.pdparams'
    save_checkpoint({'w': np.ones(2)}, str(path))
    with pytest.raises(ValueError, match='not a training checkpoint.*--finetune'):
        load_training_state(str(path))


def test_numbered_checkpoints_rotate(tmp_path):
    manager = CheckpointManager(str(tmp_path), keep=2)
    for epoch in (10, 20, 30):
        manager.save_latest({'model': {}, 'epoch': epoch})
        manager.save_numbered(epoch)
    manager.copy_latest('checkpoint-best.pd')
    assert sorted(os.listdir(tmp_path)) == ['checkpoint-20.pd', 'checkpoint-30.pd', 'checkpoint-best.pd',
                                            'checkpoint-latest.pd']
    assert load_training_state(manager.path('checkpoint-best.pd'))['epoch'] == 30
    manager.save_latest({'model': {}, 'epoch': 31})
    assert load_training_state(manager.path('checkpoint-30.pd'))['epoch'] == 30  # a copy, not the same file


def test_unreadable_latest_falls_back_to_the_newest_numbered(tmp_path, warnings_log):
    manager = CheckpointManager(str(tmp_path), keep=0)
    for epoch in (1, 2):
        manager.save_latest({'model': {}, 'epoch': epoch})
        manager.save_numbered(epoch)
    manager.save_latest({'model': {}, 'epoch': 3})
    latest = manager.path(LATEST)
    with open(latest, 'r+b') as f:
        f.truncate(os.path.getsize(latest) // 2)  # a torn write, as a copy or a power loss leaves it
    path, state = manager.load_latest()
    assert (os.path.basename(path), state['epoch']) == ('checkpoint-2.pd', 2)
    assert f'{latest}: truncated or corrupt' in warnings_log.text
    assert f'resuming from {manager.path("checkpoint-2.pd")} instead' in warnings_log.text


def test_no_readable_checkpoint_names_them_all(tmp_path):
    manager = CheckpointManager(str(tmp_path))
    assert manager.load_latest() is None  # a fresh run directory
    (tmp_path / LATEST).write_bytes(b'junk')
    (tmp_path / 'checkpoint-4.pd').write_bytes(b'')
    with pytest.raises(ValueError, match=f'{LATEST}: .*checkpoint-4.pd: .*--resume PATH'):
        manager.load_latest()


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    manager = CheckpointManager(str(tmp_path))
    manager.save_latest({'model': {'w': np.ones(2)}, 'epoch': 1})

    def full_disk(obj, file):
        with open(file, 'wb') as f:
            f.write(b'half')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(paddle, 'save', full_disk)
    with pytest.raises(StorageError, match=f'{manager.path(LATEST)}: cannot write \\(no space left'):
        manager.save_latest({'model': {'w': np.zeros(2)}, 'epoch': 2})
    assert load_training_state(manager.path(LATEST))['epoch'] == 1
    assert os.listdir(tmp_path) == [LATEST]


def test_full_disk_while_copying_best_leaves_no_temp_file(tmp_path, monkeypatch):
    manager = CheckpointManager(str(tmp_path))
    manager.save_latest({'model': {}, 'epoch': 1})

    def no_link(src, dst):
        raise OSError(errno.EXDEV, 'cross-device link')  # forces the copy, as on file systems without links

    def full_disk(src, dst):
        with open(dst, 'wb') as f:
            f.write(b'half')
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(os, 'link', no_link)
    monkeypatch.setattr(shutil, 'copyfile', full_disk)
    with pytest.raises(StorageError, match='checkpoint-best.pd: cannot write'):
        manager.copy_latest(BEST)
    assert os.listdir(tmp_path) == [LATEST]


def test_a_live_run_holds_the_directory(tmp_path):
    with RunLock(str(tmp_path)):
        holder = (tmp_path / LOCK).read_text().split()
        assert holder[:2] == [str(os.getpid()), socket.gethostname()]
        other = RunLock(str(tmp_path))
        other._owner = 'another process'  # the same host and a live PID (this one), seen by a second run
        with pytest.raises(ValueError, match=f'{tmp_path / LOCK}: another run \\(PID {os.getpid()} on this host\\)'):
            other.acquire()
    assert not (tmp_path / LOCK).exists()  # released on exit


def test_a_lock_is_released_where_the_start_time_cannot_be_read(tmp_path, monkeypatch):
    # No /proc of its own (a PID namespace without --mount-proc, or not Linux): the start time is ''.
    monkeypatch.setattr('training.checkpoint._start_time', lambda pid: '')
    with RunLock(str(tmp_path)):
        assert (tmp_path / LOCK).exists()
    assert not (tmp_path / LOCK).exists()


def test_a_lock_of_a_finished_process_is_taken_over(tmp_path, warnings_log):
    finished = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True, text=True)
    dead_pid = int(finished.stdout)
    (tmp_path / LOCK).write_text(f'{dead_pid} {socket.gethostname()} 12345\n')
    with RunLock(str(tmp_path)):
        assert (tmp_path / LOCK).read_text().split()[0] == str(os.getpid())
    assert f'taking over the lock of PID {dead_pid}' in warnings_log.text


def test_a_reused_pid_does_not_hold_the_lock(tmp_path):
    (tmp_path / LOCK).write_text(f'{os.getpid()} {socket.gethostname()} 1\n')  # this PID, another start time
    with RunLock(str(tmp_path)):
        assert (tmp_path / LOCK).read_text().split()[2] != '1'


def test_a_lock_from_another_host_refuses(tmp_path):
    (tmp_path / LOCK).write_text('4242 node17 999\n')
    with pytest.raises(ValueError, match='PID 4242 on host node17.*delete the lock'):
        RunLock(str(tmp_path)).acquire()
    assert (tmp_path / LOCK).read_text() == '4242 node17 999\n'


def test_a_read_only_run_directory_fails_in_one_line(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    monkeypatch.setattr(os, 'open', read_only)
    with pytest.raises(StorageError, match=f'{tmp_path / LOCK}: cannot write \\(read-only file system\\)'):
        RunLock(str(tmp_path)).acquire()


def test_changed_amp_settings_are_reported_on_resume():
    saved = {'amp': True, 'amp_dtype': 'bfloat16', 'amp_level': 'O2', 'epochs': 3}
    now = {'amp': True, 'amp_dtype': 'float16', 'amp_level': 'O1', 'epochs': 3}
    assert differing_settings(saved, now, SCHEDULE_KEYS) == {'amp_dtype': ('bfloat16', 'float16'),
                                                             'amp_level': ('O2', 'O1')}

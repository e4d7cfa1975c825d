"""Training checkpoints: atomic writes, latest/best/numbered files, and optimizer state by parameter name.

A checkpoint is one `paddle.save` pickle of numpy arrays and plain values, written and read back by
utils/weights.py (its restricted unpickler runs no code). Paddle keys optimizer state by auto-generated
tensor names (`linear_3.w_0_moment1_0`) that change with construction order; here it is stored by
structured parameter name (`stage2.blocks.0.attn.proj_q.weight@moment1_0`), so a checkpoint resumes
into any freshly built model of the same architecture.
"""
import glob
import os
import re
import shutil
import socket
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import paddle

from utils.distributed import unwrap_model
from utils.fileio import atomic_write, storage_errors
from utils.logger import get_logger
from utils.weights import apply_state_dict, read_weight_file, save_checkpoint, state_dict_from, to_numpy

_logger = get_logger(__name__)

LATEST = 'checkpoint-latest.pd'
BEST = 'checkpoint-best.pd'
BEST_EMA = 'checkpoint-best-ema.pd'
LOCK = 'train.lock'
_SEP = '@'
_MASTER = 'fp32_master_0'  # the suffix Paddle gives a parameter's first master weight


def _tensor_names(model) -> Dict[str, str]:
    """Paddle tensor name -> structured name, for parameters and buffers."""
    model = unwrap_model(model)
    return {p.name: n for n, p in model.named_parameters()}


def optimizer_state_by_name(optimizer: paddle.optimizer.Optimizer, model) -> Dict[str, Any]:
    """The optimizer's state dict with every tensor-name key rewritten to `structured@accumulator`.

    O2 master weights are keyed `structured@fp32_master_0`: their own name (which the moments of an O2
    run are keyed by) is rebuilt from it on restore.
    """
    names = _tensor_names(model)
    # Longest first, so 'linear_1.w_0' never claims 'linear_11.w_0_moment1_0'.
    prefixes = sorted(names, key=len, reverse=True)
    out: Dict[str, Any] = {}
    for key, value in optimizer.state_dict().items():
        if key == 'master_weights':
            out[key] = {f'{names[k]}{_SEP}{v.name[len(k) + 1:]}': v for k, v in value.items()}
            continue
        owner = next((p for p in prefixes if key.startswith(p + '_')), None)
        out[f'{names[owner]}{_SEP}{key[len(owner) + 1:]}' if owner else key] = value
    return to_numpy(out)


def _wants_master(optimizer: paddle.optimizer.Optimizer, param) -> bool:
    """Whether `optimizer` keeps an fp32 master weight for `param` (AMP O2): Paddle's own rule, for the
    parameters it updates (not BatchNorm statistics, which Paddle also calls parameters)."""
    low_precision = getattr(optimizer, '_is_dtype_fp16_or_bf16',  # the same rule where a version lacks it
                            lambda dtype: dtype in (paddle.float16, paddle.bfloat16))
    return (bool(getattr(optimizer, '_multi_precision', False)) and not param.stop_gradient
            and low_precision(param.dtype))


def convert_master_layout(state: Dict[str, Any], with_master, weights: Optional[Dict[str, Any]]) -> Dict[str, Any]:
    """`state` (by structured name) rewritten so that exactly the parameters named in `with_master` have
    fp32 master weights, the layout of the AMP level resuming it (O2: low-precision parameters have masters,
    O1 and fp32: none).

    Exact both ways, as the values do not change: a new master is the checkpoint's fp32 weight (which
    under O2 is the master itself, see `training.amp.fp32_state_dict`), a dropped master leaves that same
    weight on the parameter, and every moment moves to the key Paddle looks it up by (the master's name
    under O2, the parameter's otherwise). Parameters whose layout already fits are left as they are.
    """
    masters = dict(state.get('master_weights', {}))
    stored_suffix = dict(key.split(_SEP, 1) if _SEP in key else (key, _MASTER) for key in masters)
    out: Dict[str, Any] = {}
    for key, value in state.items():
        if key == 'master_weights' or _SEP not in key:
            out[key] = value
            continue
        name, accumulator = key.split(_SEP, 1)
        suffix = stored_suffix.get(name)
        if suffix is not None and name not in with_master:
            accumulator = accumulator[len(suffix) + 1:] if accumulator.startswith(suffix + '_') else accumulator
        elif suffix is None and name in with_master:
            accumulator = f'{_MASTER}_{accumulator}'
        out[f'{name}{_SEP}{accumulator}'] = value
    kept = {key: value for key, value in masters.items() if key.split(_SEP, 1)[0] in with_master}
    added = sorted(set(with_master) - set(stored_suffix))
    if added and weights is None:
        raise ValueError(f"optimizer state has no fp32 master weight for '{added[0]}' and no weights to make one")
    kept.update({f'{name}{_SEP}{_MASTER}': weights[name] for name in added})
    if kept or 'master_weights' in state:
        out['master_weights'] = kept
    return out


def load_optimizer_state(optimizer: paddle.optimizer.Optimizer, model, state: Dict[str, Any],
                         weights: Optional[Dict[str, Any]] = None) -> None:
    """Inverse of `optimizer_state_by_name` for this model's current tensor names.

    A state saved under another AMP level is converted to this optimizer's master-weight layout first
    (`convert_master_layout`); `weights` (the checkpoint's fp32 model weights) give masters a state lacks.
    Empties `state` as it goes: each array is released once its tensor exists, so a resume holds the
    optimizer state once, not twice (for CvT-W24 that is gigabytes).
    """
    by_structured = {n: t for t, n in _tensor_names(model).items()}
    converted = convert_master_layout(state, {n for n, p in unwrap_model(model).named_parameters()
                                              if _wants_master(optimizer, p)}, weights)
    state.clear()  # its arrays are referenced by `converted` only now, which the loop below empties

    def tensor_name(structured: str) -> str:
        if structured not in by_structured:
            raise KeyError(f"optimizer state names parameter '{structured}', which this model does not have")
        return by_structured[structured]

    restored: Dict[str, Any] = {}
    for key in list(converted):
        value = converted.pop(key)
        if key == 'master_weights':
            restored[key] = {}
            for stored, array in value.items():
                structured, suffix = stored.split(_SEP, 1) if _SEP in stored else (stored, _MASTER)
                master = paddle.to_tensor(array, dtype='float32')
                # The optimizer finds an O2 run's moments by the master weight's own name.
                master.name = f'{tensor_name(structured)}_{suffix}'
                restored[key][tensor_name(structured)] = master
            continue
        if _SEP in key:
            name, accumulator = key.split(_SEP, 1)
            key = f'{tensor_name(name)}_{accumulator}'
        restored[key] = paddle.to_tensor(value) if isinstance(value, np.ndarray) else value
    optimizer.set_state_dict(restored)


def load_training_state(path: str) -> Dict[str, Any]:
    """Read a training checkpoint written by `save_checkpoint` (restricted unpickler, no code runs)."""
    state = read_weight_file(path)
    if not isinstance(state, dict) or 'model' not in state or 'epoch' not in state:
        raise ValueError(f'{path}: not a training checkpoint of this repo (expected model, optimizer and epoch '
                         f'entries); to start from weights only use --finetune or --pretrained')
    return state


def _link_or_copy(src: str, dst: str) -> None:
    """Make `dst` a copy of `src` atomically (hard link when the filesystem allows, else a copy)."""
    with atomic_write(dst) as tmp:
        os.remove(tmp)  # os.link needs a free name; the random one atomic_write chose stays ours
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


class CheckpointManager:
    """The files of one run directory: `checkpoint-latest.pd`, `checkpoint-best.pd`,
    `checkpoint-best-ema.pd` and numbered `checkpoint-<epoch>.pd`, keeping the newest `keep`."""

    def __init__(self, output_dir: str, keep: int = 3):
        self.output_dir = output_dir
        self.keep = keep

    def path(self, name: str) -> str:
        return os.path.join(self.output_dir, name)

    def latest(self) -> Optional[str]:
        path = self.path(LATEST)
        return path if os.path.isfile(path) else None

    def load_latest(self) -> Optional[Tuple[str, Dict[str, Any]]]:
        """(path, state) of the newest readable checkpoint: `checkpoint-latest.pd`, else the numbered ones
        newest first (with a warning naming both); None in a directory without checkpoints."""
        candidates = [p for p in [self.path(LATEST)] + self.numbered()[::-1] if os.path.isfile(p)]
        failures = []
        for path in candidates:
            try:
                state = load_training_state(path)
            except (ValueError, OSError) as e:
                failures.append(str(e))
                continue
            if failures:
                _logger.warning('%s; resuming from %s instead', '; '.join(failures), path)
            return path, state
        if failures:
            raise ValueError(f'no readable checkpoint in {self.output_dir}: {"; ".join(failures)}; '
                             f'pick one with --resume PATH or start a new run with --experiment NAME')
        return None

    def save_latest(self, state: Dict[str, Any]) -> str:
        save_checkpoint(state, self.path(LATEST))
        return self.path(LATEST)

    def copy_latest(self, name: str) -> str:
        """Store the latest checkpoint also as `name` (best, best-ema)."""
        _link_or_copy(self.path(LATEST), self.path(name))
        return self.path(name)

    def remove_run_files(self) -> None:
        """Delete an earlier run's checkpoints and epoch log (--overwrite)."""
        for path in glob.glob(self.path('checkpoint-*.pd')) + [self.path('log.txt')]:
            if os.path.isfile(path):
                os.remove(path)
                _logger.warning('--overwrite: removed %s of the earlier run', path)

    def save_numbered(self, epoch: int) -> str:
        """`checkpoint-<epoch>.pd` from the latest, then drop the oldest beyond `keep` (0 keeps all)."""
        path = self.copy_latest(f'checkpoint-{epoch}.pd')
        numbered = self.numbered()
        if self.keep > 0:
            for old in numbered[:-self.keep]:
                os.remove(old)
                _logger.info('removed old checkpoint %s', old)
        return path

    def numbered(self) -> List[str]:
        """The `checkpoint-<epoch>.pd` files, oldest epoch first."""
        return sorted((p for p in glob.glob(self.path('checkpoint-*.pd')) if _epoch_of(p) >= 0), key=_epoch_of)


class RunLock:
    """`train.lock` in a run directory, holding the PID and host of the run writing there.

    A second run on the same directory refuses with one line while the first lives; a lock left by a
    dead process on this host (SIGKILL, power loss) is taken over with a warning. A lock from another
    host cannot be checked and refuses too. Use as `with RunLock(run_dir):` on rank 0.
    """

    def __init__(self, run_dir: str):
        self.path = os.path.join(run_dir, LOCK)
        # Stripped as `_holder` reads it back: without /proc the start time is '' (no trailing space to mismatch).
        self._owner = f'{os.getpid()} {socket.gethostname()} {_start_time(os.getpid())}'.strip()

    def acquire(self) -> 'RunLock':
        with storage_errors(self.path):  # the first write of a run: a read-only --output fails here, in one line
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                self._take_over_if_stale()
                return self
            with os.fdopen(fd, 'w') as f:
                f.write(self._owner + '\n')
        return self

    def release(self) -> None:
        if self._holder() == self._owner:  # never remove a lock another run has taken over
            os.remove(self.path)

    def __enter__(self) -> 'RunLock':
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def _holder(self) -> str:
        try:
            with open(self.path, encoding='utf-8') as f:
                return f.read().strip()
        except FileNotFoundError:
            return ''

    def _take_over_if_stale(self) -> None:
        holder = self._holder()
        pid, host, started = (holder.split() + ['', '', ''])[:3]
        if holder == self._owner:
            return
        if host != socket.gethostname() or not pid.isdigit():
            raise ValueError(f'{self.path}: another run (PID {pid or "?"} on host {host or "?"}) writes to this '
                             f'directory; use --experiment NAME for a new run, or delete the lock if that run is gone')
        if _alive(int(pid)) and _start_time(int(pid)) == started:  # a start time that differs: a reused PID
            raise ValueError(f'{self.path}: another run (PID {pid} on this host) is writing to this directory; '
                             f'wait for it or use --experiment NAME for a new run')
        with atomic_write(self.path) as tmp, open(tmp, 'w', encoding='utf-8') as f:
            f.write(self._owner + '\n')
        if self._holder() != self._owner:  # another run took it over in the same instant
            raise ValueError(f'{self.path}: another run took over this directory just now; use --experiment NAME')
        _logger.warning('%s: taking over the lock of PID %s on this host, which is no longer running', self.path, pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    return True


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot ('' if gone or not Linux): a reused PID differs."""
    try:
        with open(f'/proc/{pid}/stat', encoding='utf-8') as f:
            return f.read().rsplit(')', 1)[1].split()[19]
    except (OSError, IndexError):
        return ''


def _epoch_of(path: str) -> int:
    match = re.fullmatch(r'checkpoint-(\d+)\.pd', os.path.basename(path))
    return int(match.group(1)) if match else -1


# The settings that make a checkpoint another run's: auto-resume continues only a run that matches them.
IDENTITY_KEYS = ('data_dir', 'cls_label_path_train', 'cls_label_path_val', 'model', 'num_classes', 'input_size')
# The settings a resumed run takes from its flags, reported when they changed since the checkpoint. The
# AMP settings are among them: `load_optimizer_state` converts the optimizer state exactly to the new level.
# A changed freeze_stages trains other parameters than the saved optimizer state covers: refused by
# `TrainingCheckpoint.load_state_dict` unless that state is empty.
SCHEDULE_KEYS = ('epochs', 'lr', 'warmup_epochs', 'warmup_lr', 'min_lr', 'sched_on_updates', 'batch_size',
                 'update_freq', 'world_size', 'amp', 'amp_dtype', 'amp_level', 'layer_decay', 'freeze_stages',
                 'bn_eval')


class TrainingCheckpoint:
    """The whole training state of one run, saved and restored side by side.

    `state_dict(position)` and `load_state_dict(ckpt)` mirror each other: model (the fp32 master
    weights under O2), optimizer state by parameter name, loss scaler, EMA, position in the run
    (epoch, step_in_epoch, global_step), best metrics, the run's settings (`args`, which eval,
    predict and export read back), its identity (IDENTITY_KEYS, which auto-resume compares) and the
    training data's class names by label id (`class_names`, None when the data has none).
    `end_epoch` writes latest, best, best-EMA and numbered files.
    """

    def __init__(self, manager: CheckpointManager, *, model, optimizer, scaler=None, model_ema=None,
                 args: Optional[Dict[str, Any]] = None, identity: Optional[Dict[str, Any]] = None,
                 class_names: Optional[List[str]] = None):
        self.manager = manager
        self.class_names = list(class_names) if class_names is not None else None
        self.model, self.optimizer, self.scaler, self.model_ema = model, optimizer, scaler, model_ema
        self.args, self.identity = dict(args or {}), dict(identity or {})
        self.best = {'acc1': 0.0, 'ema_acc1': 0.0}

    def state_dict(self, position: Dict[str, int]) -> Dict[str, Any]:
        from .amp import fp32_state_dict
        model = unwrap_model(self.model)
        return {'model': fp32_state_dict(model, self.optimizer),
                'optimizer': optimizer_state_by_name(self.optimizer, model),
                'scaler': self.scaler.state_dict() if self.scaler is not None else {},
                'model_ema': self.model_ema.state_dict() if self.model_ema is not None else None,
                **position, 'best': dict(self.best), 'args': self.args, 'identity': self.identity,
                'class_names': self.class_names}

    def load_state_dict(self, ckpt: Dict[str, Any], path: str) -> Dict[str, int]:
        """Restore everything `state_dict` saved; returns the position."""
        model = unwrap_model(self.model)
        _check_optimizer_coverage(ckpt, model, path, self.args.get('freeze_stages'))
        apply_state_dict(model, state_dict_from(ckpt, path, key='model'), path=path)  # checks every name and shape
        load_optimizer_state(self.optimizer, model, ckpt['optimizer'], weights=ckpt['model'])
        if self.scaler is not None and ckpt.get('scaler'):
            self.scaler.load_state_dict(ckpt['scaler'])
        elif self.scaler is not None:  # saved without fp16 loss scaling (bf16, fp32): as a new fp16 run starts
            _logger.info('%s has no loss scale (trained without fp16 loss scaling); the scale starts at %g',
                         path, self.scaler.loss_scale())
        if self.model_ema is not None and ckpt.get('model_ema') is not None:
            self.model_ema.set_state_dict({k: paddle.to_tensor(v) for k, v in ckpt['model_ema'].items()})
        self.best.update(ckpt.get('best', {}))
        return {key: int(ckpt[key]) for key in ('epoch', 'step_in_epoch', 'global_step')}

    def save_latest(self, position: Dict[str, int]) -> str:
        return self.manager.save_latest(self.state_dict(position))

    def end_epoch(self, position: Dict[str, int], record: Dict[str, Any], save_numbered: bool) -> None:
        """Update the best metrics from `record` (test_acc1, test_ema_acc1), then write the epoch's files."""
        new_best = 'test_acc1' in record and record['test_acc1'] >= self.best['acc1']
        new_best_ema = 'test_ema_acc1' in record and record['test_ema_acc1'] >= self.best['ema_acc1']
        if new_best:
            self.best['acc1'] = record['test_acc1']
        if new_best_ema:
            self.best['ema_acc1'] = record['test_ema_acc1']
        self.save_latest(position)
        if new_best:
            self.manager.copy_latest(BEST)
        if new_best_ema:
            self.manager.copy_latest(BEST_EMA)
        if save_numbered:  # named by the finished epoch, as log.txt numbers it (the position is the next one)
            self.manager.save_numbered(record['epoch'])


def _check_optimizer_coverage(ckpt: Dict[str, Any], model, path: str, freeze_stages) -> None:
    """Refuse optimizer state saved for another set of trained parameters than this run's.

    Paddle would keep the state of a parameter it does not train, and fail at the first update on one it
    trains without state. An empty state (saved before the first update) fits any run.
    """
    saved = {key.split(_SEP, 1)[0] for key in ckpt.get('optimizer', {}) if _SEP in key}
    trained = {name for name, param in model.named_parameters() if not param.stop_gradient}
    if not saved or saved == trained:
        return

    def count(names):
        return f"{len(names)} ('{names[0]}', ...)" if names else '0'
    was = ckpt.get('args', {}).get('freeze_stages', 0)
    cause = (f'it was saved with --freeze_stages {was}, this run has {freeze_stages}: resume with --freeze_stages '
             f'{was}, or ' if was != freeze_stages else '')
    raise ValueError(f'{path}: its optimizer state covers other parameters than this run trains '
                     f'({count(sorted(saved - trained))} only in the checkpoint, {count(sorted(trained - saved))} only '
                     f'in this run); {cause}start a new run from its weights with --finetune {path} --experiment NAME')


def differing_settings(saved: Dict[str, Any], current: Dict[str, Any], keys) -> Dict[str, tuple]:
    """{key: (saved, current)} for the `keys` whose values differ; keys a checkpoint lacks are skipped."""
    return {k: (saved[k], current.get(k)) for k in keys if k in saved and saved[k] != current.get(k)}

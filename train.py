"""Train or fine-tune CvT.

    python train.py /data/imagenet --config configs/train/cvt/cvt_13_224x224.yaml
    python -m paddle.distributed.launch --gpus 0,1,2,3 train.py /data/imagenet --config ...

A run writes to OUTPUT/EXPERIMENT: args.yaml, train.log, log.txt (one JSON line per epoch) and
checkpoint-latest/best/best-ema/<epoch>.pd; re-running the same command resumes from checkpoint-latest.
"""
import utils.env  # noqa: F401  (first: CPU threads, quiet paddle import)

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional, Tuple

import paddle

from cli import run_main
from datasets.imagenet import build_dataset, check_class_names, read_label_names
from datasets.loader import build_loader
from datasets.mixup import Mixup
from datasets.transforms import build_transform, resolve_data_cfg
from models import count_parameters, create_model, load_weights
from training.amp import AmpConfig, GradScaler, build_grad_scaler, decorate_o2
from training.args import FINETUNE_REQUIRED, build_train_parser
from training.checkpoint import (IDENTITY_KEYS, LATEST, SCHEDULE_KEYS, CheckpointManager, RunLock, TrainingCheckpoint,
                                 differing_settings, load_training_state)
from training.ema import ModelEma
from training.engine import NonFiniteLossError, StopRequested, TrainState, train_one_epoch
from training.evaluation import evaluate
from training.finetune import apply_finetune_switches
from training.graph import to_static
from training.losses import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from training.optim import build_optimizer
from training.preemption import PreemptionHandler
from training.scheduler import CosineScheduler, scale_lr
from training.trackers import build_trackers
from utils.config import dump_config, parse_args
from utils.distributed import (all_gather_rows, all_reduce_sum, broadcast_buffers, get_world_size,
                               init_distributed, unwrap_model, weights_agree_across_ranks, weights_checksum)
from utils.entrypoint import EXIT_PREEMPTED, USER_ERRORS
from utils.env import seed_everything
from utils.logger import get_logger, log_json, setup_logger, truncate_json_log

_logger = get_logger('train')
# Fewer optimizer updates per epoch than this and an epoch barely moves the weights: said at the start.
FEW_UPDATES = 10


@dataclass
class TrainingRun:
    """What one run is made of, built once by `main` and handed to `fit`."""
    model: paddle.nn.Layer  # paddle.DataParallel around it with several processes
    criterion: Callable
    optimizer: paddle.optimizer.Optimizer
    scheduler: CosineScheduler
    amp: AmpConfig
    scaler: Optional[GradScaler]
    mixup: Optional[Mixup]
    model_ema: Optional[ModelEma]
    train_set: object  # the training dataset, whose replaced unreadable images each epoch reports
    train_loader: object
    val_loader: object
    checkpoint: TrainingCheckpoint
    preemption: PreemptionHandler
    n_parameters: int  # trainable
    rank: int
    world_size: int
    run_dir: str


def run_dir_of(args) -> str:
    name = args.experiment or (os.path.splitext(os.path.basename(args.config))[0] if args.config else args.model)
    return os.path.join(args.output, name)


def build_data(args, model_cfg, train_set, rank: int, world_size: int):
    """Train and val loaders; the eval transform is the model's registered eval protocol. Val class folders
    must have the train split's names (labels are folder positions)."""
    data_cfg = resolve_data_cfg(model_cfg, input_size=args.input_size, interpolation=args.interpolation,
                                crop_pct=args.crop_pct)
    train_set.transform = build_transform(True, **data_cfg, aa=args.aa, reprob=args.reprob, remode=args.remode,
                                          recount=args.recount, hflip=args.hflip, vflip=args.vflip,
                                          color_jitter=args.color_jitter, scale=tuple(args.scale),
                                          ratio=tuple(args.ratio))
    val_set = build_dataset(args.data_dir, 'val', build_transform(False, **data_cfg),
                            list_file=args.cls_label_path_val, num_classes=args.num_classes,
                            bad_image_policy=args.bad_image_policy, class_names=train_set.classes,
                            names_of='the train split')
    common = dict(num_replicas=world_size, rank=rank, seed=args.seed, num_workers=args.num_workers,
                  use_shared_memory=args.use_shared_memory)
    train_loader = build_loader(train_set, args.batch_size, is_train=True, repeated_aug=args.repeated_aug,
                                update_freq=args.update_freq, **common)
    val_loader = build_loader(val_set, args.batch_size, is_train=False, **common)
    return data_cfg, train_loader, val_loader


def check_finetune_source(args) -> None:
    """A recipe that sets `finetune: required` starts from weights, or from random ones only when asked."""
    if args.finetune == FINETUNE_REQUIRED and not args.resume:
        raise ValueError(f'{args.config or "-o finetune=" + FINETUNE_REQUIRED}: this fine-tuning recipe needs '
                         f'--finetune WEIGHTS (a .pdparams/.pd file, URL or tag such as cvt_13_224x224); '
                         f'--finetune none trains it from random weights')


def fit_batch_to_data(args, num_images: int, world_size: int) -> None:
    """With --min_updates_per_epoch N, lower args.batch_size until an epoch of `num_images` has N updates.

    A few hundred images at the recipe's batch would give one or two updates per epoch: too few to learn.
    """
    wanted = args.min_updates_per_epoch
    if wanted <= 0 or updates_per_epoch(num_images, args.batch_size, world_size, args.update_freq) >= wanted:
        return
    fitted = max(1, num_images // (wanted * world_size * args.update_freq))
    _logger.info('batch_size %d (not %d): %d training images give %d updates per epoch at '
                 '--min_updates_per_epoch %d', fitted, args.batch_size, num_images,
                 updates_per_epoch(num_images, fitted, world_size, args.update_freq), wanted)
    args.batch_size = fitted


def updates_per_epoch(num_images: int, batch_size: int, world_size: int, update_freq: int) -> int:
    """Optimizer updates in an epoch: whole batches per rank (drop_last), whole groups of update_freq."""
    per_rank = -(-num_images // world_size)  # the train sampler pads every rank to the same count
    return per_rank // batch_size // update_freq


def epoch_use_note(args, num_images: int, world_size: int) -> Optional[str]:
    """One line when an epoch gives few updates or leaves images out (drop_last), with the flag that helps."""
    updates = updates_per_epoch(num_images, args.batch_size, world_size, args.update_freq)
    global_batch = args.batch_size * world_size * args.update_freq
    # The repeated-augmentation sampler shows a third of the images three times: it leaves out by design.
    unused = 0 if args.repeated_aug else max(0, num_images - updates * global_batch)
    if updates < FEW_UPDATES:
        fitting = max(1, num_images // (FEW_UPDATES * world_size * args.update_freq))
        fix = (f'pass --batch_size {fitting} (or --min_updates_per_epoch {FEW_UPDATES}) for {FEW_UPDATES}'
               if fitting < args.batch_size else 'add training images')
        return (f'{num_images} training images at global batch {global_batch} give {updates} '
                f'update{"" if updates == 1 else "s"} per epoch'
                + (f' ({unused} images left out of each epoch by drop_last)' if unused else '')
                + f': too few to learn from; {fix}')
    if unused:
        return (f'{unused} of {num_images} training images are left out of each epoch (drop_last keeps whole '
                f'batches of global {global_batch}; another random subset each epoch); --batch_size sets it')
    return None


def describe_data_cfg(data_cfg: dict) -> str:
    """'224px, crop_pct 0.875 center, bicubic' for the start line."""
    return (f"{data_cfg['input_size'][-1]}px, crop_pct {data_cfg['crop_pct']:g} {data_cfg['crop_mode']}, "
            f"{data_cfg['interpolation']}")


def build_criterion(args, mixup):
    if mixup is not None:
        return SoftTargetCrossEntropy()  # mixup already smoothed the targets
    if args.smoothing > 0:
        return LabelSmoothingCrossEntropy(args.smoothing)
    return paddle.nn.CrossEntropyLoss()


def run_identity(args, data_cfg: dict) -> dict:
    """The settings that make a run directory's checkpoint this run's (training.checkpoint.IDENTITY_KEYS)."""
    def absolute(path):
        return os.path.abspath(path) if path else None
    return {'data_dir': absolute(args.data_dir), 'cls_label_path_train': absolute(args.cls_label_path_train),
            'cls_label_path_val': absolute(args.cls_label_path_val), 'model': args.model,
            'num_classes': args.num_classes, 'input_size': int(data_cfg['input_size'][-1])}


def checkpoint_to_resume(args, ckpts: CheckpointManager, identity: dict):
    """(path, checkpoint) this run continues from, or (None, None) for a fresh start.

    Auto-resume continues only the same run; anything else is refused before a file is touched.
    """
    if args.resume:
        return args.resume, load_training_state(args.resume)
    if not args.auto_resume:
        if ckpts.latest() or ckpts.numbered():
            if not args.overwrite:
                raise ValueError(f'{ckpts.output_dir} already holds a run; --no_auto_resume would overwrite it: add '
                                 f'--overwrite to start over there, or name a new run with --experiment NAME')
        return None, None
    found = ckpts.load_latest()  # an unreadable latest falls back to the newest readable numbered one
    if found is None:
        return None, None
    latest, ckpt = found
    changed = differing_settings(ckpt.get('identity', {}), identity, IDENTITY_KEYS)
    if changed:
        what = ', '.join(f'{k} {old!r} -> {new!r}' for k, (old, new) in changed.items())
        raise ValueError(f'{ckpts.output_dir} holds another run ({what}); start a new one with --experiment NAME, '
                         f'or continue that checkpoint anyway with --resume {latest}')
    return latest, ckpt


def agreed_checkpoint_to_resume(args, ckpts: CheckpointManager, identity: dict):
    """`checkpoint_to_resume` on this rank, refused on every rank at once unless all ranks chose the same state.

    Each rank picks its checkpoint from its own file system, so nodes with separate --output folders pick
    different ones (or none) and would train apart until a collective times out, with nothing saying why.
    paddle.DataParallel copies rank 0's weights at the start, but not the optimizer, EMA, loss scale or
    position: ranks compare (has checkpoint, epoch, step, global step, checksum of its weights) instead.
    A rank that cannot resume at all (a --resume file missing on its node) still sends its row, so the
    others stop with its reason instead of waiting for it in the next collective.
    """
    try:
        resume_path, ckpt = checkpoint_to_resume(args, ckpts, identity)
    except USER_ERRORS as error:
        if get_world_size() > 1:
            all_gather_rows(_NO_RESUME, str(error))
        raise
    if get_world_size() == 1:
        return resume_path, ckpt
    if ckpt is None:
        fingerprint, source = (0, 0, 0, 0, 0.0), f'no checkpoint in {os.path.abspath(ckpts.output_dir)}'
    else:
        epoch, step, global_step = (int(ckpt[k]) for k in ('epoch', 'step_in_epoch', 'global_step'))
        fingerprint = (1, epoch, step, global_step, weights_checksum(ckpt['model']))
        path = os.path.abspath(resume_path)
        source = f'{os.path.basename(path)} epoch {epoch} step {step} in {os.path.dirname(path)}'
    rows = all_gather_rows(fingerprint, source)
    failed = [(rank, text) for rank, (numbers, text) in enumerate(rows) if numbers == _NO_RESUME]
    if failed:
        raise ValueError(f'rank {failed[0][0]} cannot resume: {failed[0][1]}')
    if len({numbers for numbers, _ in rows}) > 1:
        raise ValueError(f'ranks resume from different states ({_by_rank_groups(rows)}): --output must be one '
                         f'folder shared by all nodes, or pass --resume PATH on every node')
    return resume_path, ckpt


_NO_RESUME = (-1.0, 0.0, 0.0, 0.0, 0.0)  # the row of a rank whose checkpoint_to_resume failed


def _by_rank_groups(rows) -> str:
    """'ranks 0-7: <text>; ranks 8-15: <text>' for gathered (numbers, text) rows."""
    ranks_of = {}
    for rank, row in enumerate(rows):
        ranks_of.setdefault(row, []).append(rank)
    texts = [text for _, text in ranks_of]
    parts = []
    for (numbers, text), ranks in ranks_of.items():
        if texts.count(text) > 1:  # the same file name and position with other weights
            text += f' (global step {numbers[3]:.0f}, weights checksum {numbers[4]!r})'
        consecutive = ranks == list(range(ranks[0], ranks[-1] + 1))
        who = (f'rank {ranks[0]}' if len(ranks) == 1 else f'ranks {ranks[0]}-{ranks[-1]}' if consecutive
               else 'ranks ' + ', '.join(map(str, ranks)))
        parts.append(f'{who}: {text}')
    return '; '.join(parts)


def resumed_position(ckpt: dict, position: dict, args, world_size: int) -> Tuple[dict, str]:
    """The position to continue from under the current flags, and the one line that says what follows what.

    The checkpoint gives weights, optimizer, loss scale, EMA, best metrics and position; the flags give
    the LR schedule, so `--epochs` extended from 3 to 5 gives the curve of a 5-epoch run from epoch 3 on.
    A changed batch or world size maps a mid-epoch position by images seen.
    """
    saved = ckpt.get('args', {})
    current = {**vars(args), 'world_size': world_size}
    changed = differing_settings(saved, current, SCHEDULE_KEYS)
    line = (f'weights, optimizer, loss scale, EMA and best metrics from the checkpoint; LR schedule from the flags '
            f'(epochs {args.epochs}, lr {args.lr:.6g}, warmup {args.warmup_epochs} from {args.warmup_lr:g}, '
            f'min_lr {args.min_lr:g})')
    if changed:
        line += '; changed since the checkpoint: ' + ', '.join(f'{k} {a} -> {b}' for k, (a, b) in changed.items())
    images_per_step = {name: s.get('batch_size', args.batch_size) * s.get('world_size', world_size)
                       for name, s in (('saved', saved), ('now', current))}
    if position['step_in_epoch'] and images_per_step['saved'] != images_per_step['now']:
        seen = position['step_in_epoch'] * images_per_step['saved']
        step = seen // images_per_step['now'] // args.update_freq * args.update_freq
        line += (f'; mid-epoch position mapped by images seen: step {position["step_in_epoch"]} x '
                 f'{images_per_step["saved"]} images -> step {step} x {images_per_step["now"]}')
        position = {**position, 'step_in_epoch': step}
    return position, line


def main(argv=None) -> int:
    args = parse_args(build_train_parser(), argv)
    if not args.data_dir:
        raise ValueError('train.py: expected DATA_DIR (a folder with train/ and val/), found none')
    check_finetune_source(args)
    rank, world_size = init_distributed()
    run_dir = run_dir_of(args)
    setup_logger(None, rank)  # the run folder is written only once it is known to be this run's
    seed_everything(args.seed)  # the same seed on every rank before the model is built: the same weights
    model, train_set, data_cfg, train_loader, val_loader = build_model_and_data(args, rank, world_size)
    n_parameters = count_parameters(model)
    _logger.info('model %s: %d trainable parameters, %d classes', args.model, n_parameters, model.num_classes)
    ckpts = CheckpointManager(run_dir, keep=args.keep_checkpoints)
    identity = run_identity(args, data_cfg)
    resume_path, ckpt = agreed_checkpoint_to_resume(args, ckpts, identity)  # before rank 0 locks or writes
    if ckpt is not None and ckpt.get('class_names') is not None and train_set.classes is not None:
        # the same number of classes loads, but a renamed or replaced folder would take another's label
        check_class_names(train_set.root, train_set.classes, ckpt['class_names'], f'the checkpoint {resume_path}',
                          fix=f'its labels would go to other classes; restore the folder names, or start a new run '
                              f'from its weights with --finetune {resume_path} --experiment NAME')
    with contextlib.ExitStack() as lifetime:
        # Entered first, so it is restored last: a launcher's repeated SIGTERM during teardown is still only logged.
        preemption = lifetime.enter_context(PreemptionHandler())
        for loader in (train_loader, val_loader):  # persistent workers end with the run, whatever ends it
            lifetime.callback(loader.shutdown_workers)
        if rank == 0:
            lifetime.enter_context(RunLock(run_dir))  # a second run on this folder refuses before writing anything
        logger = setup_logger(run_dir, rank)
        if args.overwrite and resume_path is None and rank == 0:
            ckpts.remove_run_files()
        if args.finetune and resume_path is None:
            load_weights(model, args.finetune, skip_if_mismatched=('head.',))
        global_batch = args.batch_size * world_size * args.update_freq
        if args.lr is None:
            args.lr = scale_lr(args.base_lr, args.base_batch_size, global_batch)
            logger.info('lr %.6g = base_lr %.3g x global batch %d / %d', args.lr, args.base_lr, global_batch,
                        args.base_batch_size)
        if rank == 0:
            dump_config(args, os.path.join(run_dir, 'args.yaml'))
        mixup = build_mixup(args, model.num_classes)
        criterion = build_criterion(args, mixup)
        model, optimizer, scheduler, amp, scaler = build_optimization(args, model, train_loader)
        model_ema = ModelEma(model, args.model_ema_decay) if args.model_ema else None
        checkpoint = TrainingCheckpoint(ckpts, model=model, optimizer=optimizer, scaler=scaler, model_ema=model_ema,
                                        args={**vars(args), 'world_size': world_size}, identity=identity,
                                        class_names=train_set.classes)
        state = TrainState()
        if resume_path:
            position, how = resumed_position(ckpt, checkpoint.load_state_dict(ckpt, resume_path), args, world_size)
            state = TrainState(**position)
            if rank == 0:
                truncate_json_log(os.path.join(run_dir, 'log.txt'), state.epoch)
            logger.info('resumed from %s at epoch %d step %d: %s', resume_path, state.epoch, state.step_in_epoch, how)
        del ckpt  # the optimizer holds its own copies; the pickle can be large
        if args.to_static:
            model = to_static(model)  # after the EMA copy, which stays dygraph
        if world_size > 1:
            model = checkpoint.model = paddle.DataParallel(model)
        logger.info('training %s for %d epochs: %d updates/epoch, global batch %d, %s', args.model, args.epochs,
                    scheduler.steps_per_epoch, global_batch, describe_data_cfg(data_cfg))
        note = epoch_use_note(args, len(train_set), world_size)
        if note:
            logger.warning(note)
        run = TrainingRun(model=model, criterion=criterion, optimizer=optimizer, scheduler=scheduler, amp=amp,
                          scaler=scaler, mixup=mixup, model_ema=model_ema, train_set=train_set,
                          train_loader=train_loader, val_loader=val_loader, checkpoint=checkpoint,
                          preemption=preemption, n_parameters=n_parameters, rank=rank,
                          world_size=world_size, run_dir=run_dir)
        return fit(args, run, state)


def build_model_and_data(args, rank: int, world_size: int):
    """The model (its class count from the data unless given) and the train/val loaders."""
    train_set = build_dataset(args.data_dir, 'train', None, list_file=args.cls_label_path_train,
                              num_classes=args.num_classes, bad_image_policy=args.bad_image_policy)
    if args.num_classes is None:
        args.num_classes = train_set.num_classes
        _logger.info('num_classes=%d, from the training data', args.num_classes)
    if args.label_list:
        train_set.classes = list_file_class_names(args, train_set)
    fit_batch_to_data(args, len(train_set), world_size)
    overrides = {k: v for k, v in dict(num_classes=args.num_classes, drop_path_rate=args.drop_path,
                                       drop_rate=args.drop).items() if v is not None}
    model = create_model(args.model, pretrained=args.pretrained, **overrides)
    apply_finetune_switches(model, freeze_stages=args.freeze_stages, bn_eval=args.bn_eval)
    args.num_classes = model.num_classes
    if args.grad_checkpointing:
        model.set_grad_checkpointing()
        _logger.info('gradient checkpointing: every block is recomputed in backward')
    data_cfg, train_loader, val_loader = build_data(args, model.default_cfg, train_set, rank, world_size)
    return model, train_set, data_cfg, train_loader, val_loader


def list_file_class_names(args, train_set) -> list:
    """The class names --label_list gives a list-file run (its checkpoints store them as folder names are)."""
    if train_set.classes is not None:
        raise ValueError(f'--label_list names the classes of a --cls_label_path_train run; the class folders of '
                         f'{args.data_dir}/train name theirs: drop --label_list')
    names = read_label_names(args.label_list)
    if len(names) != args.num_classes:
        raise ValueError(f'{args.label_list}: {len(names)} class names, expected {args.num_classes} (the classes of '
                         f'{args.cls_label_path_train}, or --num_classes)')
    return names


def build_mixup(args, num_classes: int):
    if args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None:
        return Mixup(args.mixup, args.cutmix, args.cutmix_minmax, args.mixup_prob, args.mixup_switch_prob,
                     args.mixup_mode, args.smoothing, num_classes, seed=args.seed)
    return None


def build_optimization(args, model, train_loader):
    """(model, optimizer, scheduler, amp, scaler); under O2 the model comes back with low-precision weights."""
    optimizer = build_optimizer(model, opt=args.opt, lr=args.lr, weight_decay=args.weight_decay,
                                betas=tuple(args.opt_betas), eps=args.opt_eps, momentum=args.momentum,
                                grad_clip=args.clip_grad, clip_mode=args.clip_mode, layer_decay=args.layer_decay)
    steps_per_epoch = train_loader.batch_sampler.num_batches // args.update_freq  # whole groups: build_loader
    scheduler = CosineScheduler(args.lr, args.epochs, warmup_epochs=args.warmup_epochs, warmup_lr=args.warmup_lr,
                                min_lr=args.min_lr, per_step=args.sched_on_updates, steps_per_epoch=steps_per_epoch)
    amp = AmpConfig(args.amp, args.amp_dtype, args.amp_level)
    if amp.cpu_note():
        _logger.info(amp.cpu_note())
    scaler = build_grad_scaler(amp)
    if amp.enable and amp.level == 'O2':
        model, optimizer = decorate_o2(model, optimizer, amp.dtype)
    return model, optimizer, scheduler, amp, scaler


def fit(args, run: TrainingRun, state: TrainState) -> int:
    """The epoch loop from `state` to `args.epochs`: train, evaluate, log, checkpoint; returns the exit status."""
    model, checkpoint, rank = run.model, run.checkpoint, run.rank
    trackers = build_trackers(run.run_dir, wandb=args.log_wandb, visualdl=args.log_visualdl,
                              wandb_project=args.wandb_project, config=vars(args)) if rank == 0 else []

    def position():
        return {'epoch': state.epoch, 'step_in_epoch': state.step_in_epoch, 'global_step': state.global_step}

    def on_update(s: TrainState):
        if args.save_every_steps and s.global_step % args.save_every_steps == 0 and rank == 0:
            checkpoint.save_latest(position())

    replaced_before = run.train_set.num_replaced
    while state.epoch < args.epochs:
        epoch = state.epoch
        run.train_loader.batch_sampler.set_epoch(epoch)
        run.train_loader.batch_sampler.set_start_batch(state.step_in_epoch)
        if run.mixup is not None and args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            run.mixup.mixup_enabled = False
        start = time.time()
        try:
            train_stats = train_one_epoch(model, run.criterion, run.train_loader, run.optimizer, run.scheduler,
                                          state, seed=args.seed, rank=rank, amp=run.amp, scaler=run.scaler,
                                          mixup=run.mixup, update_freq=args.update_freq, model_ema=run.model_ema,
                                          max_bad_steps=args.max_bad_steps, print_freq=args.print_freq,
                                          on_update=on_update, stop_requested=lambda: run.preemption.requested)
        except NonFiniteLossError as e:
            _logger.error(str(e))
            return 2
        except StopRequested:
            if rank == 0:
                with run.preemption.saving():
                    checkpoint.save_latest(position())
            # No rank leaves before the file is on disk: the launcher kills the other ranks 3 s after one exits
            # non-zero, and a container or SLURM step kills everything once its main process is gone.
            all_reduce_sum(paddle.zeros([1]))
            _logger.warning('stopped by %s at epoch %d step %d (%d updates): %s holds this position; run the same '
                            'command again to resume (exit status %d)', run.preemption.reason(), state.epoch,
                            state.step_in_epoch, state.global_step, checkpoint.manager.path(LATEST), EXIT_PREEMPTED)
            return EXIT_PREEMPTED
        state.epoch, state.step_in_epoch = epoch + 1, 0
        replaced, replaced_before = run.train_set.num_replaced - replaced_before, run.train_set.num_replaced
        if replaced:
            _logger.warning('epoch %d: %d unreadable images were replaced by other samples (see the warnings above)',
                            epoch, replaced)
        broadcast_buffers(model)
        if run.model_ema is not None:
            broadcast_buffers(run.model_ema.module)
        record = {'epoch': epoch, 'train_lr': train_stats.get('lr'), 'train_loss': train_stats.get('loss'),
                  'train_images_per_s': run.train_loader.batch_sampler.num_batches * args.batch_size
                  * run.world_size / (time.time() - start),
                  'bad_images_replaced': replaced, 'n_parameters': run.n_parameters}
        if state.epoch % args.eval_freq == 0 or state.epoch == args.epochs:
            record.update({f'test_{k}': v for k, v in evaluate(unwrap_model(model), run.val_loader, run.amp).items()})
            if run.model_ema is not None:
                ema_stats = evaluate(run.model_ema.module, run.val_loader, run.amp)
                record.update({f'test_ema_{k}': v for k, v in ema_stats.items()})
        if rank == 0:
            checkpoint.end_epoch(position(), record, save_numbered=bool(args.save_freq)
                                 and state.epoch % args.save_freq == 0)
            record['best_acc1'] = checkpoint.best['acc1']
            if run.model_ema is not None:
                record['best_ema_acc1'] = checkpoint.best['ema_acc1']
            log_json(os.path.join(run.run_dir, 'log.txt'), record)
            for tracker in trackers:
                tracker.log(record, epoch)
        if 'test_acc1' in record:
            _logger.info('* epoch %d  Acc@1 %.3f  Acc@5 %.3f  loss %.4f  best Acc@1 %.3f', epoch, record['test_acc1'],
                         record['test_acc5'], record['test_loss'], checkpoint.best['acc1'])
    for tracker in trackers:
        tracker.close()
    if run.world_size > 1:
        agree, checksum = weights_agree_across_ranks(model)
        if not agree:
            _logger.error('ranks ended with different weights (checksum %r on rank %d)', checksum, rank)
            return 3
        _logger.info('weights checksum %r identical on all %d ranks', checksum, run.world_size)
    _logger.info('done: best Acc@1 %.3f; files in %s', checkpoint.best['acc1'], run.run_dir)
    return 0


if __name__ == '__main__':
    run_main(main)

"""Run configuration: argparse defaults <- `--config` YAML <- `-o key=value` <- command-line flags.

YAML keys are the flags' dest names (`weight_decay: 0.1` sets `--weight_decay`), so a recipe file and
the command line share one namespace and one set of defaults, the ones written below. Every YAML or
`-o` value is checked against its flag (known key, type, list length, choices) before it is used.
"""
import argparse
import copy
import difflib
import os
import sys
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import yaml

from .env import default_num_workers
from .fileio import atomic_write

# `finetune: required` in a recipe: train.py refuses to start until --finetune names weights (or 'none').
FINETUNE_REQUIRED = 'required'
# Parser plumbing, never a recipe key: a config file cannot name another config file.
_PLUMBING = ('config', 'opts')
_INVALID = object()  # "does not fit the flag" (None is a legitimate, nullable value)


def optional_str(value: str) -> Optional[str]:
    """argparse type for a string flag that 'none' (or '') turns off, e.g. `--aa none`."""
    return None if value.strip().lower() in ('', 'none', 'null') else value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Append '(default: X)' unless the help already explains the default, X is None (unset),
    or the flag is a `--no_name` twin whose `--name` already shows it."""

    def _get_help_string(self, action):
        if getattr(action, 'negates', False) or action.default is None or '(default' in (action.help or ''):
            return action.help
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors; an unknown flag is reported first (before missing required ones) and
    names the closest valid flag, as unknown YAML keys do, instead of the full usage text."""

    def parse_known_args(self, args=None, namespace=None):
        tokens = sys.argv[1:] if args is None else list(args)
        flags = [s for action in self._actions for s in action.option_strings]
        unknown = [t for t in tokens if t.startswith('--') and t != '--' and t.split('=')[0] not in flags]
        if unknown:
            hints = [f"'{t}'" + (f" (did you mean '{close}'?)" if (close := closest_flag(t.split('=')[0], flags))
                                 else '') for t in unknown]
            self.error(f"unknown argument{'s' if len(hints) > 1 else ''} {', '.join(hints)}")
        return super().parse_known_args(args, namespace)

    def error(self, message: str):
        self.exit(2, f'{self.prog}: error: {message}; see {self.prog} --help\n')


def closest_flag(token: str, flags: Sequence[str]) -> Optional[str]:
    """The valid flag a mistyped `token` most likely meant: a flag it extends or abbreviates
    (`--lr_rate` -> `--lr`), else the closest spelling."""
    related = [f for f in flags if f.startswith('--') and (token.startswith(f + '_') or f.startswith(token))]
    close = difflib.get_close_matches(token, related or flags, n=1, cutoff=0.0 if related else 0.6)
    return close[0] if close else None


def add_bool(group, name: str, default: bool, help: str) -> None:
    """A boolean with both spellings, `--name` and `--no_name`, so the command line can undo a YAML value."""
    group.add_argument(f'--{name}', action='store_true', default=default, help=help)
    negative = group.add_argument(f'--no_{name}', dest=name, action='store_false', help=f'turn --{name} off')
    negative.negates = True


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """`--config` and `-o`: every parser that goes through `parse_args` needs both."""
    group = parser.add_argument_group('config', 'precedence: defaults below < --config YAML < -o < flags')
    group.add_argument('--config', metavar='YAML',
                       help='recipe file whose keys are the flag names below (e.g. weight_decay: 0.1)')
    group.add_argument('-o', '--override', dest='opts', action='append', metavar='KEY=VALUE',
                       help='set one key, value in YAML syntax (-o opt_betas=[0.9,0.95]); repeatable')


def build_train_parser() -> argparse.ArgumentParser:
    """The train.py flags, grouped; defaults follow the official cvt-13-224x224 recipe on 8 GPUs."""
    parser = ArgumentParser(
        prog='train.py', formatter_class=HelpFormatter, allow_abbrev=False,
        description='Train or fine-tune CvT. Recipes: configs/train/cvt/*.yaml.')
    add_config_args(parser)

    g = parser.add_argument_group('data')
    g.add_argument('data_dir', nargs='?', default=None,
                   help='dataset root with train/ and val/ class folders, or the root the list files refer to')
    g.add_argument('--cls_label_path_train', default=None, metavar='FILE',
                   help="training list of 'relative/path label' lines (default: class folders in data_dir/train)")
    g.add_argument('--cls_label_path_val', default=None, metavar='FILE',
                   help="validation list of 'relative/path label' lines (default: class folders in data_dir/val)")
    g.add_argument('--input_size', type=int, default=None, metavar='PX',
                   help="square train and eval input side (default: the model's default_cfg)")
    g.add_argument('--interpolation', default=None, choices=('nearest', 'bilinear', 'bicubic'),
                   help="resize interpolation for train and eval (default: the model's, bicubic)")
    g.add_argument('--crop_pct', type=float, default=None,
                   help="eval resizes to input_size / crop_pct, then centre-crops (default: the model's)")
    g.add_argument('--batch_size', type=int, default=256,
                   help='images per process and step; global batch = batch_size x world size x update_freq')
    g.add_argument('--min_updates_per_epoch', type=int, default=0, metavar='N',
                   help='lower --batch_size when the training set is too small for N optimizer updates per '
                        'epoch (small fine-tuning sets); 0: keep --batch_size')
    g.add_argument('--num_workers', type=int, default=default_num_workers(6),
                   help='data loader worker processes per GPU (default: 6, at most the CPU cores per process)')
    add_bool(g, 'use_shared_memory', True,
             'pass batches from loader workers through shared memory (turn off when /dev/shm is small)')
    g.add_argument('--bad_image_policy', default='skip', choices=('skip', 'error'),
                   help='an unreadable image: log its path and load another sample (counted per epoch), '
                        'or stop naming it')

    g = parser.add_argument_group('model')
    g.add_argument('--model', default='cvt_13_224x224', help='registered model name (models.list_models())')
    g.add_argument('--pretrained', default=None, metavar='WEIGHTS',
                   help='weights (path or known tag) loaded before training; all keys and shapes must match')
    g.add_argument('--finetune', type=optional_str, default=None, metavar='WEIGHTS',
                   help='weights to start a new run from; the head is re-initialised when its shape differs '
                        'from --num_classes; optimizer state and epoch are not taken over. A recipe with '
                        f"'finetune: {FINETUNE_REQUIRED}' needs it; 'none' trains such a recipe from random weights")
    g.add_argument('--num_classes', type=int, default=None,
                   help='classifier outputs (default: the number of classes in the training data)')
    add_bool(g, 'grad_checkpointing', False,
             'recompute each transformer block in backward instead of storing its activations: less memory, '
             'about one more forward per step, the same gradients (README "Gradient checkpointing")')

    g = parser.add_argument_group('optimizer')
    g.add_argument('--opt', default='adamw', choices=('adamw', 'sgd'), help='optimizer')
    g.add_argument('--lr', type=float, default=None,
                   help='peak learning rate, absolute; when unset, base_lr x global batch / base_batch_size')
    g.add_argument('--base_lr', type=float, default=2e-3, help='peak learning rate at --base_batch_size')
    g.add_argument('--base_batch_size', type=int, default=2048, help='global batch that --base_lr is given for')
    g.add_argument('--weight_decay', type=float, default=0.05,
                   help='decoupled weight decay (biases, norms and cls tokens get none)')
    g.add_argument('--opt_eps', type=float, default=1e-8, help='AdamW epsilon')
    g.add_argument('--opt_betas', type=float, nargs=2, default=[0.9, 0.999], metavar=('BETA1', 'BETA2'),
                   help='AdamW betas')
    g.add_argument('--momentum', type=float, default=0.9, help='SGD momentum')
    g.add_argument('--clip_grad', type=float, default=None,
                   help='clip gradients at this global norm or value (see --clip_mode); unset: no clipping')
    g.add_argument('--clip_mode', default='norm', choices=('norm', 'value'), help='what --clip_grad bounds')
    g.add_argument('--update_freq', type=int, default=1, help='accumulate gradients over N steps per update')

    g = parser.add_argument_group('schedule', 'linear warmup, then cosine decay to --min_lr')
    g.add_argument('--epochs', type=int, default=300, help='training epochs')
    g.add_argument('--warmup_epochs', type=int, default=5, help='linear warmup epochs')
    g.add_argument('--warmup_lr', type=float, default=1e-6, help='learning rate at the start of warmup')
    g.add_argument('--min_lr', type=float, default=1e-5, help='learning rate at the end of the cosine')
    add_bool(g, 'sched_on_updates', False,
             'update the learning rate every optimizer step (the official runs update it once per epoch)')

    g = parser.add_argument_group('augmentation', 'training images only')
    g.add_argument('--aa', type=optional_str, default='rand-m9-mstd0.5-inc1', metavar='POLICY',
                   help="RandAugment policy string; 'none' turns it off")
    g.add_argument('--color_jitter', type=float, default=0.0,
                   help='colour-jitter strength for brightness, contrast and saturation; 0 turns it off')
    g.add_argument('--hflip', type=float, default=0.5, help='horizontal flip probability')
    g.add_argument('--vflip', type=float, default=0.0, help='vertical flip probability')
    g.add_argument('--scale', type=float, nargs=2, default=[0.08, 1.0], metavar=('MIN', 'MAX'),
                   help='random-resized-crop area range, as a fraction of the image')
    g.add_argument('--ratio', type=float, nargs=2, default=[3 / 4, 4 / 3], metavar=('MIN', 'MAX'),
                   help='random-resized-crop aspect-ratio range')
    g.add_argument('--reprob', type=float, default=0.25, help='random-erasing probability')
    g.add_argument('--remode', default='pixel', choices=('const', 'rand', 'pixel'), help='random-erasing fill')
    g.add_argument('--recount', type=int, default=1, help='random-erasing regions per image')
    add_bool(g, 'repeated_aug', False, 'repeated-augmentation sampler (DeiT RASampler): an epoch keeps its length '
             'but shows a third of the images 3 times each, differently augmented, the copies on different ranks')

    g = parser.add_argument_group('mixup', 'Mixup/CutMix on the batch; targets become soft')
    g.add_argument('--mixup', type=float, default=0.8, help='Mixup alpha; 0 turns Mixup off')
    g.add_argument('--cutmix', type=float, default=1.0, help='CutMix alpha; 0 turns CutMix off')
    g.add_argument('--cutmix_minmax', type=float, nargs=2, default=None, metavar=('MIN', 'MAX'),
                   help='CutMix box size range as a fraction of the image; replaces --cutmix alpha when set')
    g.add_argument('--mixup_prob', type=float, default=1.0, help='probability of mixing a batch')
    g.add_argument('--mixup_switch_prob', type=float, default=0.5,
                   help='probability of CutMix rather than Mixup when both are on')
    g.add_argument('--mixup_mode', default='batch', choices=('batch', 'pair', 'elem'),
                   help='mix per batch, per pair of samples, or per sample')
    g.add_argument('--mixup_off_epoch', type=int, default=0, help='stop mixing from this epoch on; 0: never')

    g = parser.add_argument_group('regularisation')
    g.add_argument('--smoothing', type=float, default=0.1, help='label smoothing')
    g.add_argument('--drop_path', type=float, default=None,
                   help="stochastic-depth rate of the last stage (default: the model's, 0.1; 0.3 for W24)")
    g.add_argument('--drop', type=float, default=0.0, help='dropout rate inside the blocks')

    g = parser.add_argument_group('EMA', 'exponential moving average of the weights, evaluated alongside')
    add_bool(g, 'model_ema', False, 'keep an EMA copy of the model')
    g.add_argument('--model_ema_decay', type=float, default=0.9998, help='EMA decay per optimizer update')

    g = parser.add_argument_group('AMP', 'automatic mixed precision (GPU)')
    add_bool(g, 'amp', True, 'train with automatic mixed precision (float16 adds a dynamic loss scaler)')
    g.add_argument('--amp_dtype', default='float16', choices=('float16', 'bfloat16'), help='low-precision dtype')
    g.add_argument('--amp_level', default='O1', choices=('O1', 'O2'),
                   help='O1: autocast over fp32 weights; O2: low-precision weights with fp32 master copies')
    g.add_argument('--max_bad_steps', type=int, default=20,
                   help='stop after this many consecutive steps with a non-finite loss or gradient; 0: never')

    g = parser.add_argument_group(
        'distributed', 'launch with: python -m paddle.distributed.launch --gpus 0,1,2,3 train.py ...; '
                       'world size and rank come from the launcher, --batch_size is per process')
    g.add_argument('--seed', type=int, default=0,
                   help='random seed: model init uses it on every rank; data and dropout mix in the rank')

    g = parser.add_argument_group('checkpoint/output')
    g.add_argument('--output', default='output', metavar='DIR', help='runs root; a run writes to OUTPUT/EXPERIMENT')
    g.add_argument('--experiment', default=None, metavar='NAME',
                   help="run name (default: the --config file's stem, else the model name)")
    g.add_argument('--resume', default=None, metavar='CHECKPOINT',
                   help='training state to continue from: model, optimizer, loss scaler, EMA, epoch')
    add_bool(g, 'auto_resume', True,
             'without --resume, continue from OUTPUT/EXPERIMENT/checkpoint-latest.pd when it exists and was '
             'written by the same run (data, lists, model, classes, input size); refuse when it was not')
    add_bool(g, 'overwrite', False, 'with --no_auto_resume: delete the earlier run\'s checkpoints and log.txt '
                                    'in OUTPUT/EXPERIMENT and start over')
    g.add_argument('--eval_freq', type=int, default=1, help='evaluate every N epochs and after the last')
    g.add_argument('--save_freq', type=int, default=10,
                   help='keep a numbered checkpoint every N epochs (latest and best are saved each epoch); 0: never')
    g.add_argument('--save_every_steps', type=int, default=0,
                   help='also refresh checkpoint-latest every N optimizer steps within an epoch; 0: never')
    g.add_argument('--keep_checkpoints', type=int, default=3, help='numbered checkpoints kept; 0 keeps all')

    g = parser.add_argument_group('logging')
    g.add_argument('--print_freq', type=int, default=50, help='log training metrics every N steps')
    add_bool(g, 'log_wandb', False, 'also log to Weights & Biases (needs the wandb package)')
    add_bool(g, 'log_visualdl', False,
             'also log to VisualDL in OUTPUT/EXPERIMENT/visualdl (needs the visualdl package)')
    g.add_argument('--wandb_project', default='cvt-paddle', help='Weights & Biases project')
    add_bool(g, 'debug', False, 'full tracebacks on errors')
    return parser


def load_config_file(path: str) -> Dict[str, Any]:
    """Read a recipe file: a YAML mapping of flag names to values (safe_load only)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: config file not found')
    try:
        with open(path, encoding='utf-8') as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as err:
        mark = getattr(err, 'problem_mark', None)
        where = f'line {mark.line + 1}: ' if mark is not None else ''
        raise ValueError(f"{path}: not valid YAML ({where}{getattr(err, 'problem', None) or err})") from None
    if not isinstance(data, dict):
        raise ValueError(f'{path}: expected a mapping of flag names to values, found {type(data).__name__}')
    return data


def parse_overrides(items: Iterable[str]) -> List[Tuple[str, str, Any]]:
    """`-o key=value` items as (source, key, value); the value is read as YAML, so `[1, 2]` is a list."""
    parsed = []
    for item in items:
        key, sep, text = item.partition('=')
        if not sep or not key.strip():
            raise ValueError(f"-o {item}: expected KEY=VALUE, e.g. -o weight_decay=0.1")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        parsed.append((f'-o {item}', key.strip(), value))
    return parsed


def parse_args(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse `argv` with `parser`; a `--config` YAML and `-o` items replace its defaults, flags win.

    Works for any parser that went through `add_config_args`. Raises FileNotFoundError/ValueError
    with one line naming the file (or -o item) and key on a missing file, unknown key or bad value.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    first = argparse.ArgumentParser(add_help=False, allow_abbrev=False, exit_on_error=False)
    first.add_argument('--config')
    first.add_argument('-o', '--override', dest='opts', action='append', default=[])
    try:
        known, _ = first.parse_known_args(argv)
    except argparse.ArgumentError:
        return parser.parse_args(argv)  # e.g. a bare `--config`: let the full parser print its usage error

    specs = _key_specs(parser)
    values = {}
    if known.config:
        entries = [(known.config, str(k), v) for k, v in load_config_file(known.config).items()]
        values.update(_checked(entries, specs))
    values.update(_checked(parse_overrides(known.opts), specs))
    # On a copy, so the caller's parser keeps its built-in defaults for the next call.
    parser = copy.deepcopy(parser)
    parser.set_defaults(**values)
    return parser.parse_args(argv)


def dump_config(args: argparse.Namespace, path: str) -> None:
    """Write the resolved run config as YAML that `--config` reads back to the same values.

    `args` must hold only parser keys; keep derived values (world size, resolved LR) elsewhere.
    """
    values = {k: v for k, v in vars(args).items() if k not in _PLUMBING}
    text = f'# Resolved run configuration; rerun with --config {os.path.basename(path)}\n'
    text += yaml.safe_dump(values, sort_keys=False, default_flow_style=None)
    with atomic_write(path) as tmp, open(tmp, 'w', encoding='utf-8') as f:
        f.write(text)


def _key_specs(parser: argparse.ArgumentParser) -> Dict[str, Tuple[argparse.Action, bool]]:
    """dest -> (action, accepts null): a key is nullable when its default is None or its type maps 'none' to None."""
    specs = {}
    for action in parser._actions:
        if action.default == argparse.SUPPRESS or action.dest in _PLUMBING or getattr(action, 'negates', False):
            continue
        specs.setdefault(action.dest, (action, action.default is None or action.type is optional_str))
    return specs


def _checked(entries: Iterable[Tuple[str, str, Any]], specs) -> Dict[str, Any]:
    values = {}
    for source, key, value in entries:
        if key not in specs:
            close = difflib.get_close_matches(key, specs, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else '; see --help for the valid keys'
            raise ValueError(f"{source}: unknown key '{key}'{hint}")
        action, nullable = specs[key]
        converted = _convert(value, action, nullable)
        if converted is _INVALID:
            raise ValueError(f"{source}: key '{key}' expects {_expected(action, nullable)}, found {value!r}")
        values[key] = converted
    return values


def _is_bool(action: argparse.Action) -> bool:
    return action.nargs == 0 and isinstance(action.const, bool)


def _is_list(action: argparse.Action) -> bool:
    return action.nargs in ('+', '*') or (isinstance(action.nargs, int) and action.nargs > 0)


def _convert(value: Any, action: argparse.Action, nullable: bool) -> Any:
    """The value argparse would have produced from the command line, or _INVALID."""
    if value is None:
        return None if nullable else _INVALID
    if _is_bool(action):
        return value if isinstance(value, bool) else _INVALID
    if _is_list(action):
        if not isinstance(value, (list, tuple)):
            return _INVALID
        if isinstance(action.nargs, int) and len(value) != action.nargs:
            return _INVALID
        items = [_convert_scalar(v, action) for v in value]
        return _INVALID if any(i is _INVALID for i in items) else items
    return _convert_scalar(value, action)


def _convert_scalar(value: Any, action: argparse.Action) -> Any:
    kind = action.type or str
    if isinstance(value, bool) or isinstance(value, (list, tuple, dict)):
        converted = _INVALID
    elif kind in (int, float) and not isinstance(value, str):
        # YAML already typed it: an int is a fine float, a float is never an int.
        fits = isinstance(value, int) or (kind is float and isinstance(value, float))
        converted = kind(value) if fits else _INVALID
    elif not isinstance(value, str):
        converted = _INVALID
    else:
        # Strings go through the flag's own type, as on the command line; this also rescues
        # YAML 1.1 reading `1e-3` (no dot) as a string.
        try:
            converted = kind(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            converted = _INVALID
    if converted is not _INVALID and action.choices is not None and converted not in action.choices:
        return _INVALID
    return converted


def _expected(action: argparse.Action, nullable: bool) -> str:
    if _is_bool(action):
        return 'true or false'
    words = {int: ('an integer', 'integers'), float: ('a number', 'numbers')}
    one, many = words.get(action.type, ('a string', 'strings'))
    if action.choices is not None:
        one = 'one of ' + ', '.join(map(str, action.choices))
    if _is_list(action):
        count = action.nargs if isinstance(action.nargs, int) else 'one or more'
        one = f'a list of {count} {many}'
    return f'null or {one}' if nullable else one

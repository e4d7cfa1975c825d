"""Run configuration: argparse defaults <- `--config` YAML <- `-o key=value` <- command-line flags.

YAML keys are the flags' dest names (`weight_decay: 0.1` sets `--weight_decay`), so a recipe file and
the command line share one namespace and one set of defaults, the ones the script's parser gives (train.py's
are in training/args.py). Every YAML or `-o` value is checked against its flag (known key, type, list
length, choices) before it is used.
"""
import argparse
import copy
import difflib
import os
import sys
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import yaml

from .fileio import atomic_write

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

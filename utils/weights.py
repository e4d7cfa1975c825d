"""Weight and checkpoint files: the reader and the writer of the format, and the one strict loader.

Reads torch `.pth`/`.bin` (zip or legacy), `.safetensors` and Paddle `.pdparams`/`.pd` pickles without
torch and without plain unpickling, once: a caller that needs more of a file than its weights (a training
checkpoint's run settings or optimizer state) reads it with `read_weight_file` and hands the content on.
Writes state dicts and training checkpoints as `paddle.save` pickles of numpy arrays and plain values,
atomically. What names a family's published files use, and where they are, is the model's business
(models/cvt_weights.py hands its `checkpoint_filter_fn` in as `convert`).
"""
import os
import zipfile
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import paddle

from .fileio import atomic_write
from .logger import get_logger
from .torch_pickle import load_checkpoint

logger = get_logger(__name__)

# Containers a checkpoint may wrap its state dict in, tried in this order when no key is given
# (this repo: 'model'/'model_ema'; official training checkpoints: 'state_dict', with 'model' a name).
_CONTAINER_KEYS = ('model', 'state_dict', 'module')


def is_safetensors(path: str) -> bool:
    # An 8-byte little-endian header length, then the JSON header; pickles and zips start otherwise.
    with open(path, 'rb') as file:
        head = file.read(9)
    return path.endswith('.safetensors') or (len(head) == 9 and head[8:9] == b'{'
                                             and int.from_bytes(head[:8], 'little') < os.path.getsize(path))


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
    from safetensors.numpy import load_file
    try:
        return load_file(path)
    except Exception as err:  # the library raises its own SafetensorError and others for bad files
        raise ValueError(f'{path}: truncated or corrupt safetensors file ({str(err).splitlines()[0]})') from None


def _is_state_dict(obj) -> bool:
    return (isinstance(obj, dict) and bool(obj) and all(isinstance(k, str) for k in obj)
            and all(isinstance(v, np.ndarray) and v.dtype != object for v in obj.values()))


def _describe_keys(obj) -> str:
    return ', '.join(repr(k) for k in list(obj)[:8]) if isinstance(obj, dict) else type(obj).__name__


def read_weight_file(path: str) -> Any:
    """The content of a weight or checkpoint file (torch zip/legacy, safetensors, paddle pickle), read once."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: no such file')
    return _read_safetensors(path) if is_safetensors(path) else load_checkpoint(path)


def recorded_run(path: str, content: Any) -> Tuple[dict, Optional[List[str]]]:
    """(resolved settings, class names) of the training run a train.py checkpoint stores (its 'args' and
    'class_names' entries), or ({}, None); `content` is the file at `path` as `read_weight_file` returned it.

    A checkpoint carries its run's model, class count, eval preprocessing and class names this way, so
    eval, predict and export use what training used without repeating flags, whatever the file is called
    or where it lies. Torch zips and safetensors (released weights) carry neither.
    """
    if zipfile.is_zipfile(path) or is_safetensors(path) or not isinstance(content, dict):
        return {}, None
    args, names = content.get('args'), content.get('class_names')
    return (args if isinstance(args, dict) else {}), (list(names) if isinstance(names, (list, tuple)) else None)


def state_dict_from(content: Any, path: str, key: Optional[str] = None) -> Dict[str, np.ndarray]:
    """{name: array} out of a file's content as `read_weight_file` returned it (`path` names it in errors).

    Args:
        key: entry of a checkpoint to use (e.g. 'model_ema'); by default a bare state dict is used
            as is, else the first of 'model', 'state_dict', 'module' that holds one.
    """
    obj = content
    if key == 'model_ema' and isinstance(obj, dict) and obj.get(key) is None:  # train.py stores None without EMA
        raise KeyError(f'{path}: no EMA weights in this file (train.py keeps them with --model_ema); '
                       f'drop --use_ema to load its model weights')
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            raise KeyError(f"{path}: no entry '{key}' (top-level entries: {_describe_keys(obj)})")
        obj = obj[key]
    elif isinstance(obj, dict) and not _is_state_dict(obj):
        obj = next((obj[name] for name in _CONTAINER_KEYS if _is_state_dict(obj.get(name))), obj)
    if not _is_state_dict(obj):
        where = f"entry '{key}'" if key is not None else 'file'
        raise ValueError(f'{path}: {where} holds no state dict of arrays (top-level entries: '
                         f"{_describe_keys(obj)}); name the entry: --use_ema for 'model_ema', or "
                         f'tools/convert_weights.py --key ENTRY')
    return dict(obj)


def read_state_dict(path: str, key: Optional[str] = None) -> Dict[str, np.ndarray]:
    """Read a weight file into {name: array}; see `state_dict_from` for `key`."""
    return state_dict_from(read_weight_file(path), path, key)


def _listed(names: Sequence[str], limit: int = 5) -> str:
    shown = ', '.join(repr(n) for n in names[:limit])
    return shown + (f' (+{len(names) - limit} more)' if len(names) > limit else '')


def _mismatch_message(path, n_file, n_model, mismatched, missing, unexpected) -> str:
    parts = [f"'{k}' has shape {list(got)}, expected {list(want)}" for k, got, want in mismatched[:3]]
    if len(mismatched) > 3:
        parts.append(f'{len(mismatched) - 3} more shape mismatches')
    if missing:
        parts.append(f'missing {_listed(missing)}')
    if unexpected:
        parts.append(f'unexpected {_listed(unexpected)}')
    hint = ''
    if mismatched and not missing and not unexpected and all(k.startswith('head.') for k, _, _ in mismatched):
        file_classes = next(got[-1] for k, got, _ in mismatched if k == 'head.bias' or k == 'head.weight')
        hint = (f' (the file has {file_classes} classes: pass --num_classes {file_classes} to load it as it is, '
                f'or start training from it with train.py --finetune, which re-initialises the classifier)')
    return f'{path}: does not match the model ({n_file} tensors in file, {n_model} in model): ' \
        + '; '.join(parts) + hint


def _as_dtype_of(array: np.ndarray, param):
    if array.dtype.name == str(param.dtype).split('.')[-1]:
        return array
    return paddle.to_tensor(array).astype(param.dtype)  # also covers bfloat16, which numpy lacks


# (state dict as read, the model's keys) -> (state dict in the model's names and layout, layout name)
Convert = Callable[[Dict[str, np.ndarray], Iterable[str]], Tuple[Dict[str, np.ndarray], str]]


def load_weights(model: paddle.nn.Layer, path: str, *, key: Optional[str] = None, convert: Optional[Convert] = None,
                 skip_if_mismatched: Sequence[str] = (), content: Any = None) -> dict:
    """Load the weight file at `path` into `model`, checking every name and shape.

    Args:
        key: checkpoint entry to load (e.g. 'model_ema'); see `state_dict_from`.
        convert: the model family's key filter (e.g. models.cvt_weights.checkpoint_filter_fn); without
            it the file must use the model's own names ('paddle' layout).
        skip_if_mismatched: see `apply_state_dict`.
        content: the file as `read_weight_file` returned it, when the caller has read it already.

    Returns:
        A report: path, format, loaded (count), skipped (names).
    """
    state_dict = state_dict_from(read_weight_file(path) if content is None else content, path, key)
    return apply_state_dict(model, state_dict, path=path, convert=convert, skip_if_mismatched=skip_if_mismatched)


def apply_state_dict(model: paddle.nn.Layer, state_dict: Dict[str, np.ndarray], *, path: str,
                     convert: Optional[Convert] = None, skip_if_mismatched: Sequence[str] = ()) -> dict:
    """Load the in-memory `state_dict` (read from `path`, which errors and logs name) into `model`, checking
    every name and shape.

    Args:
        convert: as for `load_weights`.
        skip_if_mismatched: prefixes left at their initial values when some key under them differs in
            shape from the model (fine-tuning: re-initialise the head only when the class count changes);
            each skipped key is logged.

    Returns:
        A report: path, format, loaded (count), skipped (names).
    """
    expected = model.state_dict()
    try:
        weights, fmt = convert(state_dict, expected.keys()) if convert else (state_dict, 'paddle')
    except ValueError as err:  # conversion errors name keys; add the file
        raise ValueError(f'{path}: {err}') from None
    skip = tuple(p for p in skip_if_mismatched if any(
        k.startswith(p) and k in expected and tuple(v.shape) != tuple(expected[k].shape) for k, v in weights.items()))
    skipped = [k for k in dict.fromkeys([*expected, *weights]) if k.startswith(skip)]
    for name in skipped:
        prefix = next(p for p in skip if name.startswith(p))
        file_shape = list(weights[name].shape) if name in weights else 'absent'
        model_shape = list(expected[name].shape) if name in expected else 'absent'
        logger.info("%s: re-initialising '%s' (prefix '%s' differs in shape; file %s, model %s)", path, name,
                    prefix, file_shape, model_shape)
    kept = {k for k in {*expected, *weights} if not k.startswith(skip)}
    missing = [k for k in expected if k in kept and k not in weights]
    unexpected = [k for k in weights if k in kept and k not in expected]
    mismatched = [(k, v.shape, tuple(expected[k].shape)) for k, v in weights.items()
                  if k in kept and k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if mismatched or missing or unexpected:
        raise ValueError(_mismatch_message(path, len(weights), len(expected), mismatched, missing, unexpected))
    loadable = {k: _as_dtype_of(v, expected[k]) for k, v in weights.items() if k in kept}
    # Skipped entries keep their values; passing them back silences Paddle's per-key warning.
    model.set_state_dict({**expected, **loadable})
    logger.info('%s: loaded %d tensors (%s layout)', path, len(loadable), fmt)
    return dict(path=path, format=fmt, loaded=len(loadable), skipped=skipped)


def to_numpy(obj: Any) -> Any:
    """Tensors -> numpy arrays (bfloat16 widened to float32, which numpy lacks), recursively."""
    if isinstance(obj, paddle.Tensor):
        return (obj.astype('float32') if obj.dtype == paddle.bfloat16 else obj).numpy()
    if isinstance(obj, dict):
        return {k: to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_numpy(v) for v in obj)
    return obj


def save_checkpoint(state: Dict[str, Any], path: str) -> None:
    """Write `state` atomically and durably: a crash or power loss mid-write leaves the previous file intact."""
    with atomic_write(path) as tmp:
        paddle.save(to_numpy(state), tmp)


def save_state_dict(state_dict: dict, path: str) -> None:
    """Write {name: Tensor or array} as a `.pdparams` file atomically (temp file + rename)."""
    save_checkpoint(dict(state_dict), path)

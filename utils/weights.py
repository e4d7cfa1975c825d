"""The one weight loader: read any published CvT checkpoint, convert it to this repo's layout, load it strictly.

Sources: official microsoft/CvT `.pth` (https://github.com/microsoft/CvT), Hugging Face transformers
CvT (`pytorch_model.bin` / `.safetensors`), PaddleClas `.pdparams` (same names as ours), and this
repo's own state dicts and training checkpoints. Nothing here needs torch; pickles are read safely.
"""
import logging
import os
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import paddle

from utils.download import download_url
from utils.torch_pickle import load_checkpoint

logger = logging.getLogger(__name__)

# Known public weights per model, found in the sources named. The first entry of each model is
# what the bare model name resolves to; 'name.source' picks another (e.g. 'cvt_13_384x384.hf_in22k').
# Hugging Face: the microsoft/cvt-* repositories that transformers' CvT docs and tests use
# (`*-22k`: ImageNet-22k pre-trained, ImageNet-1k fine-tuned). PaddleClas: MODEL_URLS in
# ppcls/arch/backbone/model_zoo/cvt.py; CvT_W24_384 always loads with
# use_imagenet22kto1k_pretrained=True, which ppcls/utils/save_load.py turns into '_22kto1k_pretrained'.
PRETRAINED_URLS: Dict[str, Dict[str, str]] = {
    'cvt_13_224x224': {
        'hf': 'https://huggingface.co/microsoft/cvt-13/resolve/main/pytorch_model.bin',
        'paddleclas': 'https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/CvT_13_224_pretrained.pdparams',
    },
    'cvt_13_384x384': {
        'hf': 'https://huggingface.co/microsoft/cvt-13-384/resolve/main/pytorch_model.bin',
        'hf_in22k': 'https://huggingface.co/microsoft/cvt-13-384-22k/resolve/main/pytorch_model.bin',
        'paddleclas': 'https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/CvT_13_384_pretrained.pdparams',
    },
    'cvt_21_224x224': {
        'hf': 'https://huggingface.co/microsoft/cvt-21/resolve/main/pytorch_model.bin',
        'paddleclas': 'https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/CvT_21_224_pretrained.pdparams',
    },
    'cvt_21_384x384': {
        'hf': 'https://huggingface.co/microsoft/cvt-21-384/resolve/main/pytorch_model.bin',
        'hf_in22k': 'https://huggingface.co/microsoft/cvt-21-384-22k/resolve/main/pytorch_model.bin',
        'paddleclas': 'https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/CvT_21_384_pretrained.pdparams',
    },
    'cvt_w24_384x384': {
        'hf_in22k': 'https://huggingface.co/microsoft/cvt-w24-384-22k/resolve/main/pytorch_model.bin',
        'paddleclas_in22k':
            'https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/CvT_W24_384_22kto1k_pretrained.pdparams',
    },
}

# Containers a checkpoint may wrap its state dict in, tried in this order when no key is given
# (this repo: 'model'/'model_ema'; official training checkpoints: 'state_dict', with 'model' a name).
_CONTAINER_KEYS = ('model', 'state_dict', 'module')

# Hugging Face CvT name prefixes -> official ones (transformers' modeling_cvt.py and its conversion script).
_HF_STAGE_PREFIXES = (  # inside '[cvt.]encoder.stages.{i}.'
    ('embedding.convolution_embeddings.projection.', 'patch_embed.proj.'),
    ('embedding.convolution_embeddings.normalization.', 'patch_embed.norm.'),
    ('cls_token', 'cls_token'),
)
_HF_LAYER_PREFIXES = (  # inside 'encoder.stages.{i}.layers.{j}.'
    ('attention.attention.convolution_projection_query.convolution_projection.convolution.', 'attn.conv_proj_q.conv.'),
    ('attention.attention.convolution_projection_query.convolution_projection.normalization.', 'attn.conv_proj_q.bn.'),
    ('attention.attention.convolution_projection_key.convolution_projection.convolution.', 'attn.conv_proj_k.conv.'),
    ('attention.attention.convolution_projection_key.convolution_projection.normalization.', 'attn.conv_proj_k.bn.'),
    ('attention.attention.convolution_projection_value.convolution_projection.convolution.', 'attn.conv_proj_v.conv.'),
    ('attention.attention.convolution_projection_value.convolution_projection.normalization.', 'attn.conv_proj_v.bn.'),
    ('attention.attention.projection_query.', 'attn.proj_q.'),
    ('attention.attention.projection_key.', 'attn.proj_k.'),
    ('attention.attention.projection_value.', 'attn.proj_v.'),
    ('attention.output.dense.', 'attn.proj.'),
    ('intermediate.dense.', 'mlp.fc1.'),
    ('output.dense.', 'mlp.fc2.'),
    ('layernorm_before.', 'norm1.'),
    ('layernorm_after.', 'norm2.'),
)
_HF_TOP_PREFIXES = (('layernorm.', 'norm.'), ('classifier.', 'head.'))
_HF_STAGE = re.compile(r'^(?:cvt\.)?encoder\.stages\.(\d+)\.(.+)$')
_HF_LAYER = re.compile(r'^layers\.(\d+)\.(.+)$')


def pretrained_tags() -> List[str]:
    """Every tag `load_weights` resolves: bare model names and 'model.source'."""
    return [tag for model, urls in PRETRAINED_URLS.items() for tag in [model] + [f'{model}.{s}' for s in urls]]


def _tag_url(tag: str) -> Optional[str]:
    model, _, source = tag.partition('.')
    if model not in PRETRAINED_URLS:
        return None
    urls = PRETRAINED_URLS[model]
    if not source:
        return next(iter(urls.values()))
    if source not in urls:
        known = ', '.join(f'{model}.{s}' for s in urls)
        raise ValueError(f"{tag}: unknown weights tag for '{model}'; known: {model} (default), {known}")
    return urls[source]


def resolve_source(source: str, cache_dir: Optional[str] = None, sha256: Optional[str] = None) -> str:
    """Local path of `source`: a file as is, an http(s) URL or a known tag downloaded into the cache."""
    if os.path.isfile(source):
        return source
    if source.startswith(('http://', 'https://')):
        return download_url(source, cache_dir=cache_dir, sha256=sha256)
    url = _tag_url(source)
    if url is not None:
        return download_url(url, cache_dir=cache_dir, sha256=sha256)
    raise FileNotFoundError(f"{source}: no such file, nor an http(s) URL or a known weights tag "
                            f"({', '.join(PRETRAINED_URLS)}, optionally '.<source>')")


def _is_safetensors(path: str) -> bool:
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


def read_state_dict(path: str, key: Optional[str] = None) -> Dict[str, np.ndarray]:
    """Read a weight file (torch zip/legacy, safetensors, paddle pickle) into {name: array}.

    Args:
        key: entry of a checkpoint to use (e.g. 'model_ema'); by default a bare state dict is used
            as is, else the first of 'model', 'state_dict', 'module' that holds one.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: no such file')
    obj = _read_safetensors(path) if _is_safetensors(path) else load_checkpoint(path)
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            raise KeyError(f"{path}: no entry '{key}' (top-level entries: {_describe_keys(obj)})")
        obj = obj[key]
    elif isinstance(obj, dict) and not _is_state_dict(obj):
        obj = next((obj[name] for name in _CONTAINER_KEYS if _is_state_dict(obj.get(name))), obj)
    if not _is_state_dict(obj):
        where = f"entry '{key}'" if key is not None else 'file'
        raise ValueError(f'{path}: {where} holds no state dict of arrays (top-level entries: '
                         f'{_describe_keys(obj)}); pass key= to pick one')
    return dict(obj)


def _hf_to_official(sd: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    out, unknown = {}, []
    for name, value in sd.items():
        new = _hf_name_to_official(name)
        if new is None:
            unknown.append(name)
        else:
            out[new] = value
    if unknown:
        raise ValueError(f'unknown Hugging Face CvT keys: {", ".join(repr(k) for k in unknown[:5])}')
    return out


def _hf_name_to_official(name: str) -> Optional[str]:
    for hf, ours in _HF_TOP_PREFIXES:
        if name.startswith(hf):
            return ours + name[len(hf):]
    stage = _HF_STAGE.match(name)
    if not stage:
        return None
    index, rest = stage.groups()
    layer = _HF_LAYER.match(rest)
    table, prefix = _HF_STAGE_PREFIXES, f'stage{index}.'
    if layer:
        table, prefix, rest = _HF_LAYER_PREFIXES, f'stage{index}.blocks.{layer.group(1)}.', layer.group(2)
    for hf, ours in table:
        if rest.startswith(hf):
            return prefix + ours + rest[len(hf):]
    return None


def _official_to_paddle(sd: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    out = {}
    for name, value in sd.items():
        if name.endswith('.num_batches_tracked'):
            continue  # Paddle's BatchNorm keeps no step counter
        name = re.sub(r'\.running_mean$', '._mean', name)
        name = re.sub(r'\.running_var$', '._variance', name)
        if name.endswith('.weight') and value.ndim == 2:
            value = value.T  # every 2-D weight in CvT is a Linear: torch [out, in] -> Paddle [in, out]
        out[name] = np.ascontiguousarray(value)
    return out


def _strip_prefix(sd: Dict[str, np.ndarray], prefix: str) -> Dict[str, np.ndarray]:
    if sd and all(k.startswith(prefix) for k in sd):
        return {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def detect_format(keys: Iterable[str], model_keys: Optional[Iterable[str]] = None) -> str:
    """'hf' (transformers), 'official' (microsoft/CvT torch names) or 'paddle' (PaddleClas / this repo)."""
    keys = list(keys)
    if any(_HF_STAGE.match(k) for k in keys):
        return 'hf'
    if any(k.endswith(('.running_mean', '.running_var', '.num_batches_tracked')) for k in keys):
        return 'official'
    model_keys = set(model_keys or ())
    if any(k.endswith(('._mean', '._variance')) or k in model_keys for k in keys):
        return 'paddle'
    raise ValueError(f'unrecognised weight layout, first unknown keys: {", ".join(repr(k) for k in keys[:3])} '
                     '(expected official CvT, Hugging Face CvT or Paddle CvT names)')


def _convert(sd: Dict[str, np.ndarray], model_keys=None) -> Tuple[Dict[str, np.ndarray], str]:
    sd = _strip_prefix(sd, 'module.')  # DistributedDataParallel wrapper
    fmt = detect_format(sd, model_keys)
    if fmt == 'hf':
        sd = _official_to_paddle(_hf_to_official(sd))
    elif fmt == 'official':
        sd = _official_to_paddle(sd)
    return sd, fmt


def convert_state_dict(sd: Dict[str, np.ndarray], model_keys: Optional[Iterable[str]] = None
                       ) -> Dict[str, np.ndarray]:
    """Convert a state dict from any supported source to this repo's names and Paddle layout.

    Args:
        model_keys: the target model's keys; lets a partial Paddle state dict without BatchNorm
            statistics still be recognised.
    """
    return _convert(sd, model_keys)[0]


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
        hint = " (another class count: match num_classes, or skip=('head.',) to re-initialise the classifier)"
    return f'{path}: does not match the model ({n_file} tensors in file, {n_model} in model): ' \
           + '; '.join(parts) + hint


def _as_dtype_of(array: np.ndarray, param):
    if array.dtype.name == str(param.dtype).split('.')[-1]:
        return array
    return paddle.to_tensor(array).astype(param.dtype)  # also covers bfloat16, which numpy lacks


def load_weights(model: paddle.nn.Layer, source: str, *, key: Optional[str] = None, skip: Sequence[str] = (),
                 skip_if_mismatched: Sequence[str] = (), strict: bool = True, cache_dir: Optional[str] = None,
                 sha256: Optional[str] = None) -> dict:
    """Load weights from a path, an http(s) URL or a known tag into `model`, checking every name and shape.

    Args:
        key: checkpoint entry to load (e.g. 'model_ema'); see `read_state_dict`.
        skip: name prefixes left at their initial values (e.g. ('head.',) to fine-tune to another
            class count); each skipped key is logged.
        skip_if_mismatched: prefixes skipped only when some key under them differs in shape from the
            model (fine-tuning: re-initialise the head only when the class count changes).
        strict: raise on missing or unexpected keys (shape mismatches always raise).

    Returns:
        A report: source, path, format, loaded (count), skipped, missing, unexpected (names).
    """
    path = resolve_source(source, cache_dir=cache_dir, sha256=sha256)
    expected = model.state_dict()
    state_dict = read_state_dict(path, key=key)
    try:
        weights, fmt = _convert(state_dict, expected.keys())
    except ValueError as err:  # conversion errors name keys; add the file
        raise ValueError(f'{path}: {err}') from None
    mismatched_prefixes = [p for p in skip_if_mismatched if any(
        k.startswith(p) and k in expected and tuple(v.shape) != tuple(expected[k].shape) for k, v in weights.items())]
    skip = tuple(skip) + tuple(mismatched_prefixes)
    skipped = [k for k in dict.fromkeys([*expected, *weights]) if k.startswith(skip)]
    kept = {k for k in {*expected, *weights} if not k.startswith(skip)}
    for name in skipped:
        prefix = next(p for p in skip if name.startswith(p))
        file_shape = list(weights[name].shape) if name in weights else 'absent'
        model_shape = list(expected[name].shape) if name in expected else 'absent'
        logger.info("%s: skipping '%s' (skip prefix '%s'; file %s, model %s)", path, name, prefix,
                    file_shape, model_shape)
    missing = [k for k in expected if k in kept and k not in weights]
    unexpected = [k for k in weights if k in kept and k not in expected]
    mismatched = [(k, v.shape, tuple(expected[k].shape)) for k, v in weights.items()
                  if k in kept and k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if mismatched or (strict and (missing or unexpected)):
        raise ValueError(_mismatch_message(path, len(weights), len(expected), mismatched, missing, unexpected))
    if missing or unexpected:
        logger.warning('%s: loaded non-strictly; missing %s; unexpected %s', path, _listed(missing) or 'none',
                       _listed(unexpected) or 'none')
    loadable = {k: _as_dtype_of(v, expected[k]) for k, v in weights.items() if k in kept and k in expected}
    # Skipped and missing entries keep their values; passing them back silences Paddle's per-key warning.
    model.set_state_dict({**expected, **loadable})
    logger.info('%s: loaded %d tensors (%s layout)', path, len(loadable), fmt)
    return dict(source=source, path=path, format=fmt, loaded=len(loadable), skipped=skipped, missing=missing,
                unexpected=unexpected)


def save_state_dict(state_dict: dict, path: str) -> None:
    """Write {name: Tensor or array} as a `.pdparams` file atomically (temp file + rename)."""
    from .checkpoint import save_checkpoint
    save_checkpoint(dict(state_dict), path)

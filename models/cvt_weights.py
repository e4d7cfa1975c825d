"""CvT's released weights: where each variant's weights are published, and how their key names map to ours.

Kept beside the model as timm keeps `default_cfgs` and `checkpoint_filter_fn` with it; the generic reading,
strict loading and saving live in `utils/weights.py`. Sources: official microsoft/CvT `.pth`
(https://github.com/microsoft/CvT), Hugging Face transformers CvT (`pytorch_model.bin` / `.safetensors`),
PaddleClas `.pdparams` (same names as ours), and this repo's own state dicts and training checkpoints.
"""
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import paddle

from utils import weights
from utils.download import DownloadError, cache_path, download_url

from .cvt import _ARCH
from .registry import list_models

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


def _tag_url(tag: str) -> Optional[str]:
    """The URL a known tag stands for, None when `tag` names no model of the table."""
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


def _offline_hint(tag: str, url: str, reason: str) -> str:
    """What to do when a tag cannot be downloaded: the file to fetch by hand and the two ways to use it."""
    model = tag.partition('.')[0]
    file_name = url.rsplit('/', 1)[-1]
    others = [f'{model}.{s} ({u})' for s, u in PRETRAINED_URLS[model].items() if u != url]
    # No flag named: the tag came from --pretrained, --finetune or --resume, whichever the script has.
    lines = [f'{tag}: cannot download {url} ({reason}). Fetch that file on a machine with network access, then either',
             f'  put it at {cache_path(url)} (then the tag {tag} works offline), or',
             f'  run python tools/convert_weights.py {file_name} {model}.pdparams --model {model} '
             f'and give {model}.pdparams in place of the tag']
    if others:
        lines.append(f'other sources of {model}: {", ".join(others)}')
    lines.append('every tag, URL and cache path: python tools/convert_weights.py --list')
    return '\n'.join(lines)


def resolve_source(source: str) -> str:
    """Local path of `source`: a file as is, an http(s) URL or a known tag downloaded into the cache."""
    if os.path.isfile(source):
        return source
    if source.startswith(('http://', 'https://')):
        return download_url(source)
    url = _tag_url(source)
    if url is None:
        raise FileNotFoundError(f"{source}: no such file, nor an http(s) URL or a known weights tag "
                                f"({', '.join(PRETRAINED_URLS)}, optionally '.<source>')")
    try:
        return download_url(url)
    except DownloadError as err:
        raise ConnectionError(_offline_hint(source, url, err.reason)) from None


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


def checkpoint_filter_fn(sd: Dict[str, np.ndarray], model_keys: Iterable[str] = ()
                         ) -> Tuple[Dict[str, np.ndarray], str]:
    """(state dict in this repo's names and Paddle layout, the layout it came in: 'hf', 'official' or 'paddle')."""
    sd = _strip_prefix(sd, 'module.')  # DistributedDataParallel wrapper
    fmt = detect_format(sd, model_keys)
    if fmt == 'hf':
        sd = _official_to_paddle(_hf_to_official(sd))
    elif fmt == 'official':
        sd = _official_to_paddle(sd)
    return sd, fmt


def load_weights(model: paddle.nn.Layer, source: str, *, key: Optional[str] = None,
                 skip_if_mismatched: Sequence[str] = (), content: Any = None) -> dict:
    """Load CvT weights from a path, an http(s) URL or a known tag into `model`, checking every name and shape.

    `utils.weights.load_weights` with this file's tags and key conversion; see it for `key`,
    `skip_if_mismatched`, `content` (the file already read, by a caller that needs more of it) and the
    report returned.
    """
    path = resolve_source(source)
    try:
        report = weights.load_weights(model, path, key=key, convert=checkpoint_filter_fn,
                                      skip_if_mismatched=skip_if_mismatched, content=content)
    except ValueError:
        other = _other_model_in(path, model, key, content)
        if other is None:
            raise
        name = model.default_cfg.get('architecture', 'the model')
        raise ValueError(f'{path}: this checkpoint is {other[0]}, not {name}: pass --model {other[0]}'
                         + (f' (or {", ".join(other[1:])}, the same weights at another input size)'
                            if other[1:] else '')) from None
    return dict(report, source=source)


_BLOCK_KEY = re.compile(r'^stage(\d+)\.blocks\.(\d+)\.')


def _layout(state_dict: Dict[str, np.ndarray]) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """(blocks per stage, embedding width per stage) of a state dict in this repo's names."""
    blocks: Dict[int, int] = {}
    for name in state_dict:
        match = _BLOCK_KEY.match(name)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            blocks[stage] = max(blocks.get(stage, 0), block + 1)
    widths = tuple(int(state_dict[f'stage{i}.patch_embed.proj.weight'].shape[0]) for i in sorted(blocks)
                   if f'stage{i}.patch_embed.proj.weight' in state_dict)
    return tuple(blocks[i] for i in sorted(blocks)), widths


def _other_model_in(path: str, model: paddle.nn.Layer, key: Optional[str], content: Any = None) -> Optional[List[str]]:
    """The registered models whose layout a weight file that does not fit `model` has (the one its run
    recorded first), or None when the file has the model's own layout (a head or a key differs) or no
    registered one. `content`: the file as already read, if it was."""
    if content is None:
        content = weights.read_weight_file(path)
    try:
        held = _layout(checkpoint_filter_fn(weights.state_dict_from(content, path, key=key))[0])
    except ValueError:
        return None
    if held == _layout(model.state_dict()):
        return None
    families = [f for f, arch in _ARCH.items() if (tuple(arch['depths']), tuple(arch['dims'])) == held]
    names = [n for n in list_models() if any(n == f or n.startswith(f + '_') for f in families)]
    recorded = weights.recorded_run(path, content)[0].get('model')
    return sorted(names, key=lambda n: n != recorded) or None

"""What the scripts share: one-line errors (`run_main`), their parsers and weight flags, loading a model
for inference, finding and preprocessing images, and top-k results in PaddleClas's shape."""
import argparse
import glob
import json
import os
import sys
from typing import Callable, List, Optional, Sequence

import numpy as np
import paddle

from datasets.imagenet import IMG_EXTENSIONS, is_image_file, load_rgb, read_label_names
from datasets.transforms import resolve_data_cfg
from models import create_model
from utils.config import ArgumentParser, HelpFormatter
from utils.fileio import StorageError, atomic_write
from utils.logger import setup_console_logging
from utils.torch_pickle import load_checkpoint as read_checkpoint
from utils.weights import load_weights

# Errors a user can cause with input (missing files, bad YAML, wrong checkpoints, unknown names) or
# fix on the machine (a full disk, a read-only output folder).
USER_ERRORS = (ValueError, FileNotFoundError, KeyError, IsADirectoryError, NotADirectoryError, PermissionError,
               ConnectionError, StorageError)


def run_main(main: Callable[[Optional[Sequence[str]]], Optional[int]], argv: Optional[Sequence[str]] = None) -> None:
    """Run `main(argv)` with the scripts' log format set up; a user error becomes `error: <message>` on
    stderr and exit status 1.

    `--debug` anywhere in argv shows the full traceback instead.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_console_logging()
    try:
        code = main(argv)
    except USER_ERRORS as e:
        if '--debug' in argv:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f'error: {message}', file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
IMAGENET_LABELS = os.path.join(REPO_ROOT, 'datasets', 'imagenet1k_label_list.txt')
NO_WEIGHTS_HINT = ('no weights given: pass --resume CKPT (a checkpoint written by train.py) or --pretrained SRC '
                   '(a tag such as cvt_13_224x224, a URL, or a .pdparams file made by tools/convert_weights.py)')


def script_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """Parser whose description is the first paragraph of the script's docstring; defaults shown when set."""
    summary = ' '.join(doc.strip().split('\n\n')[0].split())
    return ArgumentParser(prog=prog, description=summary, formatter_class=HelpFormatter, allow_abbrev=False)


def add_weight_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """--model, --resume/--pretrained, --use_ema and --num_classes, as eval/predict/export share them."""
    group = parser.add_argument_group('model and weights')
    group.add_argument('--model', required=required, help='registered model name, e.g. cvt_13_224x224')
    source = group.add_mutually_exclusive_group()
    source.add_argument('--resume', metavar='CKPT', help='checkpoint of this repo (train.py output) or .pdparams')
    source.add_argument('--pretrained', metavar='SRC',
                        help='pretrained tag, URL or weights file (official .pth, HF, PaddleClas)')
    group.add_argument('--use_ema', action='store_true', help="load the checkpoint's EMA weights ('model_ema')")
    group.add_argument('--num_classes', type=int, default=None,
                       help="classifier size when it differs from the variant's (default: the variant's)")


def run_args_for(checkpoint: str) -> dict:
    """The training run's resolved settings stored in a train.py checkpoint (its 'args' entry), or {}.

    A checkpoint carries its run's class count and eval preprocessing this way, so eval, predict and
    export use what training used without repeating flags, whatever the file is called or where it lies.
    """
    if not checkpoint.endswith('.pd') or not os.path.isfile(checkpoint):
        return {}
    state = read_checkpoint(checkpoint)
    args = state.get('args') if isinstance(state, dict) else None
    return args if isinstance(args, dict) else {}


def load_model(name: str, resume: Optional[str] = None, pretrained: Optional[str] = None,
               use_ema: bool = False, num_classes: Optional[int] = None):
    """Create `name`, load its weights strictly (EMA copy with `use_ema`) and switch to eval mode.

    With a train.py checkpoint, its run's num_classes and eval preprocessing (input_size, crop_pct,
    interpolation) become the model's defaults unless given here or by flags later.
    """
    if not (resume or pretrained):
        raise ValueError(NO_WEIGHTS_HINT)
    run_args = run_args_for(resume) if resume else {}
    num_classes = num_classes or run_args.get('num_classes')
    model = create_model(name, **({'num_classes': num_classes} if num_classes else {}))
    load_weights(model, resume or pretrained, key='model_ema' if use_ema else None)
    if run_args:
        model.default_cfg.update(resolve_data_cfg(model.default_cfg, input_size=run_args.get('input_size'),
                                                  crop_pct=run_args.get('crop_pct'),
                                                  interpolation=run_args.get('interpolation')))
    model.eval()
    return model


def check_amp(amp: bool) -> None:
    """AMP is a GPU feature in Paddle: on CPU autocast runs in fp32, so say so once and go on."""
    if amp and not paddle.is_compiled_with_cuda():
        print('note: --amp has no effect on a CPU build of Paddle (autocast stays fp32)', file=sys.stderr)


def find_images(inputs: Sequence[str]) -> List[str]:
    """Image files from paths, folders (recursive, any-case image extensions) and glob patterns, in order.

    A file named explicitly is kept whatever its extension (decoding decides); folders and globs keep
    only image extensions.
    """
    found: List[str] = []
    for item in inputs:
        if os.path.isdir(item):
            files = sorted(os.path.join(root, name) for root, _, names in os.walk(item)
                           for name in names if is_image_file(name))
            if not files:
                raise ValueError(f'{item}: folder has no images (looked recursively for {", ".join(IMG_EXTENSIONS)}, '
                                 f'any case)')
        elif os.path.isfile(item):
            files = [item]
        elif glob.has_magic(item):
            files = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p) and is_image_file(p))
            if not files:
                raise FileNotFoundError(f'{item}: pattern matches no image files')
        else:
            raise FileNotFoundError(f'{item}: no such file or folder')
        found += files
    return list(dict.fromkeys(found))  # a file named twice is predicted once


def read_image(path: str):
    """RGB PIL image; an unreadable or non-image file raises one line naming it."""
    try:
        return load_rgb(path)
    # PIL reports undecodable data with several exception types (OSError, SyntaxError, ValueError, ...)
    except Exception as exc:  # noqa: BLE001
        detail = str(exc).strip().splitlines()
        reason = f'{type(exc).__name__}: {detail[0]}' if detail else type(exc).__name__
        raise ValueError(f'{path}: not a readable image ({reason})') from None


def batches(items: Sequence, batch_size: int) -> List[Sequence]:
    if batch_size < 1:
        raise ValueError(f'--batch_size must be >= 1, got {batch_size}')
    return [items[start:start + batch_size] for start in range(0, len(items), batch_size)]


def preprocess(paths: Sequence[str], transform: Callable) -> np.ndarray:
    """(N, 3, H, W) float32 batch of `transform(image)` for each path."""
    return np.stack([transform(read_image(p)) for p in paths]).astype(np.float32, copy=False)


def label_names_for(num_classes: int, label_list: Optional[str] = None) -> Optional[List[str]]:
    """Class names from `label_list`, else the repo's ImageNet list for 1000 classes, else None."""
    path = label_list or (IMAGENET_LABELS if num_classes == 1000 else None)
    if path is None:
        return None
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: label list not found')
    names = read_label_names(path)
    if len(names) != num_classes:
        raise ValueError(f'{path}: {len(names)} labels, expected {num_classes} (the model\'s num_classes)')
    return names


def topk_results(probs: np.ndarray, file_names: Sequence[str], topk: int,
                 label_names: Optional[Sequence[str]] = None) -> List[dict]:
    """PaddleClas-style records: class_ids, scores (5 decimals), file_name, label_names (empty without labels)."""
    if topk < 1:
        raise ValueError(f'--topk must be >= 1, got {topk}')
    k = min(topk, probs.shape[1])
    ids = np.argsort(-probs, axis=1, kind='stable')[:, :k]
    results = []
    for row, name, top in zip(probs, file_names, ids):
        results.append({
            'class_ids': [int(i) for i in top],
            'scores': [round(float(row[i]), 5) for i in top],
            'file_name': name,
            'label_names': [label_names[i] for i in top] if label_names else [],
        })
    return results


def report(result, output_json: Optional[str] = None) -> None:
    """Print `result` as the script's closing JSON line and, when asked, write it to `output_json`."""
    print(json.dumps(result, ensure_ascii=False))
    if output_json:
        write_json(output_json, result)


def write_json(path: str, obj) -> None:
    """Write `obj` as indented JSON, atomically and durably."""
    with atomic_write(path) as tmp, open(tmp, 'w', encoding='utf-8') as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write('\n')

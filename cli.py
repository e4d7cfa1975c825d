"""What the scripts share: one-line errors (`run_main`, from utils.entrypoint), their parsers and weight
flags, loading a model for inference, finding and preprocessing images, and classifying them into top-k
results in PaddleClas's shape, shown as a table on a terminal and as JSON elsewhere."""
import utils.env  # noqa: F401  (first: CPU threads, quiet paddle import)

import argparse
import glob
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import paddle
from tqdm import tqdm

from datasets.imagenet import IMG_EXTENSIONS, is_image_file, load_rgb, read_label_names
from datasets.transforms import resolve_data_cfg
from models import create_model, load_weights, resolve_source
from utils.config import ArgumentParser, HelpFormatter
from utils.entrypoint import run_main  # noqa: F401  (the scripts' entry, taken from here with the rest)
from utils.fileio import atomic_write
from utils.weights import recorded_run

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
IMAGENET_LABELS = os.path.join(REPO_ROOT, 'datasets', 'imagenet1k_label_list.txt')
NO_WEIGHTS_HINT = ('no weights given: pass --resume CKPT (a checkpoint written by train.py) or --pretrained SRC '
                   '(a tag such as cvt_13_224x224, a URL, or a .pdparams file made by tools/convert_weights.py)')


def script_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """Parser whose description is the first paragraph of the script's docstring; defaults shown when set."""
    summary = ' '.join(doc.strip().split('\n\n')[0].split())
    return ArgumentParser(prog=prog, description=summary, formatter_class=HelpFormatter, allow_abbrev=False)


def add_weight_args(parser: argparse.ArgumentParser) -> None:
    """--model, --resume/--pretrained, --use_ema and --num_classes, as eval/predict/export share them."""
    group = parser.add_argument_group('model and weights')
    group.add_argument('--model', help='registered model name, e.g. cvt_13_224x224 (default: the model a train.py '
                                       'checkpoint records)')
    source = group.add_mutually_exclusive_group()
    source.add_argument('--resume', metavar='CKPT', help='checkpoint of this repo (train.py output) or .pdparams')
    source.add_argument('--pretrained', metavar='SRC',
                        help='pretrained tag, URL or weights file (official .pth, HF, PaddleClas)')
    group.add_argument('--use_ema', action='store_true', help="load the checkpoint's EMA weights ('model_ema')")
    group.add_argument('--num_classes', type=int, default=None,
                       help="classifier size when it differs from the variant's (default: the variant's)")


def load_model(name: Optional[str], resume: Optional[str] = None, pretrained: Optional[str] = None,
               use_ema: bool = False, num_classes: Optional[int] = None):
    """Create `name` (default: the model a train.py checkpoint records), load its weights strictly (EMA copy
    with `use_ema`) and switch to eval mode; `model.default_cfg['architecture']` names it.

    A train.py checkpoint means the same whichever of `resume`/`pretrained` names it: its run's num_classes
    and eval preprocessing (input_size, crop_pct, interpolation) become the model's, unless given here
    (num_classes) or by flags later (the protocol). `model.class_names` is its training data's class names
    by label id (None for weights without them, e.g. released ones).
    """
    if not (resume or pretrained):
        raise ValueError(NO_WEIGHTS_HINT)
    path = resolve_source(resume or pretrained)
    run_args, class_names = recorded_run(path)
    name = name or run_args.get('model')
    if not name:
        raise ValueError(f'--model is required: {resume or pretrained} does not record its model (train.py '
                         f'checkpoints do); e.g. --model cvt_13_224x224')
    num_classes = num_classes or run_args.get('num_classes')
    model = create_model(name, **({'num_classes': num_classes} if num_classes else {}))
    load_weights(model, path, key='model_ema' if use_ema else None)
    if run_args:
        model.default_cfg.update(resolve_data_cfg(model.default_cfg, **{
            k: run_args.get(k) for k in ('input_size', 'crop_pct', 'interpolation')}))
    model.class_names = class_names
    model.eval()
    return model


def check_amp(amp: bool) -> None:
    """AMP is a GPU feature in Paddle: on CPU autocast runs in fp32, so say so once and go on."""
    if amp and not paddle.is_compiled_with_cuda():
        print('note: --amp has no effect on a CPU build of Paddle (autocast stays fp32)', file=sys.stderr)


IMAGES_HELP = 'image files, folders (searched recursively) or glob patterns'


def add_image_args(group, required: bool = True, help: str = IMAGES_HELP) -> None:
    """--images PATH ..., as predict.py, infer.py and tools/check_export.py share it.

    The reference repos' spellings stay as aliases: --infer_imgs (PaddleClas predict) and --input_file
    (PaddleClas deploy).
    """
    group.add_argument('--images', '--infer_imgs', '--input_file', dest='images', nargs='+', required=required,
                       metavar='PATH', help=help)


def add_result_args(group) -> None:
    """--topk, --json, --output_json and --strict, as predict.py and infer.py share them."""
    group.add_argument('--topk', type=int, default=5, help='classes reported per image')
    group.add_argument('--json', action='store_true',
                       help='print the JSON list instead of the table on a terminal (piped output is always JSON)')
    group.add_argument('--output_json', metavar='FILE', help='also write all results here as JSON')
    group.add_argument('--strict', action='store_true',
                       help='stop at the first unreadable image (default: skip it, list it on stderr, count it)')


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


# ImageNet-1k's class folders: 1000 WordNet ids whose sorted order is the official label order (that of
# IMAGENET_LABELS), from n01440764 (tench) to n15075141 (toilet tissue). The repo ships no full wnid list;
# another 1000 wnids (an ImageNet-21k subset) would not start and end with these two.
WNID = re.compile(r'n\d{8}')
IMAGENET_FIRST_LAST_WNIDS = ('n01440764', 'n15075141')


def is_imagenet_1k_folders(class_names: Sequence[str]) -> bool:
    return (len(class_names) == 1000 and (class_names[0], class_names[-1]) == IMAGENET_FIRST_LAST_WNIDS
            and all(WNID.fullmatch(name) for name in class_names))


def label_names_for(num_classes: int, label_list: Optional[str] = None,
                    class_names: Optional[Sequence[str]] = None) -> Optional[List[str]]:
    """Names to show for each class id: from `label_list` ('id name' lines), else the training data's
    `class_names` (a checkpoint's), else None; ImageNet's wnid folders, and 1000 classes without names,
    show the repo's ImageNet names."""
    if label_list is None and class_names is not None and not is_imagenet_1k_folders(class_names):
        if len(class_names) != num_classes:
            raise ValueError(f"the checkpoint's class_names has {len(class_names)} names, expected {num_classes} "
                             f"(the model's num_classes): pass --label_list FILE")
        return list(class_names)
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


@dataclass
class Classified:
    """What `classify_images` found: results of the readable files, and one 'FILE: reason' per skipped one."""
    results: List[dict]
    skipped: List[str]
    seconds: float  # wall time of the whole loop
    stage_seconds: Dict[str, float]  # preprocess / inference / postprocess


def classify_images(files: Sequence[str], transform: Callable, forward: Callable[[np.ndarray], object], *,
                    batch_size: int, topk: int, label_names: Optional[Sequence[str]] = None, strict: bool = False,
                    to_probs: Callable = np.asarray, warmup_runs: int = 0) -> Classified:
    """Top-k results for `files`, `batch_size` at a time: `to_probs(forward(batch))` gives the probabilities.

    An unreadable file is skipped and listed on stderr (`skipped FILE: reason`) unless `strict` or it is
    the only file, when its error is the error; when no file is readable that is an error too. A
    progress bar shows on a terminal (stderr) for more than one batch. `warmup_runs` calls of `forward`
    on the first batch precede the timed ones (for --benchmark).
    """
    chunks = batches(files, batch_size)
    strict = strict or len(files) == 1
    stages = {'preprocess': 0.0, 'inference': 0.0, 'postprocess': 0.0}
    results: List[dict] = []
    skipped: List[str] = []
    start = time.perf_counter()
    show_bar = sys.stderr.isatty() and len(chunks) > 1
    with tqdm(total=len(files), unit='img', file=sys.stderr, leave=False, disable=not show_bar) as bar:
        for chunk in chunks:
            began = time.perf_counter()
            images, readable = [], []
            for path in chunk:
                try:
                    images.append(transform(read_image(path)))
                    readable.append(path)
                except ValueError as exc:
                    if strict:
                        raise
                    skipped.append(str(exc))
                    tqdm.write(f'skipped {exc}', file=sys.stderr)
            bar.update(len(chunk))
            if not readable:
                continue
            batch = np.stack(images).astype(np.float32, copy=False)
            stages['preprocess'] += time.perf_counter() - began
            for _ in range(warmup_runs):
                forward(batch)
            warmup_runs = 0
            began = time.perf_counter()
            output = forward(batch)
            inferred = time.perf_counter()
            results += topk_results(to_probs(output), readable, topk, label_names)
            stages['inference'] += inferred - began
            stages['postprocess'] += time.perf_counter() - inferred
    if not results:
        raise ValueError(f'none of the {len(files)} images could be read (each is listed above as skipped)')
    return Classified(results, skipped, time.perf_counter() - start, stages)


def _short_label(result: dict, rank: int) -> str:
    """A label list's first name ('tench' of 'tench, Tinca tinca'), else the class id."""
    names = result['label_names']
    return names[rank].split(',')[0].strip() if names else str(result['class_ids'][rank])


def results_table(results: Sequence[dict]) -> List[str]:
    """Aligned rows: file, then `label score` per top-k class; a header row first."""
    k = max(len(r['class_ids']) for r in results)
    rows = [['file'] + [f'top-{i + 1}' for i in range(k)]]
    rows += [[r['file_name']] + [f'{_short_label(r, i)} {score:.3f}' for i, score in enumerate(r['scores'])]
             for r in results]
    widths = [max(len(row[col]) for row in rows if col < len(row)) for col in range(k + 1)]
    return ['  '.join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


def show_results(classified: Classified, *, json_requested: bool, output_json: Optional[str] = None,
                 notes: Sequence[str] = ()) -> None:
    """Results on stdout, then a one-line summary on stderr; all results also go to `output_json`.

    stdout gets the JSON list (its last line) when it is not a terminal, for one file, or when
    `json_requested`, else the table; `notes` (a benchmark line) go after the table or before the JSON.
    """
    results = classified.results
    num_files = len(results) + len(classified.skipped)
    as_json = json_requested or num_files == 1 or not sys.stdout.isatty()
    if as_json:
        for line in notes:
            print(line)
        report(results, output_json)
    else:
        print('\n'.join([*results_table(results), *notes]))
        if output_json:
            write_json(output_json, results)
    where = [place for place, used in (('on stdout', as_json), (f'in {output_json}', output_json)) if used]
    images = 'image' if len(results) == 1 else 'images'
    print(f'{len(results)} {images} classified, {len(classified.skipped)} skipped, in {classified.seconds:.1f} s '
          f'({len(results) / max(classified.seconds, 1e-9):.1f} img/s); '
          + (f'JSON {" and ".join(where)}' if where else 'JSON with --json or --output_json FILE'),
          file=sys.stderr, flush=True)


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

"""Classifying image files with any forward function (a dygraph model for predict.py, an exported predictor
for infer.py): finding and reading the images, batching them, top-k results in PaddleClas's shape, and
showing them as a table on a terminal and as JSON elsewhere."""
import glob
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from datasets.imagenet import IMG_EXTENSIONS, is_image_file, load_rgb
from utils.entrypoint import report
from utils.fileio import write_json


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

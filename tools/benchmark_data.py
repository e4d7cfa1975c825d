"""Data-pipeline throughput (images/s) of our train and eval transforms, next to timm's on the same JPEGs.

Tells data-bound from compute-bound: per worker, through build_loader with N workers, and against
timm's transforms as microsoft/CvT trains with them.

    python tools/benchmark_data.py                                        # ours only, generated photos
    python tools/benchmark_data.py --timm_python /tmp/torchref/bin/python --json data_bench.json
    python tools/benchmark_data.py --data_dir /data/imagenet --input_size 224 384 --workers 0 4 8

Per worker means one process without a DataLoader: decode, transform and stack a batch, then (train)
Mixup/CutMix on it on the CPU, i.e. the work of one loader worker plus the training step's batch
mixing (which GPU training does on the device: the per-image column leaves it out). The timm side
runs in a subprocess under --timm_python (a python with torch and timm) on the same files with the
same seeds; its passes alternate with ours, so both see the same load on a shared host.

The loader rows time whole passes of build_loader: uint8 or float32 through shared memory
(--transfer), persistent or, with --fresh_workers, new workers every pass, with the shared-memory
bytes per batch; timm's create_loader (uint8, persistent workers) is timed next to them.
"""
import _bootstrap  # noqa: F401  (first: repo root on sys.path, then utils.env)

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageEnhance

from utils.config import ArgumentParser, HelpFormatter  # paddle-free, as the timm side needs
from utils.entrypoint import report  # paddle-free too

# Everything below the imports above stays importable without paddle: the timm side runs this
# file under a python that has torch and timm but not our requirements.

# microsoft/CvT's ImageNet train recipe (timm transforms, bicubic) and its batch mixing.
RAND_AUGMENT = 'rand-m9-mstd0.5-inc1'
RE_PROB = 0.25
RE_MODE = 'pixel'
INTERPOLATION = 'bicubic'
MIXUP = dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, mode='batch',
             label_smoothing=0.1, num_classes=1000)
IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png')
LOADER_PASSES = 3  # epochs per loader measurement: the later ones show worker start-up or reuse
# the common ImageNet photo shapes (W, H), landscape twice as often as the others
PHOTO_SIZES = ((500, 375), (500, 375), (375, 500), (500, 333))
NUM_GENERATED_CLASSES = 4
# Upsampled crops are smoother than camera output; sensor-like grain and quality 95 bring the files
# to roughly ImageNet's size (~110 KB average), which sets the entropy-decoding cost.
GRAIN_STD = 4.0
JPEG_QUALITY = 95
REFERENCE_IMAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.pardir,
                               'shared', 'reference', 'ILSVRC2012_val_00020010.JPEG')


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(prog='tools/benchmark_data.py', description=__doc__.splitlines()[0],
                            formatter_class=HelpFormatter, allow_abbrev=False)
    data = parser.add_argument_group('data')
    data.add_argument('--data_dir', default=None,
                      help='ImageNet-layout folder to read (DATA_DIR/SPLIT/<class>/<images>); '
                           'default: generate ImageNet-size JPEGs in a temporary folder')
    data.add_argument('--split', default='train', help='split folder read under --data_dir')
    data.add_argument('--num_images', type=int, default=64,
                      help='distinct files used (generated, or spread over the split); batches cycle over them')
    run = parser.add_argument_group('measurement')
    run.add_argument('--input_size', type=int, nargs='+', default=[224],
                     help='train/eval sizes; the eval crop protocol is that of the registered model of this size')
    run.add_argument('--batch_size', type=int, default=32, help='images per batch (and per Mixup call)')
    run.add_argument('--iters', type=int, default=4, help='timed batches per pipeline and repeat')
    run.add_argument('--repeats', type=int, default=2, help='timed passes per pipeline; the best one counts')
    run.add_argument('--workers', type=int, nargs='*', default=[0, 1, 2],
                     help='build_loader num_workers values to time (none: skip the loader)')
    run.add_argument('--transfer', nargs='+', choices=('uint8', 'float32'), default=['uint8', 'float32'],
                     help='build_loader transfers to time: uint8 (normalised on the device), float32 (by the workers)')
    run.add_argument('--fresh_workers', action='store_true',
                     help='also time loaders that start new workers every pass (no persistent workers)')
    run.add_argument('--seed', type=int, default=0, help='seed of the generated images and of every timed pass')
    out = parser.add_argument_group('reference and output')
    out.add_argument('--timm_python', default=None,
                     help='python with torch + timm; its transforms are timed in a subprocess on the same files')
    out.add_argument('--json', default=None, help='also write the results to this JSON file')
    out.add_argument('--debug', action='store_true', help='full traceback on errors')
    # internal: run as the timm side (spec on stdin, results on stdout)
    parser.add_argument('--timm_worker', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ('num_images', 'batch_size', 'iters', 'repeats'):
        if getattr(args, name) < 1:
            raise ValueError(f'--{name}: expected a positive integer, found {getattr(args, name)}')
    if any(n < 0 for n in args.workers):
        raise ValueError(f'--workers: expected counts >= 0, found {args.workers}')
    if args.timm_python is not None and not os.path.isfile(args.timm_python):
        raise FileNotFoundError(f'{args.timm_python}: --timm_python not found (expected a python with torch and timm)')
    return args


# ---------------------------------------------------------------------------------------------
# Benchmark images


def _photo_variant(source: Image.Image, size: Tuple[int, int], rng: np.random.RandomState) -> Image.Image:
    """A random crop of `source` (40-100% of the area that fits `size`'s aspect ratio), maybe
    mirrored, with brightness and colour shifted, resized to `size`."""
    aspect = size[0] / size[1]
    full_w = min(source.width, source.height * aspect)
    side = np.sqrt(rng.uniform(0.4, 1.0))
    crop_w, crop_h = full_w * side, full_w * side / aspect
    left = rng.uniform(0, source.width - crop_w)
    top = rng.uniform(0, source.height - crop_h)
    img = source.resize(size, Image.Resampling.BICUBIC, box=(left, top, left + crop_w, top + crop_h))
    if rng.rand() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3))
    return _add_grain(ImageEnhance.Color(img).enhance(rng.uniform(0.6, 1.4)), rng)


def _add_grain(img: Image.Image, rng: np.random.RandomState, std: float = GRAIN_STD) -> Image.Image:
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, std, (img.height, img.width, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _smooth_noise(size: Tuple[int, int], rng: np.random.RandomState) -> Image.Image:
    """Blobs of colour (upsampled coarse noise) plus fine grain: compresses and decodes like a photo
    rather than like flat colour or white noise."""
    width, height = size
    coarse = rng.randint(0, 256, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    return _add_grain(Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC), rng)


def write_benchmark_images(out_dir: str, num_images: int, source: Optional[str] = None, seed: int = 0,
                           split: str = 'train') -> List[str]:
    """Write `num_images` ImageNet-size JPEGs to out_dir/split/<class>/ and return their paths.

    With `source` (a photo), each is a random crop/flip/colour variation of it; without, smooth noise.
    """
    rng = np.random.RandomState(seed)
    photo = None
    if source is not None:
        with Image.open(source) as img:
            photo = img.convert('RGB')
    paths = []
    for i in range(num_images):
        size = PHOTO_SIZES[rng.randint(len(PHOTO_SIZES))]
        img = _photo_variant(photo, size, rng) if photo is not None else _smooth_noise(size, rng)
        folder = os.path.join(out_dir, split, f'n{i % NUM_GENERATED_CLASSES:08d}')
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f'bench_{i:05d}.JPEG')
        img.save(path, quality=JPEG_QUALITY)
        paths.append(path)
    return paths


def list_images(split_dir: str, num_images: int) -> Tuple[List[str], List[int]]:
    """Up to `num_images` image paths spread evenly over the sorted class folders, and their labels."""
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f'{split_dir}: split folder not found (expected <data_dir>/<split>/<class>/<images>)')
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith('.'))
    paths, labels = [], []
    for label, name in enumerate(classes):
        for root, _, files in sorted(os.walk(os.path.join(split_dir, name))):
            found = sorted(f for f in files if f.lower().endswith(IMG_EXTENSIONS))
            paths += [os.path.join(root, f) for f in found]
            labels += [label] * len(found)
    if not paths:
        raise ValueError(f'{split_dir}: no images found (expected <class>/*.jpg|jpeg|png)')
    picks = np.linspace(0, len(paths) - 1, min(num_images, len(paths))).round().astype(int)
    return [paths[i] for i in picks], [labels[i] for i in picks]


def eval_protocol(size: int) -> Tuple[float, str]:
    """(crop_pct, crop_mode) of the first registered model with this input size, else the 224 protocol."""
    from models import get_model_cfg, list_models
    for name in list_models():
        cfg = get_model_cfg(name)
        if tuple(cfg['input_size'][-2:]) == (size, size):
            return cfg['crop_pct'], cfg['crop_mode']
    return 0.875, 'center'


# ---------------------------------------------------------------------------------------------
# Timing, shared by both sides


def time_pipeline(load: Callable, per_image: Callable, per_batch: Callable, paths: Sequence[str],
                  labels: Sequence[int], batch_size: int, iters: int) -> Dict[str, float]:
    """One warm-up batch, then `iters` timed batches of per_image(load(path)) and per_batch(list, labels).

    Returns wall-clock images/s (all stages, and per-image stages only), images per CPU-second of
    this process, and ms per batch spent in per_batch (stacking + mixing).
    """
    def batch_items(b: int) -> List[int]:
        return [(b * batch_size + i) % len(paths) for i in range(batch_size)]

    warmup = batch_items(0)
    per_batch([per_image(load(paths[i])) for i in warmup], [labels[i] for i in warmup])
    batch_time = 0.0
    wall_start, cpu_start = time.perf_counter(), time.process_time()
    for b in range(1, iters + 1):
        items = batch_items(b)
        arrays = [per_image(load(paths[i])) for i in items]
        start = time.perf_counter()
        per_batch(arrays, [labels[i] for i in items])
        batch_time += time.perf_counter() - start
    wall, cpu = time.perf_counter() - wall_start, time.process_time() - cpu_start
    n = iters * batch_size
    return dict(img_s=n / wall, image_img_s=n / (wall - batch_time), cpu_img_s=n / max(cpu, 1e-9),
                batch_ms=1000 * batch_time / iters)


def fastest(runs: List[Dict[str, float]]) -> Dict[str, float]:
    return max(runs, key=lambda r: r['img_s'])


def _seed_python_numpy(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)


def loader_files(paths: Sequence[str], labels: Sequence[int], batches: int, batch_size: int
                 ) -> Tuple[List[str], List[int]]:
    """The files cycled to `batches` batches, so that loader passes are long enough to time."""
    cycled = [i % len(paths) for i in range(batches * batch_size)]
    return [paths[i] for i in cycled], [labels[i] for i in cycled]


def time_loader_passes(loader: Iterable, set_epoch: Callable[[int], None], mix: Callable, batch_size: int,
                       batches: int) -> Dict[str, float]:
    """LOADER_PASSES passes over `loader` with `mix(images, targets)` on each batch.

    img_s: the best pass, batches after its first (worker start-up excluded); first_batch_s: wait
    for the first batch of the first pass (workers start), next_pass_s: of the later passes (new
    workers, or persistent ones reset); main_cpu_ms: CPU time of this process (decode-free when
    workers read) per batch, including any normalisation on the device when that is the CPU.
    """
    img_s, waits = [], []
    cpu_start = time.process_time()
    for epoch in range(LOADER_PASSES):
        set_epoch(epoch)
        start = time.perf_counter()
        first = None
        for images, targets in loader:
            mix(images, targets)
            first = first or time.perf_counter()
        img_s.append((batches - 1) * batch_size / (time.perf_counter() - first))
        waits.append(first - start)
    return dict(img_s=max(img_s), first_batch_s=waits[0], next_pass_s=float(np.mean(waits[1:])),
                main_cpu_ms=1000 * (time.process_time() - cpu_start) / (LOADER_PASSES * batches))


# ---------------------------------------------------------------------------------------------
# Ours


def our_transform(pipeline: str, size: int, crop_pct: float = 0.875, crop_mode: str = 'center') -> Callable:
    """Our 'train' (the recipe above) or 'eval' transform."""
    from datasets.transforms import build_transform
    if pipeline == 'train':
        return build_transform(True, size, interpolation=INTERPOLATION, aa=RAND_AUGMENT, reprob=RE_PROB,
                               remode=RE_MODE)
    return build_transform(False, size, interpolation=INTERPOLATION, crop_pct=crop_pct, crop_mode=crop_mode)


def _our_batch_fn(pipeline: str, seed: int) -> Callable:
    if pipeline == 'eval':
        return lambda arrays, labels: np.stack(arrays)
    import paddle
    from datasets.mixup import Mixup
    mixup = Mixup(seed=seed, **MIXUP)

    def stack_and_mix(arrays, labels):
        return mixup(paddle.to_tensor(np.stack(arrays)), paddle.to_tensor(np.asarray(labels, np.int64)))
    return stack_and_mix


def measure_ours(job: dict, paths: Sequence[str], labels: Sequence[int], seed: int, batch_size: int,
                 iters: int) -> Dict[str, float]:
    """One seeded pass of our per-worker pipeline for `job` (pipeline, input_size[, crop_pct, crop_mode])."""
    from datasets.imagenet import load_rgb
    _seed_python_numpy(seed)
    transform = our_transform(job['pipeline'], job['input_size'], job.get('crop_pct', 0.875),
                              job.get('crop_mode', 'center'))
    return time_pipeline(load_rgb, transform, _our_batch_fn(job['pipeline'], seed), paths, labels, batch_size, iters)


def measure_our_loader(job: dict, paths: Sequence[str], labels: Sequence[int],
                       args: argparse.Namespace) -> Dict[str, float]:
    """build_loader (train transforms, `job`'s workers, transfer and worker persistence) over the files
    cycled to iters + 1 batches, Mixup in this process; see time_loader_passes."""
    import paddle
    from datasets.imagenet import ImageDataset
    from datasets.loader import build_loader
    from datasets.mixup import Mixup

    root = os.path.dirname(os.path.commonpath(paths))
    files, file_labels = loader_files(paths, labels, args.iters + 1, args.batch_size)
    dataset = ImageDataset(root, [os.path.relpath(p, root) for p in files], file_labels,
                           transform=our_transform('train', job['input_size']))
    mixup = Mixup(seed=args.seed, **MIXUP)
    loader = build_loader(dataset, args.batch_size, is_train=True, seed=args.seed, num_workers=job['workers'],
                          persistent_workers=job['persistent'], uint8_transfer=job['transfer'] == 'uint8')
    try:
        result = time_loader_passes(loader, loader.batch_sampler.set_epoch, mixup, args.batch_size, args.iters + 1)
    finally:
        # now, not at garbage collection: forked workers hold the timm side's stdin open, which
        # then never sees the end of its requests
        loader.shutdown_workers()
    sample = loader.dataset[0][0]  # what a worker puts in shared memory, per image
    return dict(result, shm_batch_mb=args.batch_size * sample.nbytes / 2**20,
                transferred=str(sample.dtype), device=str(paddle.get_device()))


# ---------------------------------------------------------------------------------------------
# timm side: a subprocess under --timm_python, so that its passes can alternate with ours


def timm_worker() -> None:
    """Serve timings of timm's pipelines over stdin/stdout, one JSON line each way.

    First line: setup (paths, labels, seed, batch_size, iters), answered with the versions. Then
    one job per line, answered with one seeded pass (see time_pipeline).
    """
    import PIL
    import timm
    import torch
    import torchvision
    from timm.data import Mixup, create_transform

    replies, sys.stdout = sys.stdout, sys.stderr  # stray prints must not corrupt the protocol
    torch.set_num_threads(1)  # one loader worker's share, as torch sets in DataLoader workers

    def reply(obj: dict) -> None:
        replies.write(json.dumps(obj) + '\n')
        replies.flush()

    def load(path):
        with open(path, 'rb') as f:  # timm's default loader
            return Image.open(f).convert('RGB')

    setup = json.loads(sys.stdin.readline())
    reply(dict(timm=timm.__version__, torch=torch.__version__, torchvision=torchvision.__version__,
               pillow=PIL.__version__, numpy=np.__version__))
    for line in sys.stdin:
        job = json.loads(line)
        _seed_python_numpy(setup['seed'])
        torch.manual_seed(setup['seed'])
        if job['pipeline'] == 'train_loader':
            reply(_timm_loader(job, setup, load))
            continue
        if job['pipeline'] == 'train':
            transform = create_transform(job['input_size'], is_training=True, auto_augment=RAND_AUGMENT,
                                         re_prob=RE_PROB, re_mode=RE_MODE, interpolation=INTERPOLATION)
            mixup = Mixup(**MIXUP)  # the same keyword names as ours

            def per_batch(tensors, labels):
                return mixup(torch.stack(tensors), torch.tensor(labels, dtype=torch.int64))
        else:
            transform = create_transform(job['input_size'], is_training=False, crop_pct=job['crop_pct'],
                                         crop_mode=job['crop_mode'], interpolation=INTERPOLATION)

            def per_batch(tensors, labels):
                return torch.stack(tensors)
        reply(time_pipeline(load, transform, per_batch, setup['paths'], setup['labels'], setup['batch_size'],
                            setup['iters']))


def _timm_loader(job: dict, setup: dict, load: Callable) -> Dict[str, float]:
    """timm's create_loader as timm trains (uint8 batches, normalise and erase in its PrefetchLoader,
    here on the CPU, persistent workers) over the same cycled files, Mixup in this process."""
    import torch
    from timm.data import Mixup, create_loader

    class Files(torch.utils.data.Dataset):
        transform = None  # set by create_loader

        def __init__(self, paths, labels):
            self.paths, self.labels = paths, labels

        def __len__(self):
            return len(self.paths)

        def __getitem__(self, i):
            return self.transform(load(self.paths[i])), self.labels[i]

    batches = setup['iters'] + 1
    dataset = Files(*loader_files(setup['paths'], setup['labels'], batches, setup['batch_size']))
    loader = create_loader(dataset, (3, job['input_size'], job['input_size']), setup['batch_size'], is_training=True,
                           auto_augment=RAND_AUGMENT, re_prob=RE_PROB, re_mode=RE_MODE, interpolation=INTERPOLATION,
                           num_workers=job['workers'], device=torch.device('cpu'), use_prefetcher=True,
                           persistent_workers=job['workers'] > 0)
    return time_loader_passes(loader, lambda epoch: None, Mixup(**MIXUP), setup['batch_size'], batches)


class TimmSide:
    """Client of timm_worker running under `python`; `measure(job)` times one pass."""

    def __init__(self, python: str, setup: dict):
        self.python = python
        self._stderr = tempfile.TemporaryFile('w+')  # a file, not a pipe: a chatty worker cannot block
        self._proc = subprocess.Popen([python, os.path.abspath(__file__), '--timm_worker'], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self.versions = self._ask(setup)

    def measure(self, job: dict) -> Dict[str, float]:
        return self._ask(job)

    def _ask(self, request: dict) -> dict:
        try:
            self._proc.stdin.write(json.dumps(request) + '\n')
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        except BrokenPipeError:
            line = ''
        if not line:
            self._proc.wait()
            self._stderr.seek(0)
            last = (self._stderr.read().strip().splitlines() or ['no output'])[-1]
            raise ValueError(f'{self.python}: the timm side failed with exit status {self._proc.returncode}: {last}')
        return json.loads(line)

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()  # end of requests: the worker exits
            self._proc.wait()
        self._stderr.close()

    def __enter__(self) -> 'TimmSide':
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Report


def _versions_ours() -> dict:
    import paddle
    import PIL
    return dict(paddle=paddle.__version__, pillow=PIL.__version__, numpy=np.__version__)


def _fmt(value: Optional[float], digits: int = 1) -> str:
    return '-' if value is None else f'{value:.{digits}f}'


def format_table(rows: List[dict]) -> str:
    """ours/timm: wall-clock ratio; cpu: per CPU-second of the process (steadier on a busy host);
    per-image: without the batch stage; batch ms: stack (+ Mixup/CutMix for train) per batch."""
    header = (f"{'pipeline':<31}{'size':>5}{'ours img/s':>11}{'timm img/s':>11}{'ours/timm':>10}"
              f"{'cpu':>6}{'per-image':>10}{'batch ms ours/timm':>20}")
    lines = [header, '-' * len(header)]
    for r in rows:
        batch = '' if r.get('ours_batch_ms') is None else f"{r['ours_batch_ms']:.0f}/{_fmt(r.get('timm_batch_ms'), 0)}"
        lines.append(f"{r['name']:<31}{r['input_size']:>5}{_fmt(r['ours_img_s']):>11}"
                     f"{_fmt(r.get('timm_img_s')):>11}{_fmt(r.get('ratio'), 2):>10}"
                     f"{_fmt(r.get('cpu_ratio'), 2):>6}{_fmt(r.get('image_ratio'), 2):>10}{batch:>20}")
    return '\n'.join(lines)


def format_loader_table(rows: List[dict]) -> str:
    """img/s: batches after a pass's first; 1st / next pass s: wait for the first batch of the first /
    later passes (worker start or reuse); main cpu: this process's CPU ms per batch; shm: bytes per
    batch the workers put in shared memory."""
    header = (f"{'loader':<31}{'size':>5}{'transfer':>9}{'persistent':>11}{'ours img/s':>11}{'timm img/s':>11}"
              f"{'ours/timm':>10}{'1st pass s':>11}{'next pass s':>12}{'main cpu ms':>12}{'shm MB':>8}")
    lines = [header, '-' * len(header)]
    for r in rows:
        lines.append(f"{r['name']:<31}{r['input_size']:>5}{r['transfer']:>9}{str(r['persistent']):>11}"
                     f"{_fmt(r['ours_img_s']):>11}{_fmt(r.get('timm_img_s')):>11}{_fmt(r.get('ratio'), 2):>10}"
                     f"{_fmt(r['ours_first_batch_s'], 2):>11}{_fmt(r['ours_next_pass_s'], 2):>12}"
                     f"{_fmt(r['ours_main_cpu_ms'], 0):>12}{_fmt(r['ours_shm_batch_mb']):>8}")
    return '\n'.join(lines)


def _row(name: str, job: dict, ours: dict, timm_result: Optional[dict]) -> dict:
    row = dict(name=name, **job, **{f'ours_{k}': v for k, v in ours.items()})
    if timm_result is not None:
        row.update({f'timm_{k}': timm_result[k] for k in ours})
        row.update(ratio=ours['img_s'] / timm_result['img_s'], cpu_ratio=ours['cpu_img_s'] / timm_result['cpu_img_s'],
                   image_ratio=ours['image_img_s'] / timm_result['image_img_s'])
    return row


def compare_per_worker(jobs: List[dict], paths: List[str], labels: List[int], args: argparse.Namespace,
                       timm_side: Optional[TimmSide]) -> List[dict]:
    """Table rows for the per-worker jobs; ours and timm passes alternate, so both see the same host load."""
    rows = []
    for job in jobs:
        ours_runs, timm_runs = [], []
        for _ in range(args.repeats):
            ours_runs.append(measure_ours(job, paths, labels, args.seed, args.batch_size, args.iters))
            if timm_side is not None:
                timm_runs.append(timm_side.measure(job))
        rows.append(_row(f"{job['pipeline']}, per worker", job, fastest(ours_runs),
                         fastest(timm_runs) if timm_runs else None))
    return rows


def loader_jobs(args: argparse.Namespace) -> List[dict]:
    """build_loader variants: every size x worker count x --transfer, with persistent workers and,
    with --fresh_workers, also with new workers every pass (what Paddle does by default)."""
    jobs = []
    for size in args.input_size:
        for workers in args.workers:
            for transfer in args.transfer:
                for persistent in (True, False) if args.fresh_workers and workers > 0 else (workers > 0,):
                    jobs.append(dict(pipeline='train_loader', input_size=size, workers=workers, transfer=transfer,
                                     persistent=persistent))
    return jobs


def compare_loaders(jobs: List[dict], paths: List[str], labels: List[int], args: argparse.Namespace,
                    timm_side: Optional[TimmSide]) -> List[dict]:
    """Table rows for the loader jobs; timm's loader (uint8, normalised in its PrefetchLoader, persistent
    workers), timed once per size and worker count, sits next to our rows with persistent workers."""
    rows, timm_results = [], {}
    for job in jobs:
        key = job['input_size'], job['workers']
        compare = timm_side is not None and job['persistent'] == (job['workers'] > 0)
        ours_runs, timm_runs = [], []
        for _ in range(args.repeats):
            ours_runs.append(measure_our_loader(job, paths, labels, args))
            if compare and key not in timm_results:
                timm_runs.append(timm_side.measure(job))
        if timm_runs:
            timm_results[key] = fastest(timm_runs)
        ours = fastest(ours_runs)
        row = dict(name=f"train, build_loader {job['workers']} workers", **job,
                   **{f'ours_{k}': v for k, v in ours.items()})
        if compare:
            timm_result = timm_results[key]
            row.update({f'timm_{k}': v for k, v in timm_result.items()}, ratio=ours['img_s'] / timm_result['img_s'])
        rows.append(row)
    return rows


def benchmark(args: argparse.Namespace, paths: List[str], labels: List[int]) -> dict:
    """Time every pipeline (ours, timm when asked, loaders) and return the result dict."""
    jobs = []
    for size in args.input_size:
        crop_pct, crop_mode = eval_protocol(size)
        jobs.append(dict(pipeline='train', input_size=size))
        jobs.append(dict(pipeline='eval', input_size=size, crop_pct=crop_pct, crop_mode=crop_mode))
    load_before = os.getloadavg()
    timm_versions = None
    if args.timm_python:
        setup = dict(paths=paths, labels=labels, seed=args.seed, batch_size=args.batch_size, iters=args.iters)
        with TimmSide(args.timm_python, setup) as timm_side:
            rows = compare_per_worker(jobs, paths, labels, args, timm_side)
            rows += compare_loaders(loader_jobs(args), paths, labels, args, timm_side)
            timm_versions = timm_side.versions
    else:
        rows = compare_per_worker(jobs, paths, labels, args, None)
        rows += compare_loaders(loader_jobs(args), paths, labels, args, None)
    return dict(rows=rows, cpus=len(os.sched_getaffinity(0)), load_avg_before=load_before,
                load_avg_after=os.getloadavg(), num_images=len(paths), batch_size=args.batch_size,
                iters=args.iters, repeats=args.repeats, recipe=dict(aa=RAND_AUGMENT, reprob=RE_PROB, remode=RE_MODE,
                                                                     interpolation=INTERPOLATION, mixup=MIXUP),
                mean_file_kb=float(np.mean([os.path.getsize(p) for p in paths]) / 1024),
                versions=dict(ours=_versions_ours(), timm=timm_versions))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.timm_worker:
        timm_worker()
        return 0
    with tempfile.TemporaryDirectory(prefix='benchmark_data_') as tmp:
        if args.data_dir is None:
            source = REFERENCE_IMAGE if os.path.isfile(REFERENCE_IMAGE) else None
            write_benchmark_images(tmp, args.num_images, source, args.seed, args.split)
            data_dir = tmp
            origin = f'variations of {os.path.basename(source)}' if source else 'smooth noise'
        else:
            data_dir, origin = args.data_dir, args.data_dir
        paths, labels = list_images(os.path.join(data_dir, args.split), args.num_images)
        result = benchmark(args, paths, labels)
    result['images'] = origin
    load = ', '.join(f'{v:.2f}' for v in result['load_avg_before'])
    print(f"{len(paths)} JPEGs ({origin}, {result['mean_file_kb']:.0f} KB avg), batch {args.batch_size} x "
          f"{args.iters} iters, best of {args.repeats}; {result['cpus']} CPUs, load avg {load} before")
    loader_rows = [r for r in result['rows'] if r['pipeline'] == 'train_loader']
    print(format_table([r for r in result['rows'] if r['pipeline'] != 'train_loader']))
    if loader_rows:
        print(format_loader_table(loader_rows))
    report(result, args.json)
    return 0


if __name__ == '__main__':
    from utils.entrypoint import run_main
    run_main(main)

"""CPU speed of a CvT variant against Hugging Face's PyTorch CvT, timed in the same run.

    python tools/benchmark.py --threads 2 --torch_python /tmp/torchref/bin/python
    python tools/benchmark.py --mode train --torch_python /tmp/torchref/bin/python

--mode infer (default): batch-1 latency and large-batch images/s for dygraph, Paddle Inference (oneDNN
off/on, and with oneDNN bf16 and int8 on the legacy-program export, export_model.py --format pdmodel),
ONNX Runtime (fp32, int8), OpenVINO (fp32, bf16, int8) and torch, plus each row's accuracy cost on a real
photo: max |probability difference| and top-1 against dygraph fp32. Torch's rows are HF's CvT eager and,
as a PyTorch user deploys it, exported by torch.onnx.export (the installed torch's default exporter, in the
--torch_python environment), quantised by our int8 recipe and run by our predictors in each ONNX runtime
and precision; a second table gives ours / theirs images/s for each such pair. --mode train: images/s of
one optimizer step (forward, cross-entropy, backward, AdamW step, clear grad) for dygraph and torch, both
in train mode (drop path on).

Random weights (speed does not depend on them), fixed batches of random pixels, warm-up runs, then
the median of timed runs; with --rounds R every backend is timed R times, round after round (so a slow
spell of a shared machine hits the rows alike), and keeps its fastest round, as interference only slows
a run. Each backend runs in its own process with OMP_NUM_THREADS set to --threads,
so no backend inherits another's thread pools or caches. A line names the CPU and which instruction
sets for bf16 and fast int8 (AVX-512 VNNI/BF16, AVX-VNNI, AMX) its /proc/cpuinfo lists: they decide
the reduced-precision rows.
"""
import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # `python tools/benchmark.py`


class Deployed(NamedTuple):
    """An exported row: what infer.py runs (--backend, --precision, oneDNN for the paddle backend) on which
    of EXPORTS."""
    runtime: str
    precision: str
    onednn: bool
    export: str


# The export folders a run writes (each only when an asked row runs it): ours in the installed Paddle's own
# format (with model.onnx and its int8 copies), and ours as the legacy program (Paddle Inference's oneDNN bf16
# and int8 run only that; int8 on its copy quantised by Paddle's PTQ); then theirs, torch.onnx.export's
EXPORTS = ('export', 'pdmodel')
TORCH_EXPORT = 'torch_export'
DEPLOYED = {'paddle_inference': Deployed('paddle', 'fp32', False, 'export'),
            'paddle_inference_onednn': Deployed('paddle', 'fp32', True, 'export'),
            'paddle_inference_bf16': Deployed('paddle', 'bf16', True, 'pdmodel'),
            'paddle_inference_int8': Deployed('paddle', 'int8', True, 'pdmodel'),
            'onnxruntime': Deployed('onnxruntime', 'fp32', False, 'export'),
            'onnxruntime_int8': Deployed('onnxruntime', 'int8', False, 'export'),
            'openvino': Deployed('openvino', 'fp32', False, 'export'),
            'openvino_bf16': Deployed('openvino', 'bf16', False, 'export'),
            'openvino_int8': Deployed('openvino', 'int8', False, 'export')}
REFERENCE = 'torch_hf_eager'
# The PyTorch user's deployment in each ONNX runtime and precision, {their row: our row it is compared with}
TORCH_EXPORT_PAIRS = {f'torch_onnx_{ours}': ours
                      for ours in ('onnxruntime', 'onnxruntime_int8', 'openvino', 'openvino_bf16', 'openvino_int8')}
BACKENDS = ('dygraph', *DEPLOYED, REFERENCE, *TORCH_EXPORT_PAIRS)
DEPLOYED.update({theirs: DEPLOYED[ours]._replace(export=TORCH_EXPORT) for theirs, ours in TORCH_EXPORT_PAIRS.items()})
# What build_predictor reads of an export's inference.yml for an ONNX runtime, for their folder, which has none:
# the batch size the graph takes (any: the exported batch axis is dynamic)
TORCH_EXPORT_CFG = {'batch_size': -1}
TORCH_INPUT_NAME = 'pixel_values'  # HF's name for the image batch, the exported graph's input
IMAGE = os.path.join(os.path.dirname(ROOT), 'shared', 'reference', 'ILSVRC2012_val_00020010.JPEG')
CALIB_CROPS = 8  # int8 speed does not depend on the calibration images; the accuracy column does a little
MODES = ('infer', 'train')
MODE_BACKENDS = {'infer': BACKENDS, 'train': ('dygraph', REFERENCE)}
MODE_BATCH_SIZES = {'infer': [1, 32], 'train': [16]}
# The official CvT recipe's AdamW settings (configs/train/cvt); speed does not depend on them.
TRAIN_LR = 2e-3
TRAIN_WEIGHT_DECAY = 0.05


def build_parser() -> argparse.ArgumentParser:
    from utils.config import ArgumentParser, HelpFormatter  # paddle-free: the torch-side workers parse too
    parser = ArgumentParser(prog='tools/benchmark.py', description=' '.join(__doc__.split('\n\n')[0].split()),
                            formatter_class=HelpFormatter, allow_abbrev=False)
    parser.add_argument('--mode', default='infer', choices=MODES,
                        help='time inference, or one training step (forward, loss, backward, AdamW step)')
    parser.add_argument('--model', default='cvt_13_224x224', help='registered model name')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads for every backend')
    parser.add_argument('--batch_sizes', type=int, nargs='+',
                        help='fixed batch sizes timed; none given: ' +
                             ', '.join(f'{" ".join(map(str, b))} ({m})' for m, b in MODE_BATCH_SIZES.items()))
    parser.add_argument('--warmup', type=int, default=2, help='untimed runs per batch size')
    parser.add_argument('--iters', type=int, default=5, help='timed runs per batch size (median reported)')
    parser.add_argument('--rounds', type=int, default=1,
                        help='times every backend is timed, round after round; its fastest round is reported')
    parser.add_argument('--backends', nargs='+', choices=BACKENDS, metavar='NAME',
                        help=f'what to time, of: {", ".join(BACKENDS)}; none given: all the mode supports '
                             f'(train: {", ".join(MODE_BACKENDS["train"])})')
    parser.add_argument('--image', default=IMAGE, metavar='FILE',
                        help='real photo for the accuracy columns (and, as random crops, int8 calibration)')
    parser.add_argument('--torch_python', metavar='PYTHON',
                        help=f'python of an environment with torch + transformers (+ onnxscript for the dynamo '
                             f'exporter), for the torch rows ({REFERENCE}, and the export of the torch_onnx_* '
                             f'rows); None: this python')
    parser.add_argument('--output_json', metavar='FILE', help='also write the measurements here')
    parser.add_argument('--debug', action='store_true', help='full traceback on errors')
    parser.add_argument('--worker', choices=BACKENDS, help=argparse.SUPPRESS)  # internal: time one backend
    parser.add_argument('--worker_args', help=argparse.SUPPRESS)
    parser.add_argument('--torch_export', help=argparse.SUPPRESS)  # internal: torch.onnx.export to this file
    return parser


def resolve_mode_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill --batch_sizes / --backends from --mode and reject backends the mode cannot time."""
    supported = MODE_BACKENDS[args.mode]
    if args.rounds < 1:
        raise ValueError(f'--rounds must be >= 1, got {args.rounds}')
    if args.batch_sizes is None:
        args.batch_sizes = list(MODE_BATCH_SIZES[args.mode])
    if args.backends is None:
        args.backends = list(supported)
    unsupported = [b for b in args.backends if b not in supported]
    if unsupported:
        raise ValueError(f'--backends: --mode {args.mode} times only {", ".join(supported)}, '
                         f'got {", ".join(unsupported)}')
    return args


def median_seconds(fn: Callable[[], object], warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---- workers: each runs in a fresh process and prints {batch_size: median seconds} as JSON ----

def _random_batch(spec: dict, batch_size: int):
    """The same images and labels for every backend (numpy, so torch and paddle get identical data)."""
    import numpy as np
    rng = np.random.RandomState(0)
    images = rng.standard_normal([batch_size] + spec['input_size']).astype(np.float32)
    return images, rng.randint(0, spec['num_classes'], batch_size).astype(np.int64)


def _paddle_model(spec: dict, training: bool):
    import paddle
    from models import create_model
    paddle.seed(0)
    model = create_model(spec['model'])
    if training:
        model.train()
    else:
        model.eval()
    return model


def _paddle_runner(backend: str, spec: dict, batch_size: int) -> Callable[[], object]:
    return _paddle_predict(backend, spec, _random_batch(spec, batch_size)[0])


def _paddle_predict(backend: str, spec: dict, x) -> Callable[[], object]:
    """What one dygraph or exported run computes on `x`: the graph output (logits)."""
    if backend == 'dygraph':
        import paddle
        model = _paddle_model(spec, training=False)
        tensor = paddle.to_tensor(x)

        def run():
            with paddle.no_grad():
                return model(tensor).numpy()
        return run
    from deploy.layout import read_inference_cfg
    from deploy.predictors import build_predictor
    row = DEPLOYED[backend]
    model_dir = spec['model_dirs'][row.export]
    cfg = TORCH_EXPORT_CFG if row.export == TORCH_EXPORT else read_inference_cfg(model_dir)
    predictor = build_predictor(model_dir, cfg, backend=row.runtime, max_batch_size=len(x), enable_mkldnn=row.onednn,
                                cpu_threads=spec['threads'], precision=row.precision)
    return lambda: predictor(x)


def _image_probs(backend: str, spec: dict) -> Optional[List[float]]:
    """Probabilities on the real photo (eval preprocessing), for the accuracy columns; None for torch's rows,
    whose random weights are not ours."""
    if backend == REFERENCE or backend in TORCH_EXPORT_PAIRS or not spec['image']:
        return None
    from deploy.predictors import softmax
    return softmax(_paddle_predict(backend, spec, _photo_batch(spec))()).reshape(-1).tolist()


def _photo_batch(spec: dict, crops: int = 0):
    """The photo preprocessed as the variant's eval does, or with `crops` random crops of it, (N, 3, H, W)."""
    import numpy as np
    from datasets.transforms import build_transform, resolve_data_cfg
    from models import create_model
    from deploy.classify import read_image
    transform = build_transform(is_train=False, **resolve_data_cfg(create_model(spec['model']).default_cfg))
    image = read_image(spec['image'])
    if not crops:
        return transform(image)[None].astype(np.float32)
    rng, (w, h) = np.random.RandomState(0), image.size
    boxes = []
    for _ in range(crops):
        cw, ch = (int(side * rng.uniform(0.5, 1.0)) for side in (w, h))
        left, top = rng.randint(0, w - cw + 1), rng.randint(0, h - ch + 1)
        boxes.append((left, top, left + cw, top + ch))
    return np.stack([transform(image.crop(box)) for box in boxes]).astype(np.float32)


def _paddle_train_step(spec: dict, batch_size: int) -> Callable[[], float]:
    import paddle
    import paddle.nn.functional as F
    from training.optim import build_optimizer
    x, y = _random_batch(spec, batch_size)
    model = _paddle_model(spec, training=True)
    optimizer = build_optimizer(model, opt='adamw', lr=TRAIN_LR, weight_decay=TRAIN_WEIGHT_DECAY)
    images, labels = paddle.to_tensor(x), paddle.to_tensor(y)

    def step():
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        return float(loss)
    return step


def _torch_model(spec: dict, training: bool):
    import torch
    from transformers import CvtConfig, CvtForImageClassification
    # transformers' CvtStage gives every block entry `stage` of its linspace(0, rate, depth), so a stage
    # needs more blocks than its index (CvT-13/21/W24 have them; cvt_tiny does not).
    if any(depth <= i for i, depth in enumerate(spec['depths'])):
        raise ValueError(f"{spec['model']}: transformers' CvT needs stage i to have more than i blocks, "
                         f"got depths {spec['depths']}")
    torch.set_num_threads(spec['threads'])
    torch.manual_seed(0)
    config = CvtConfig(depth=spec['depths'], embed_dim=spec['dims'], num_heads=spec['heads'],
                       drop_path_rate=spec['drop_path_rates'], num_labels=spec['num_classes'])
    return CvtForImageClassification(config).train(training)


def _torch_runner(spec: dict, batch_size: int) -> Callable[[], object]:
    import torch
    model = _torch_model(spec, training=False)
    x = torch.from_numpy(_random_batch(spec, batch_size)[0])

    def run():
        with torch.inference_mode():
            return model(pixel_values=x).logits
    return run


def _torch_train_step(spec: dict, batch_size: int) -> Callable[[], float]:
    import torch
    model = _torch_model(spec, training=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=TRAIN_LR, weight_decay=TRAIN_WEIGHT_DECAY)
    images, labels = map(torch.from_numpy, _random_batch(spec, batch_size))

    def step():
        loss = torch.nn.functional.cross_entropy(model(pixel_values=images).logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss.item()
    return step


def export_torch_onnx(spec: dict, onnx_file: str) -> dict:
    """HF's CvT (the torch_hf_eager row's model) exported as a PyTorch user does: torch.onnx.export with the
    installed torch's default exporter, the batch axis dynamic, into `onnx_file` (its weights beside it when
    the exporter writes them apart). Returns which exporter ran, and the versions."""
    import inspect
    import torch
    import transformers
    model = _torch_model(spec, training=False)
    example = torch.from_numpy(_random_batch(spec, 2)[0])  # not 1: an exporter may fix a batch axis of size 1
    dynamo = getattr(inspect.signature(torch.onnx.export).parameters.get('dynamo'), 'default', False) is True
    # The batch axis as each exporter's documentation declares it (dynamo warns on dynamic_axes)
    batch_axis = {TORCH_INPUT_NAME: {0: 'batch'}}
    dynamic = dict(dynamic_shapes=batch_axis) if dynamo else dict(dynamic_axes={**batch_axis, 'logits': {0: 'batch'}})
    os.makedirs(os.path.dirname(onnx_file), exist_ok=True)
    torch.onnx.export(model, (example,), onnx_file, input_names=[TORCH_INPUT_NAME], output_names=['logits'],
                      **dynamic)
    return dict(exporter='dynamo' if dynamo else 'torchscript', torch_version=torch.__version__,
                transformers_version=transformers.__version__)


def build_runner(mode: str, backend: str, spec: dict, batch_size: int) -> Callable[[], object]:
    """What one timed run calls: an inference forward, or one training step."""
    if mode == 'train':
        return _torch_train_step(spec, batch_size) if backend == REFERENCE else _paddle_train_step(spec, batch_size)
    return _torch_runner(spec, batch_size) if backend == REFERENCE else _paddle_runner(backend, spec, batch_size)


def run_worker(mode: str, backend: str, spec: dict, batch_sizes: Sequence[int], warmup: int,
               iters: int) -> dict:
    """{'seconds': {batch size: median seconds}, 'probs': probabilities on the photo (infer) or None}."""
    seconds = {batch_size: median_seconds(build_runner(mode, backend, spec, batch_size), warmup, iters)
               for batch_size in batch_sizes}
    return {'seconds': seconds, 'probs': _image_probs(backend, spec) if mode == 'infer' else None}


# ---- orchestration ----

def _model_spec(model_name: str, threads: int, model_dirs: Dict[str, str], image: str) -> dict:
    """What every worker needs: the paddle model name, export folders ({EXPORTS entry: path}) and photo, and
    the arch for torch."""
    from models import create_model
    model = create_model(model_name)
    stages = [getattr(model, f'stage{i}') for i in range(model.num_stages)]
    return dict(model=model_name, model_dirs=model_dirs, image=image, threads=threads, num_classes=model.num_classes,
                input_size=list(model.default_cfg['input_size']), depths=[len(s.blocks) for s in stages],
                dims=[s.patch_embed.proj.weight.shape[0] for s in stages],
                heads=[s.blocks[0].attn.num_heads for s in stages],
                # A stage's rates rise linearly to its last block's; an Identity there means rate 0.
                drop_path_rates=[getattr(s.blocks[-1].drop_path, 'drop_prob', 0.0) for s in stages])


def _calibration_batches(spec: dict) -> List:
    """The int8 calibration batches of every quantised row: random crops of the photo (random pixels without
    one), one per batch."""
    crops = _photo_batch(spec, CALIB_CROPS) if spec['image'] else _random_batch(spec, CALIB_CROPS)[0]
    return list(crops[:, None])


def _export(spec: dict, export: str, rows: Sequence[Deployed]) -> None:
    """Write the EXPORTS folder `export` with what `rows` run from it: ONNX for an ONNX runtime, the int8
    copies for an int8 row."""
    from datasets.transforms import resolve_data_cfg
    from models.export_rewrites import rewrite_for_export
    from deploy.export import export_inference_model
    model = _paddle_model(spec, training=False)
    calib = _calibration_batches(spec) if any(row.precision == 'int8' for row in rows) else None
    export_inference_model(rewrite_for_export(model), spec['model_dirs'][export], spec['model'],
                           resolve_data_cfg(model.default_cfg), calib_batches=calib,
                           onnx=any(row.runtime != 'paddle' for row in rows),
                           program_format='pdmodel' if export == 'pdmodel' else None)


def _export_torch(python: str, spec: dict, rows: Sequence[Deployed], threads: int) -> dict:
    """Their export into spec's TORCH_EXPORT folder: torch.onnx.export under `python`, then, for an int8 row,
    quantised here by our recipe on our calibration batches. Returns export_torch_onnx's record; a failed
    export raises ValueError with the torch side's one-line reason."""
    from deploy.layout import ONNX_FILE
    from deploy.quantize import quantize_onnx
    folder = spec['model_dirs'][TORCH_EXPORT]
    onnx_file = os.path.join(folder, ONNX_FILE)
    record, reason = _run_script(python, ['--torch_export', onnx_file, '--worker_args', json.dumps(spec)], threads)
    if record is None:
        raise ValueError(f'torch.onnx.export failed: {reason}')
    if any(row.precision == 'int8' for row in rows):
        quantize_onnx(onnx_file, folder, _calibration_batches(spec))
    return record


@functools.lru_cache(maxsize=None)  # asked once per row, and a torch import takes seconds
def _has_module(python: str, *modules: str) -> bool:
    probe = '; '.join(f'import {m}' for m in modules)
    try:
        return subprocess.run([python, '-c', probe], capture_output=True).returncode == 0
    except OSError:  # no such python, or not executable
        return False


def _run_script(python: str, script_args: Sequence[str], threads: int) -> tuple:
    """This script run by `python` with `threads` CPU threads: (its closing JSON line, None), or (None, its
    one-line reason) when it failed."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    proc = subprocess.run([python, os.path.abspath(__file__), *script_args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return None, (proc.stderr.strip().splitlines() or ['no output'])[-1].removeprefix('error: ')  # run_main's
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


def _time_backend(python: str, backend: str, spec: dict, args) -> Optional[dict]:
    """The worker's result, or None (reported as skipped, with the worker's one-line reason) when it
    refused, e.g. a precision this CPU lacks."""
    result, reason = _run_script(python, ['--mode', args.mode, '--worker', backend, '--worker_args', json.dumps(spec),
                                          '--batch_sizes', *map(str, args.batch_sizes), '--warmup', str(args.warmup),
                                          '--iters', str(args.iters)], args.threads)
    if result is None:
        print(f'{backend}: skipped ({reason})')
        return None
    return {'seconds': {int(k): v for k, v in result['seconds'].items()}, 'probs': result['probs']}


def fastest_round(best: Optional[dict], result: Optional[dict]) -> Optional[dict]:
    """A worker's result with, per batch size, the fewer seconds of `best` (earlier rounds) and `result`."""
    if best is None or result is None:
        return result
    return dict(best, seconds={b: min(seconds, result['seconds'][b]) for b, seconds in best['seconds'].items()})


def _available(args, torch_python: str) -> List[tuple]:
    """(backend, python) pairs that can run here; the rest are reported as skipped."""
    plan = []
    for backend in args.backends:
        row = DEPLOYED.get(backend)
        needs = [] if row is None or row.runtime == 'paddle' else \
            (['paddle2onnx'] if row.export != TORCH_EXPORT else []) + [row.runtime] + \
            (['nncf'] if row.precision == 'int8' else [])
        on_torch = backend == REFERENCE or backend in TORCH_EXPORT_PAIRS
        if needs and not _has_module(sys.executable, *needs):
            print(f'{backend}: skipped ({"/".join(needs)} not installed)')
        elif on_torch and not _has_module(torch_python, 'torch', 'transformers'):
            print(f'{backend}: skipped ({torch_python} cannot import torch and transformers; see --torch_python)')
        else:
            plan.append((backend, torch_python if backend == REFERENCE else sys.executable))
    return plan


def accuracy_cost(probs: Dict[str, Optional[List[float]]]) -> Dict[str, tuple]:
    """{backend: (max |prob diff|, top-1 unchanged)} against dygraph fp32 (else the first row with probs)."""
    import numpy as np
    rows = {k: np.asarray(v) for k, v in probs.items() if v is not None}
    if not rows:
        return {}
    reference = rows.get('dygraph', next(iter(rows.values())))
    return {k: (float(np.abs(p - reference).max()), bool(p.argmax() == reference.argmax())) for k, p in rows.items()}


def format_table(results: Dict[str, Dict[int, float]], batch_sizes: Sequence[int], mode: str = 'infer',
                 accuracy: Optional[Dict[str, tuple]] = None) -> str:
    """Latency (inference at batch 1) or images/s per batch size, the speed ratio to the torch row
    (ours / torch images/s; >1: faster) and, given `accuracy`, each row's cost on the photo."""
    reference = results.get(REFERENCE)
    accuracy = accuracy or {}

    def latency(batch_size):
        return mode == 'infer' and batch_size == 1

    header = ['backend'] + [f'b{b} ms' if latency(b) else f'b{b} img/s' for b in batch_sizes]
    if reference:
        header += [f'b{b} vs torch' for b in batch_sizes]
    if accuracy:
        header += ['max |dprob|', 'top-1']
    rows = [header]
    for backend, timing in results.items():
        row = [backend] + [f'{1000 * timing[b]:.1f}' if latency(b) else f'{b / timing[b]:.1f}' for b in batch_sizes]
        if reference:
            row += [f'{reference[b] / timing[b]:.2f}x' for b in batch_sizes]
        if accuracy:
            diff, same = accuracy.get(backend, (None, None))
            row += ['-', '-'] if diff is None else [f'{diff:.1e}', 'same' if same else 'CHANGED']
        rows.append(row)
    return _aligned(rows)


def vs_torch_export(results: Dict[str, Dict[int, float]]) -> Dict[str, Dict[int, float]]:
    """{our row: {batch size: ours / theirs images/s}} for each pair of TORCH_EXPORT_PAIRS timed on both sides
    (>1: ours faster)."""
    return {ours: {b: results[theirs][b] / seconds for b, seconds in results[ours].items() if b in results[theirs]}
            for theirs, ours in TORCH_EXPORT_PAIRS.items() if ours in results and theirs in results}


def format_vs_torch_export(ratios: Dict[str, Dict[int, float]], batch_sizes: Sequence[int]) -> str:
    """The ratio table: a row per runtime and precision, ours / theirs images/s per batch size."""
    return _aligned([['ours / torch.onnx.export'] + [f'b{b}' for b in batch_sizes]] +
                    [[ours] + [f'{ratio[b]:.2f}x' for b in batch_sizes] for ours, ratio in ratios.items()])


def _aligned(rows: List[List[str]]) -> str:
    """Rows of cells as text columns: the first left-aligned, the rest right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return '\n'.join('  '.join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths))) for row in rows)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = resolve_mode_defaults(build_parser().parse_args(argv))
    if args.worker:
        spec = json.loads(args.worker_args)
        print(json.dumps(run_worker(args.mode, args.worker, spec, args.batch_sizes, args.warmup, args.iters)))
        return 0
    if args.torch_export:
        print(json.dumps(export_torch_onnx(json.loads(args.worker_args), args.torch_export)))
        return 0
    import utils.env  # noqa: F401  (here, not above: the torch-side workers of this script run without paddle)
    torch_python = args.torch_python or sys.executable
    plan = _available(args, torch_python)
    image = args.image if os.path.isfile(args.image) else None
    if not image and args.mode == 'infer':
        print(f'{args.image}: not found; no accuracy columns (see --image)')
    with tempfile.TemporaryDirectory(prefix='cvt-bench-') as tmp:
        folders = {name: os.path.join(tmp, name) for name in (*EXPORTS, TORCH_EXPORT)}
        spec = _model_spec(args.model, args.threads, folders, image)
        rows = [DEPLOYED[backend] for backend, _ in plan if backend in DEPLOYED]
        for export in EXPORTS:
            if any(row.export == export for row in rows):
                _export(spec, export, [row for row in rows if row.export == export])
        theirs, torch_export = [backend for backend, _ in plan if backend in TORCH_EXPORT_PAIRS], None
        if theirs:
            try:
                torch_export = _export_torch(torch_python, spec, [DEPLOYED[b] for b in theirs], args.threads)
            except ValueError as e:  # their rows are skipped, with the reason; ours run
                print('\n'.join(f'{backend}: skipped ({e})' for backend in theirs))
        load_before = os.getloadavg()
        measured = {backend: None for backend in theirs if not torch_export}  # said skipped above
        for _ in range(args.rounds):
            for backend, python in plan:
                if backend not in measured or measured[backend]:  # a row that failed is not asked again
                    measured[backend] = fastest_round(measured.get(backend), _time_backend(python, backend, spec,
                                                                                           args))
        load_after = os.getloadavg()
    from utils.env import cpu_summary, format_cpu_summary
    cpu = cpu_summary()
    results = {k: v['seconds'] for k, v in measured.items() if v}
    accuracy = accuracy_cost({k: v['probs'] for k, v in measured.items() if v})
    timed = 'one AdamW training step' if args.mode == 'train' else 'inference'
    print(f'{args.model} {timed}, {args.threads} threads, input {spec["input_size"]}, warm-up {args.warmup}, '
          f'median of {args.iters}, fastest of {args.rounds} round(s); load average {load_before[0]:.2f} before, '
          f'{load_after[0]:.2f} after '
          f'({os.cpu_count()} CPUs)')
    print(format_cpu_summary(cpu))
    print(format_table(results, args.batch_sizes, args.mode, accuracy))
    ratios = vs_torch_export(results)
    if ratios:
        print(f"\nOurs / the PyTorch user's export (torch.onnx.export, {torch_export['exporter']} exporter, torch "
              f"{torch_export['torch_version']}), images/s in the same runtime and precision (>1: ours faster)")
        print(format_vs_torch_export(ratios, args.batch_sizes))
    record = dict(model=args.model, mode=args.mode, threads=args.threads, warmup=args.warmup, iters=args.iters,
                  rounds=args.rounds,
                  load_average=[load_before[0], load_after[0]], cpu=cpu, image=image,
                  skipped=[k for k, v in measured.items() if v is None],
                  accuracy_vs_dygraph={k: {'max_abs_prob_diff': d, 'top1_unchanged': same}
                                       for k, (d, same) in accuracy.items()},
                  median_seconds={k: {str(b): v for b, v in t.items()} for k, t in results.items()},
                  images_per_second={k: {str(b): b / v for b, v in t.items()} for k, t in results.items()},
                  torch_export=torch_export,
                  vs_torch_export={k: {str(b): r for b, r in t.items()} for k, t in ratios.items()})
    from utils.entrypoint import report  # paddle-free, as run_main below
    report(record, args.output_json)
    return 0


if __name__ == '__main__':
    from utils.entrypoint import run_main  # paddle-free: the torch-side workers run through it too
    run_main(main)

"""Check an export folder against the dygraph model: same images, same top-5, probabilities within 1e-5.

    python tools/check_export.py --model_dir inference/cvt_13 --resume output/checkpoint-best.pd [--images demo/]

Compares Paddle Inference, and ONNX Runtime and OpenVINO (those installed) when the folder holds model.onnx;
exits 1 on any failure.
Top-5 ids must be identical, except two classes whose reference probabilities tie within --atol may swap.
"""
import _bootstrap  # noqa: F401  (first: repo root on sys.path, then utils.env)

import argparse
import importlib.util
import json
import os
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import paddle

from cli import add_image_args, add_weight_args, load_model, run_main, script_parser
from datasets.transforms import build_transform, resolve_data_cfg
from deploy.classify import find_images, preprocess
from deploy.layout import ONNX_FILE, read_inference_cfg
from deploy.predictors import build_predictor, graph_to_probs, softmax
from utils.config import add_bool
from utils.env import cpu_threads

TOPK = 5
NUM_RANDOM_IMAGES = 4


def build_parser() -> argparse.ArgumentParser:
    parser = script_parser('check_export.py', __doc__)
    parser.add_argument('--model_dir', required=True, metavar='DIR', help='export_model.py output folder')
    add_weight_args(parser)
    add_image_args(parser, required=False, help=f'images, folders or globs (default: {NUM_RANDOM_IMAGES} seeded '
                                                f'random-pixel images)')
    parser.add_argument('--atol', type=float, default=1e-5, help='largest allowed |probability difference|')
    add_bool(parser, 'enable_mkldnn', True, 'oneDNN kernels in the Paddle predictor, as infer.py uses by default')
    parser.add_argument('--cpu_threads', type=int, default=cpu_threads(), help='CPU math threads')
    parser.add_argument('--debug', action='store_true', help='full traceback on errors')
    return parser


def random_images(transform, count: int, seed: int = 0) -> np.ndarray:
    """Seeded random-pixel images of a few sizes, preprocessed like real ones."""
    from PIL import Image
    rng = np.random.RandomState(seed)
    sizes = [(96, 80), (64, 64), (300, 200), (50, 120)]
    images = [Image.fromarray(rng.randint(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in
              (sizes[i % len(sizes)] for i in range(count))]
    return np.stack([transform(img) for img in images])


def compare(reference: np.ndarray, probs: np.ndarray, atol: float) -> Tuple[float, int]:
    """(max |prob diff|, images whose top-k ids differ beyond ties within atol)."""
    max_diff = float(np.abs(reference - probs).max())
    k = min(TOPK, reference.shape[1])
    ref_ids = np.argsort(-reference, axis=1, kind='stable')[:, :k]
    ids = np.argsort(-probs, axis=1, kind='stable')[:, :k]
    mismatches = 0
    for row, a, b in zip(reference, ref_ids, ids):
        # two classes swapping places is only a failure when their reference probabilities are apart
        if np.abs(row[a] - row[b]).max() > atol:
            mismatches += 1
    return max_diff, mismatches


def predictors(args, cfg: dict, batch_size: int) -> List[Tuple[str, Callable[[np.ndarray], np.ndarray]]]:
    """Paddle Inference, plus ONNX Runtime and OpenVINO when the folder holds model.onnx."""
    found = [('paddle', build_predictor(args.model_dir, cfg, backend='paddle', max_batch_size=batch_size,
                                        enable_mkldnn=args.enable_mkldnn, cpu_threads=args.cpu_threads))]
    if os.path.isfile(os.path.join(args.model_dir, ONNX_FILE)):
        for backend in ('onnxruntime', 'openvino'):
            if importlib.util.find_spec(backend) is None:
                print(f'{backend}: skipped, {ONNX_FILE} present but {backend} is not installed')
            else:
                found.append((backend, build_predictor(args.model_dir, cfg, backend=backend,
                                                       cpu_threads=args.cpu_threads)))
    return found


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = read_inference_cfg(args.model_dir)
    model = load_model(args.model or cfg['model'], args.resume, args.pretrained, args.use_ema,
                       args.num_classes or cfg['num_classes'])
    transform = build_transform(is_train=False, **resolve_data_cfg(cfg['preprocess']))
    batch = (preprocess(find_images(args.images), transform) if args.images
             else random_images(transform, NUM_RANDOM_IMAGES))
    with paddle.no_grad():
        reference = softmax(model(paddle.to_tensor(batch)).numpy())
    report, failed = {}, False
    for name, run in predictors(args, cfg, len(batch)):
        max_diff, mismatches = compare(reference, graph_to_probs(run(batch), cfg), args.atol)
        ok = max_diff <= args.atol and mismatches == 0
        failed |= not ok
        report[name] = {'max_abs_prob_diff': max_diff, 'topk_mismatches': mismatches, 'ok': ok}
        print(f'{name}: max |prob diff| {max_diff:.3e} (atol {args.atol:g}), '
              f'top-{TOPK} ids differ on {mismatches}/{len(batch)} images: {"OK" if ok else "FAIL"}')
    print(json.dumps({'model_dir': args.model_dir, 'num_images': len(batch), **report}))
    return 1 if failed else 0


if __name__ == '__main__':
    run_main(main)

"""Classify images with an exported model (Paddle Inference, ONNX Runtime or OpenVINO); preprocessing and
labels come from the export folder's inference.yml.

    python infer.py --model_dir inference/cvt_13 --images demo/ --benchmark
    python infer.py --model_dir inference/cvt_13 --images demo/ --backend openvino --precision int8

Results are shown as predict.py shows them: a table on a terminal, else the JSON list.
"""
import utils.env  # noqa: F401  (first: CPU threads, quiet paddle import)

import argparse
from typing import Optional, Sequence

from cli import add_image_args, add_result_args, run_main, script_parser
from datasets.transforms import build_transform, resolve_data_cfg
from deploy.classify import classify_images, find_images, show_results
from deploy.layout import read_inference_cfg
from deploy.predictors import BACKENDS, PRECISIONS, build_predictor, graph_to_probs
from utils.config import add_bool
from utils.env import cpu_threads

WARMUP_RUNS = 3


def build_parser() -> argparse.ArgumentParser:
    parser = script_parser('infer.py', __doc__)
    io = parser.add_argument_group('model and inputs')
    io.add_argument('--model_dir', required=True, metavar='DIR', help='export_model.py output folder')
    io.add_argument('--model_file', metavar='FILE', help='graph file (default: DIR/inference.json or .pdmodel)')
    io.add_argument('--params_file', metavar='FILE', help='parameters (default: next to the graph, .pdiparams)')
    add_image_args(io)
    io.add_argument('--batch_size', type=int, default=1, help='images per predictor run')
    add_result_args(io)
    prep = parser.add_argument_group('preprocessing overrides (default: inference.yml)')
    prep.add_argument('--crop_pct', type=float, help='resize to input_size / crop_pct, then centre-crop')
    prep.add_argument('--crop_mode', choices=('center', 'squash'), help='keep aspect ratio, or resize both sides')
    prep.add_argument('--interpolation', choices=('nearest', 'bilinear', 'bicubic'), help='resize filter')
    dev = parser.add_argument_group('predictor')
    dev.add_argument('--backend', default='paddle', choices=BACKENDS,
                     help='onnxruntime and openvino run DIR/model.onnx (export_model.py --onnx)')
    dev.add_argument('--use_gpu', action='store_true', help='run on GPU 0 (needs a CUDA build)')
    add_bool(dev, 'enable_mkldnn', True, 'oneDNN kernels on CPU')
    dev.add_argument('--cpu_threads', type=int, default=cpu_threads(), help='CPU math threads')
    dev.add_argument('--precision', default='fp32', choices=PRECISIONS,
                     help='int8: the quantised copies of export_model.py --int8 (inference_int8.pdmodel on paddle, '
                          'model_int8.onnx / openvino_int8.xml), or TensorRT; bf16: on a CPU with bf16 math, '
                          'openvino, or paddle on a --format pdmodel export; fp16: --use_gpu')
    dev.add_argument('--use_tensorrt', action='store_true', help='TensorRT subgraphs (GPU build with TensorRT)')
    add_bool(dev, 'ir_optim', True, 'graph optimisation passes')
    dev.add_argument('--benchmark', action='store_true',
                     help='warm up, then report preprocess/inference/postprocess ms per image and images/s')
    parser.add_argument('--debug', action='store_true', help='full traceback on errors')
    return parser


def _benchmark_line(timings: dict, num_images: int, batch_size: int) -> str:
    per_image = {stage: 1000.0 * seconds / num_images for stage, seconds in timings.items()}
    total = sum(timings.values())
    stages = ', '.join(f'{stage} {ms:.2f} ms' for stage, ms in per_image.items())
    return f'benchmark: {num_images} images, batch {batch_size}: {stages} per image; {num_images / total:.1f} images/s'


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cfg = read_inference_cfg(args.model_dir)
    files = find_images(args.images)
    data_cfg = resolve_data_cfg(cfg['preprocess'], crop_pct=args.crop_pct, crop_mode=args.crop_mode,
                                interpolation=args.interpolation)
    transform = build_transform(is_train=False, **data_cfg)
    run = build_predictor(args.model_dir, cfg, backend=args.backend, model_file=args.model_file,
                          params_file=args.params_file, max_batch_size=args.batch_size, use_gpu=args.use_gpu,
                          enable_mkldnn=args.enable_mkldnn, cpu_threads=args.cpu_threads, precision=args.precision,
                          use_tensorrt=args.use_tensorrt, ir_optim=args.ir_optim)
    classified = classify_images(files, transform, run, to_probs=lambda output: graph_to_probs(output, cfg),
                                 batch_size=args.batch_size, topk=args.topk, label_names=cfg.get('label_names'),
                                 strict=args.strict, warmup_runs=WARMUP_RUNS if args.benchmark else 0)
    notes = ([_benchmark_line(classified.stage_seconds, len(classified.results), args.batch_size)]
             if args.benchmark else [])
    show_results(classified, json_requested=args.json, output_json=args.output_json, notes=notes)
    return 0


if __name__ == '__main__':
    run_main(main)

"""Classify images with an exported model (Paddle Inference, ONNX Runtime or OpenVINO); preprocessing and
labels come from the export folder's inference.yml.

    python infer.py --model_dir inference/cvt_13 --images demo/ --benchmark
    python infer.py --model_dir inference/cvt_13 --images demo/ --backend openvino --precision int8

A --model_file whose folder has no inference.yml (the seed repo's exports) runs with the ImageNet eval
protocol of the registered CvT-13 of --input_size; class count and softmax are read from the graph's output.

Results are shown as predict.py shows them: a table on a terminal, else the JSON list.
"""
import utils.env  # noqa: F401  (first: CPU threads, quiet paddle import)

import argparse
import os
from typing import Optional, Sequence

import numpy as np

from cli import add_image_args, add_result_args, label_names_for, run_main, script_parser
from datasets.transforms import build_transform, resolve_data_cfg
from deploy.classify import classify_images, find_images, show_results
from deploy.layout import CFG_FILE, read_inference_cfg
from deploy.predictors import BACKENDS, PRECISIONS, are_probabilities, build_predictor, graph_to_probs
from models import get_model_cfg
from utils.config import add_bool
from utils.env import cpu_threads
from utils.logger import get_logger

WARMUP_RUNS = 3
# What the seed repo (flytocc/CvT-paddle) exports, as inference.pdmodel/.json and .pdiparams without inference.yml
SEED_MODELS = ('cvt_13_224x224', 'cvt_13_384x384')


def build_parser() -> argparse.ArgumentParser:
    parser = script_parser('infer.py', __doc__)
    io = parser.add_argument_group('model and inputs')
    io.add_argument('--model_dir', metavar='DIR',
                    help="export_model.py output folder (default: --model_file's folder)")
    io.add_argument('--model_file', metavar='FILE', help='graph file (default: DIR/inference.json or .pdmodel)')
    io.add_argument('--params_file', metavar='FILE', help='parameters (default: next to the graph, .pdiparams)')
    add_image_args(io)
    io.add_argument('--label_list', metavar='FILE',
                    help="'id name' lines shown instead of the export's label_names (inference.yml)")
    io.add_argument('--batch_size', type=int, default=1, help='images per predictor run')
    add_result_args(io)
    prep = parser.add_argument_group('preprocessing overrides (default: inference.yml)')
    prep.add_argument('--crop_pct', type=float, help='resize to input_size / crop_pct, then centre-crop')
    prep.add_argument('--crop_mode', choices=('center', 'squash'), help='keep aspect ratio, or resize both sides')
    prep.add_argument('--interpolation', choices=('nearest', 'bilinear', 'bicubic'), help='resize filter')
    graph = parser.add_argument_group(f'a graph without {CFG_FILE} (--model_file of the seed repo\'s exports)')
    graph.add_argument('--input_size', type=int, metavar='PX',
                       help=f'square input side the graph takes (default 224); its protocol is that of '
                            f'{" or ".join(SEED_MODELS)}')
    add_bool(graph, 'with_softmax', None, 'the graph ends in softmax, its outputs are probabilities (default: '
                                          'detected from its output: rows >= 0 that sum to 1)')
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


def seed_model_cfg(input_size: Optional[int]) -> dict:
    """The registered seed variant's cfg for a graph of this input side (224 and 384 have their own protocol),
    else cvt_13_224x224's at that side."""
    cfgs = [get_model_cfg(name) for name in SEED_MODELS]
    if input_size is None:
        return cfgs[0]
    return next((cfg for cfg in cfgs if cfg['input_size'][-1] == input_size),
                dict(cfgs[0], input_size=(3, input_size, input_size)))


def check_flags_against_cfg(args, cfg: dict, path: str) -> None:
    """--input_size and --with_softmax describe a graph without inference.yml; with one they must agree."""
    size = cfg['preprocess']['input_size'][-1]
    if args.input_size is not None and args.input_size != size:
        raise ValueError(f'--input_size {args.input_size}: {path} says the graph takes {size}px; drop --input_size')
    if args.with_softmax is not None and args.with_softmax != cfg['with_softmax']:
        flag = '--with_softmax' if args.with_softmax else '--no_with_softmax'
        raise ValueError(f"{flag}: {path} says with_softmax: {str(cfg['with_softmax']).lower()}; drop {flag}")


def read_graph_outputs(run, data_cfg: dict, with_softmax: Optional[bool], model_file: str, cfg_path: str) -> dict:
    """num_classes and with_softmax of a graph without inference.yml (at `cfg_path`), from one run on a
    mean-colour image (zeros once normalised), and one line that says what is used; softmax is detected
    unless `with_softmax` is given."""
    probe = np.zeros((1, *data_cfg['input_size']), dtype=np.float32)
    try:
        output = np.asarray(run(probe))
    except (ValueError, RuntimeError) as exc:  # Paddle's shape errors: a graph traced at another input side
        reason = next((line.strip() for line in str(exc).splitlines() if 'Error: ' in line), type(exc).__name__)
        raise ValueError(f'{model_file}: the graph does not run on a {list(probe.shape)} input ({reason[:120]}); '
                         f'give --input_size PX, the side it was exported at') from None
    if output.ndim != 2:
        raise ValueError(f'{model_file}: the graph outputs shape {list(output.shape)}, expected (N, num_classes) '
                         f'class scores')
    if with_softmax is None:
        with_softmax = are_probabilities(output)
        softmax = ('its outputs are probabilities (each row >= 0, summing to 1): no softmax (--no_with_softmax '
                   'applies one)' if with_softmax else
                   'its outputs are not probabilities: softmax applied (--with_softmax takes them as they are)')
    else:
        softmax = '--with_softmax: outputs taken as they are' if with_softmax else '--no_with_softmax: softmax applied'
    get_logger('infer').info(
        f"{cfg_path}: not found, so the ImageNet eval protocol is used: "
        f"{data_cfg['input_size'][-1]}px, crop_pct {data_cfg['crop_pct']:g} {data_cfg['crop_mode']}, "
        f"{data_cfg['interpolation']}, ImageNet mean/std (--input_size, --crop_pct, --crop_mode, --interpolation); "
        f"{output.shape[1]} classes; {softmax}")
    return dict(num_classes=output.shape[1], with_softmax=with_softmax)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.model_dir or args.model_file):
        raise ValueError('--model_dir DIR (an export_model.py output folder) or --model_file FILE is required')
    args.model_dir = args.model_dir or os.path.dirname(os.path.abspath(args.model_file))
    cfg_path = os.path.join(args.model_dir, CFG_FILE)
    if args.model_file and not os.path.isfile(cfg_path):
        cfg = {'preprocess': resolve_data_cfg(seed_model_cfg(args.input_size))}
    else:
        cfg = read_inference_cfg(args.model_dir)
        check_flags_against_cfg(args, cfg, cfg_path)
    files = find_images(args.images)
    data_cfg = resolve_data_cfg(cfg['preprocess'], crop_pct=args.crop_pct, crop_mode=args.crop_mode,
                                interpolation=args.interpolation)
    transform = build_transform(is_train=False, **data_cfg)
    run = build_predictor(args.model_dir, cfg, backend=args.backend, model_file=args.model_file,
                          params_file=args.params_file, max_batch_size=args.batch_size, use_gpu=args.use_gpu,
                          enable_mkldnn=args.enable_mkldnn, cpu_threads=args.cpu_threads, precision=args.precision,
                          use_tensorrt=args.use_tensorrt, ir_optim=args.ir_optim)
    if 'num_classes' not in cfg:  # no inference.yml: the graph tells; 1000 classes show ImageNet's names
        cfg.update(read_graph_outputs(run, data_cfg, args.with_softmax, args.model_file, cfg_path))
        cfg['label_names'] = label_names_for(cfg['num_classes'])
    label_names = label_names_for(cfg['num_classes'], args.label_list) if args.label_list else cfg.get('label_names')
    classified = classify_images(files, transform, run, to_probs=lambda output: graph_to_probs(output, cfg),
                                 batch_size=args.batch_size, topk=args.topk, label_names=label_names,
                                 strict=args.strict, warmup_runs=WARMUP_RUNS if args.benchmark else 0)
    notes = ([_benchmark_line(classified.stage_seconds, len(classified.results), args.batch_size)]
             if args.benchmark else [])
    show_results(classified, json_requested=args.json, output_json=args.output_json, notes=notes)
    return 0


if __name__ == '__main__':
    run_main(main)

"""Evaluate a CvT checkpoint, or an exported model, on an ImageNet-style split: top-1/top-5 and loss over
every image.

    python eval.py DATA_DIR --model cvt_13_224x224 --pretrained cvt_13_224x224
    python -m paddle.distributed.launch --nproc_per_node 8 eval.py DATA_DIR --model ... --resume CKPT
    python eval.py DATA_DIR --model_dir inference/cvt_13 --backend openvino --precision int8

With --model_dir the export is scored as deployed: its graph on the chosen backend and precision, with
the preprocessing stored in its inference.yml, counted exactly as the checkpoint eval counts. A checkpoint
runs in dygraph, or with --backend paddle/onnxruntime/openvino through its export, made once and cached.
"""
import utils.env  # noqa: F401  (first: CPU threads, quiet paddle import)

import argparse
from typing import Optional, Sequence

from cli import (DYGRAPH, add_backend_args, add_weight_args, check_amp, check_backend_args, load_model, run_main,
                 script_parser)
from datasets.imagenet import build_dataset
from datasets.loader import build_loader
from datasets.transforms import build_transform, resolve_data_cfg
from deploy.layout import read_inference_cfg
from deploy.cache import checkpoint_predictor
from deploy.predictors import PredictorAsModel, build_predictor
from models import resolve_source
from training.amp import AmpConfig
from training.evaluation import evaluate
from training.graph import to_static
from utils.distributed import init_distributed, is_main_process
from utils.entrypoint import report
from utils.env import default_num_workers


def build_parser() -> argparse.ArgumentParser:
    parser = script_parser('eval.py', __doc__)
    data = parser.add_argument_group('data')
    data.add_argument('data_dir', help='dataset root: class folders in DATA_DIR/val, or the root a list file refers to')
    data.add_argument('--cls_label_path_val', metavar='FILE',
                      help="list of 'relative/path label' lines (default: class folders in DATA_DIR/val)")
    data.add_argument('--batch_size', type=int, default=256, help='images per process and step')
    data.add_argument('--num_workers', type=int, default=default_num_workers(4),
                      help='data loader worker processes per process (default: 4, at most the CPU cores per process)')
    protocol = parser.add_argument_group('eval protocol (default: the variant\'s registered one)')
    protocol.add_argument('--input_size', type=int, metavar='PX', help='square input side')
    protocol.add_argument('--crop_pct', type=float, help='resize to input_size / crop_pct, then centre-crop')
    protocol.add_argument('--crop_mode', choices=('center', 'squash'),
                          help="'center': keep aspect ratio; 'squash': resize both sides")
    protocol.add_argument('--interpolation', choices=('nearest', 'bilinear', 'bicubic'), help='resize filter')
    add_weight_args(parser)
    deployed = parser.add_argument_group('exported model (instead of --model and weights)')
    deployed.add_argument('--model_dir', metavar='EXPORT', help='export_model.py output folder to score')
    runtime = parser.add_argument_group('runtime')
    add_backend_args(runtime, default=None, help=(
        'default: dygraph for a checkpoint, paddle (Paddle Inference) for --model_dir. With a checkpoint, '
        'paddle, onnxruntime or openvino run its export, made once and cached in $CVT_CACHE_DIR/exports '
        '(default ~/.cache/cvt_paddle/exports); onnxruntime and openvino run model.onnx '
        '(for --model_dir: export_model.py --onnx)'), with_int8=True)
    run = parser.add_argument_group('run')
    run.add_argument('--amp', action='store_true', help='autocast (CUDA only), in --amp_dtype')
    run.add_argument('--amp_dtype', default='float16', choices=('float16', 'bfloat16'), help='autocast dtype')
    run.add_argument('--to_static', action='store_true',
                     help='run the dygraph model as one static graph (paddle.jit.to_static; CINN on a GPU with it)')
    run.add_argument('--output_json', metavar='FILE', help='also write the result here')
    run.add_argument('--debug', action='store_true', help='full traceback on errors')
    return parser


def _deployed_model(args):
    """(predictor as a model, its data_cfg, inference.yml) for --model_dir; weight flags do not apply."""
    given = [flag for flag, value in (('--model', args.model), ('--resume', args.resume),
                                      ('--pretrained', args.pretrained), ('--use_ema', args.use_ema),
                                      ('--num_classes', args.num_classes), ('--input_size', args.input_size),
                                      ('--amp', args.amp)) if value]
    if given:
        raise ValueError(f'{given[0]} does not apply with --model_dir (the export fixes the model, weights '
                         f'and input size); drop it')
    cfg = read_inference_cfg(args.model_dir)
    data_cfg = resolve_data_cfg(cfg['preprocess'], crop_pct=args.crop_pct, crop_mode=args.crop_mode,
                                interpolation=args.interpolation)
    run = build_predictor(args.model_dir, cfg, backend=args.backend, max_batch_size=args.batch_size,
                          cpu_threads=args.cpu_threads, precision=args.precision)
    return PredictorAsModel(run, cfg), data_cfg, cfg


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if not (args.model or args.resume or args.pretrained or args.model_dir):
        raise ValueError('--resume CKPT or --pretrained SRC (with --model) is required, or --model_dir EXPORT '
                         'to score an exported model')
    args.backend = args.backend or ('paddle' if args.model_dir else DYGRAPH)
    if args.model_dir and args.backend == DYGRAPH:
        raise ValueError('--backend dygraph runs a checkpoint (--model with --resume/--pretrained), not --model_dir')
    check_backend_args(args)
    if args.to_static and args.backend != DYGRAPH:
        raise ValueError(f'--to_static runs the dygraph model as a static graph; --backend {args.backend} already '
                         f'runs an exported one: drop --to_static')
    amp = AmpConfig(args.amp, args.amp_dtype)
    check_amp(amp)
    rank, world_size = init_distributed()
    if args.model_dir:
        model, data_cfg, export_cfg = _deployed_model(args)
        num_classes = export_cfg['num_classes']
        source = dict(model=export_cfg['model'], model_dir=args.model_dir, backend=args.backend,
                      precision=args.precision)
        class_names, names_of = export_cfg.get('class_names'), f'the export {args.model_dir}'
    else:
        model = load_model(args.model, args.resume, args.pretrained, args.use_ema, args.num_classes)
        num_classes = model.num_classes
        data_cfg = resolve_data_cfg(model.default_cfg, input_size=args.input_size, crop_pct=args.crop_pct,
                                    crop_mode=args.crop_mode, interpolation=args.interpolation)
        class_names, names_of = model.class_names, f"the checkpoint {args.resume or args.pretrained}"
        name = model.default_cfg['architecture']  # --model, or the one the checkpoint records
        if args.backend != DYGRAPH:
            run, export_cfg = checkpoint_predictor(
                model, weights=resolve_source(args.resume or args.pretrained), model_name=name,
                use_ema=args.use_ema, data_cfg=data_cfg, backend=args.backend, precision=args.precision,
                max_batch_size=args.batch_size, cpu_threads=args.cpu_threads)
            model = PredictorAsModel(run, export_cfg)
        elif args.to_static:
            model = to_static(model)
        source = dict(model=name, weights=args.resume or args.pretrained, use_ema=args.use_ema,
                      backend=args.backend, precision=args.precision)
    dataset = build_dataset(args.data_dir, 'val', build_transform(is_train=False, **data_cfg),
                            list_file=args.cls_label_path_val, num_classes=num_classes,
                            bad_image_policy='error',  # a skipped image would change the score
                            class_names=class_names, names_of=names_of)
    loader = build_loader(dataset, args.batch_size, is_train=False, num_replicas=world_size, rank=rank,
                          num_workers=args.num_workers)
    stats = evaluate(model, loader, amp=amp)
    if not is_main_process():
        return 0
    result = dict(**source, acc1=round(stats['acc1'], 3), acc5=round(stats['acc5'], 3), loss=round(stats['loss'], 5),
                  num_images=stats['num_images'], img_size=data_cfg['input_size'][-1],
                  crop_pct=data_cfg['crop_pct'], crop_mode=data_cfg['crop_mode'],
                  interpolation=data_cfg['interpolation'])
    protocol = (f"{result['img_size']}px, crop_pct {result['crop_pct']}, {result['interpolation']}, "
                f"{result['crop_mode']}")
    print(f"* Acc@1 {stats['acc1']:.3f} Acc@5 {stats['acc5']:.3f} loss {stats['loss']:.3f} "
          f"({stats['num_images']} images; {protocol})")
    report(result, args.output_json)
    return 0


if __name__ == '__main__':
    run_main(main)

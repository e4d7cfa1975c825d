"""Classify image files with a CvT checkpoint: top-k class ids, scores and label names.

    python predict.py --images demo/ photo.jpg 'more/*.png' --model cvt_13_224x224 --pretrained cvt_13_224x224
    python predict.py --images demo/ --model cvt_13_224x224 --pretrained cvt_13_224x224 --backend onnxruntime

The model runs in dygraph, or with --backend paddle/onnxruntime/openvino through its export (made once,
cached).

On a terminal the results are a table (file, then top-k `label score`) under a progress bar; piped, for
one image, or with --json they are the JSON list in PaddleClas's shape. Unreadable files are skipped and
listed (--strict stops instead); a summary line on stderr ends the run.
"""
import utils.env  # noqa: F401  (first: CPU threads, quiet paddle import)

import argparse
from typing import Optional, Sequence

import paddle
import paddle.nn.functional as F

from cli import (DYGRAPH, add_backend_args, add_image_args, add_result_args, add_weight_args, check_amp,
                 check_backend_args, label_names_for, load_model, run_main, script_parser)
from datasets.transforms import build_transform, resolve_data_cfg
from deploy.cache import checkpoint_predictor
from deploy.classify import classify_images, find_images, show_results
from deploy.predictors import graph_to_probs
from models import resolve_source
from training.amp import AmpConfig


def build_parser() -> argparse.ArgumentParser:
    parser = script_parser('predict.py', __doc__)
    inputs = parser.add_argument_group('inputs and outputs')
    add_image_args(inputs)
    inputs.add_argument('--label_list', metavar='FILE',
                        help="'id name' lines (default: the class names stored in a train.py checkpoint, else the "
                             "repo's ImageNet list when num_classes is 1000)")
    inputs.add_argument('--batch_size', type=int, default=8, help='images per forward pass')
    add_result_args(inputs)
    add_weight_args(parser)
    protocol = parser.add_argument_group("preprocessing overrides (default: the checkpoint's run, else the variant's)")
    protocol.add_argument('--crop_pct', type=float, help='resize to input_size / crop_pct, then centre-crop')
    protocol.add_argument('--interpolation', choices=('nearest', 'bilinear', 'bicubic'), help='resize filter')
    run = parser.add_argument_group('run')
    add_backend_args(run)
    run.add_argument('--amp', action='store_true', help='autocast to fp16 (CUDA only; fp32 by default)')
    run.add_argument('--debug', action='store_true', help='full traceback on errors')
    return parser


@paddle.no_grad()
def predict_probs(model: paddle.nn.Layer, batch, amp: AmpConfig = AmpConfig()):
    """Softmax probabilities (N, num_classes) as a float32 numpy array, in eval.py's precision for the same flags."""
    with amp.autocast():
        logits = model(paddle.to_tensor(batch))
    return F.softmax(logits.astype('float32'), axis=-1).numpy()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_backend_args(args)
    amp = AmpConfig(args.amp)
    check_amp(amp)
    files = find_images(args.images)
    model = load_model(args.model, args.resume, args.pretrained, args.use_ema, args.num_classes)
    label_names = label_names_for(model.num_classes, args.label_list, model.class_names)
    data_cfg = resolve_data_cfg(model.default_cfg, crop_pct=args.crop_pct, interpolation=args.interpolation)
    if args.backend == DYGRAPH:
        def forward(batch):
            return predict_probs(model, batch, amp)
    else:
        run, export_cfg = checkpoint_predictor(
            model, weights=resolve_source(args.resume or args.pretrained), model_name=model.default_cfg['architecture'],
            use_ema=args.use_ema, data_cfg=data_cfg, backend=args.backend, precision=args.precision,
            max_batch_size=args.batch_size, cpu_threads=args.cpu_threads)

        def forward(batch):
            return graph_to_probs(run(batch), export_cfg)
    classified = classify_images(files, build_transform(is_train=False, **data_cfg), forward,
                                 batch_size=args.batch_size, topk=args.topk, label_names=label_names,
                                 strict=args.strict)
    show_results(classified, json_requested=args.json, output_json=args.output_json)
    return 0


if __name__ == '__main__':
    run_main(main)

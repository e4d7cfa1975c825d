"""Export a CvT model for Paddle Inference (and optionally ONNX), with its preprocessing and labels.

    python export_model.py --model cvt_13_224x224 --pretrained cvt_13_224x224 --output inference/cvt_13 --onnx
    python export_model.py --model cvt_13_224x224 --pretrained cvt_13_224x224 --output inference/cvt_13 --onnx \
        --int8 --calib_images DATA/val --calib_count 300
    python export_model.py --model cvt_13_224x224 --pretrained cvt_13_224x224 --output inference/cvt_13_pdmodel \
        --format pdmodel --int8 --calib_images DATA/val
    python infer.py --model_dir inference/cvt_13 --images demo/
"""
import utils.env  # noqa: F401  (first: CPU threads, quiet paddle import)

import argparse
import json
from typing import Optional, Sequence

from cli import add_weight_args, label_names_for, load_model, run_main, script_parser
from datasets.transforms import build_transform, resolve_data_cfg
from deploy.classify import find_images, preprocess
from deploy.export import (check_onnx_export_available, check_output_dir, check_program_format,
                           export_inference_model, native_program_format)
from deploy.layout import PROGRAM_FORMATS
from deploy.quantize import check_int8_export_available, spread_evenly
from models.cvt import CvTFeatures
from models.export_rewrites import rewrite_for_export


def build_parser() -> argparse.ArgumentParser:
    parser = script_parser('export_model.py', __doc__)
    add_weight_args(parser)
    out = parser.add_argument_group('export')
    out.add_argument('--output', required=True, metavar='DIR',
                     help='folder for inference.json/.pdmodel, inference.pdiparams, inference.yml (replaced whole)')
    out.add_argument('--format', default=native_program_format(), choices=PROGRAM_FORMATS,
                     help='Paddle graph: json (PIR, what Paddle 3 writes) or pdmodel (the legacy program, for stacks '
                          'that read only .pdmodel: Paddle Lite, older Serving); default: what this Paddle writes')
    out.add_argument('--input_size', type=int, metavar='PX', help="square input side (default: the variant's)")
    out.add_argument('--batch_size', type=int, default=-1, help='fixed batch size of the graph; -1: any')
    out.add_argument('--with_softmax', action='store_true', help='put softmax in the graph (outputs probabilities)')
    out.add_argument('--label_list', metavar='FILE',
                     help="'id name' lines stored in inference.yml (default: the class names stored in a "
                          "train.py checkpoint, else the repo's ImageNet list when num_classes is 1000)")
    out.add_argument('--onnx', action='store_true', help='also write model.onnx with paddle2onnx')
    out.add_argument('--features_only', action='store_true',
                     help='export the backbone: one output per stage map in --out_indices (B, C, H, W), no head; '
                          'inference.yml lists their feature_info')
    out.add_argument('--out_indices', type=int, nargs='+', metavar='I',
                     help='stages whose maps a --features_only export outputs (default: all; strides 4/8/16)')
    int8 = parser.add_argument_group('int8 (post-training quantisation of model.onnx and inference.pdmodel)')
    int8.add_argument('--int8', action='store_true',
                      help='with --onnx: also write openvino_int8.xml (NNCF, calibrated) and model_int8.onnx (ONNX '
                           'Runtime); with --format pdmodel: inference_int8.pdmodel (Paddle PTQ, Paddle Inference '
                           'on CPU); for infer.py/eval.py --precision int8')
    int8.add_argument('--calib_images', metavar='DIR',
                      help="images that set the int8 activation ranges, preprocessed as inference.yml says")
    int8.add_argument('--calib_count', type=int, default=128, help='calibration images used (spread over DIR)')
    parser.add_argument('--debug', action='store_true', help='full traceback on errors')
    return parser


def check_features_export(args) -> None:
    """A backbone export has feature maps as outputs: refuse what only a classifier has."""
    if not args.features_only:
        if args.out_indices is not None:
            raise ValueError('--out_indices is read only with --features_only')
        return
    for flag, given in (('--with_softmax', args.with_softmax), ('--label_list', args.label_list),
                        ('--int8', args.int8)):
        if given:
            raise ValueError(f'{flag} applies to a classifier export; drop it or drop --features_only')


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_output_dir(args.output)
    check_program_format(args.format)
    if args.onnx:
        check_onnx_export_available()
    if args.int8:
        check_int8_export_available(args.onnx, args.calib_images, args.calib_count, args.batch_size, args.format)
    elif args.calib_images:
        raise ValueError('--calib_images is read only with --int8')
    check_features_export(args)
    model = load_model(args.model, args.resume, args.pretrained, args.use_ema, args.num_classes)
    name = model.default_cfg['architecture']  # --model, or the one the checkpoint records
    class_names, label_names = model.class_names, label_names_for(model.num_classes, args.label_list,
                                                                  model.class_names)
    if args.features_only:  # a backbone has no classes to name
        model, class_names, label_names = CvTFeatures(model, args.out_indices or range(model.num_stages)), None, None
    data_cfg = resolve_data_cfg(model.default_cfg, input_size=args.input_size)
    calib_batches = None
    if args.int8:  # one (1, 3, H, W) batch per image, preprocessed exactly as inference.yml says
        transform = build_transform(is_train=False, **data_cfg)
        calib_batches = [preprocess([path], transform)
                         for path in spread_evenly(find_images([args.calib_images]), args.calib_count)]
    files = export_inference_model(rewrite_for_export(model), args.output, name, data_cfg,
                                       batch_size=args.batch_size, with_softmax=args.with_softmax,
                                       label_names=label_names, class_names=class_names, onnx=args.onnx,
                                       calib_batches=calib_batches,
                                       feature_info=model.feature_info if args.features_only else None,
                                       program_format=args.format)
    print(json.dumps({'output': args.output, 'files': files, 'model': name,
                      'num_classes': model.num_classes, 'input_size': list(data_cfg['input_size'])}))
    return 0


if __name__ == '__main__':
    run_main(main)

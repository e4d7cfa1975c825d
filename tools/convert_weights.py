"""Convert CvT weights from any public source (official .pth, Hugging Face, PaddleClas) to a .pdparams file.

    python tools/convert_weights.py CvT-13-224x224-IN-1k.pth weights/cvt_13_224x224.pdparams --model cvt_13_224x224
    python tools/convert_weights.py cvt_13_384x384.hf_in22k weights/cvt_13_384_22k.pdparams --model cvt_13_384x384
    python tools/convert_weights.py --list

SRC is a path, an http(s) URL or a known tag (--list prints every tag with its URL and cache path). The
result is verified by loading it strictly into the named model before it is written; no torch is needed.
"""
import _bootstrap  # noqa: F401  (first: repo root on sys.path, then utils.env)

import argparse
import json

from cli import run_main, script_parser
from models import create_model, load_weights
from models.cvt_weights import PRETRAINED_URLS
from utils.download import cache_path
from utils.weights import save_state_dict


def build_parser() -> argparse.ArgumentParser:
    parser = script_parser('tools/convert_weights.py', __doc__)
    parser.add_argument('src', nargs='?', help='weight file, http(s) URL or known tag')
    parser.add_argument('dst', nargs='?', help='output .pdparams path')
    parser.add_argument('--model', help='registered model name, e.g. cvt_13_224x224')
    parser.add_argument('--num_classes', type=int, default=None,
                        help="classifier size of the checkpoint (default: the model's, 1000)")
    parser.add_argument('--key', default=None, help="checkpoint entry to convert, e.g. 'model_ema'")
    parser.add_argument('--list', action='store_true',
                        help='print every known tag, its source URL and where the download is cached, then exit')
    parser.add_argument('--debug', action='store_true', help='full traceback on errors')
    return parser


def list_tags() -> None:
    """Each tag with its URL and cache path (a file placed there makes the tag work offline)."""
    for model, urls in PRETRAINED_URLS.items():
        for index, (source, url) in enumerate(urls.items()):
            tag = f'{model}.{source}' + (f' (also: {model})' if index == 0 else '')
            print(f'{tag:50} {url}\n{"":50} cache: {cache_path(url)}')


def convert(args: argparse.Namespace) -> dict:
    overrides = {} if args.num_classes is None else {'num_classes': args.num_classes}
    model = create_model(args.model, **overrides)
    report = load_weights(model, args.src, key=args.key)
    save_state_dict(model.state_dict(), args.dst)
    n_params = sum(int(p.size) for p in model.parameters() if not p.stop_gradient)  # trainable: BN statistics are not
    return dict(src=args.src, dst=args.dst, model=args.model, format=report['format'],
                tensors=report['loaded'], params=n_params)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        list_tags()
        return 0
    if not (args.src and args.dst and args.model):
        parser.error('expected SRC DST --model NAME (or --list)')
    print(json.dumps(convert(args)))
    return 0


if __name__ == '__main__':
    run_main(main)

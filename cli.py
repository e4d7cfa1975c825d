"""What the scripts share: one-line errors (`run_main`, from utils.entrypoint), their parsers and flags
(weights, images, results), loading a model for inference, and the class names that go with it."""
import utils.env  # noqa: F401  (first: CPU threads, quiet paddle import)

import argparse
import os
import re
import sys
from typing import List, Optional, Sequence

from datasets.imagenet import read_label_names
from datasets.transforms import resolve_data_cfg
from deploy.predictors import BACKENDS
from models import create_model, load_weights, resolve_source
from training.amp import AmpConfig
from utils.config import ArgumentParser, HelpFormatter
from utils.entrypoint import run_main  # noqa: F401  (the scripts' entry, taken from here with the rest)
from utils.env import cpu_threads
from utils.weights import read_weight_file, recorded_run

REPO_ROOT = os.path.dirname(os.path.abspath(__file__))
IMAGENET_LABELS = os.path.join(REPO_ROOT, 'datasets', 'imagenet1k_label_list.txt')
NO_WEIGHTS_HINT = ('no weights given: pass --resume CKPT (a checkpoint written by train.py) or --pretrained SRC '
                   '(a tag such as cvt_13_224x224, a URL, or a .pdparams file made by tools/convert_weights.py)')


def script_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """Parser whose description is the first paragraph of the script's docstring; defaults shown when set."""
    summary = ' '.join(doc.strip().split('\n\n')[0].split())
    return ArgumentParser(prog=prog, description=summary, formatter_class=HelpFormatter, allow_abbrev=False)


def add_weight_args(parser: argparse.ArgumentParser) -> None:
    """--model, --resume/--pretrained, --use_ema and --num_classes, as eval/predict/export share them."""
    group = parser.add_argument_group('model and weights')
    group.add_argument('--model', help='registered model name, e.g. cvt_13_224x224 (default: the model a train.py '
                                       'checkpoint records)')
    source = group.add_mutually_exclusive_group()
    source.add_argument('--resume', metavar='CKPT', help='checkpoint of this repo (train.py output) or .pdparams')
    source.add_argument('--pretrained', metavar='SRC',
                        help='pretrained tag, URL or weights file (official .pth, HF, PaddleClas)')
    group.add_argument('--use_ema', action='store_true', help="load the checkpoint's EMA weights ('model_ema')")
    group.add_argument('--num_classes', type=int, default=None,
                       help="classifier size when it differs from the variant's (default: the variant's)")


DYGRAPH = 'dygraph'  # the model itself, in Paddle's eager mode
BACKEND_HELP = ('dygraph: the checkpoint\'s model in Paddle\'s eager mode; paddle (Paddle Inference), onnxruntime '
                'or openvino: its export, made once and cached in $CVT_CACHE_DIR/exports (default '
                '~/.cache/cvt_paddle/exports), then run by that runtime')


def add_backend_args(group, default: Optional[str] = DYGRAPH, help: str = BACKEND_HELP,
                     with_int8: bool = False) -> None:
    """--backend, --precision and --cpu_threads, as eval.py and predict.py share them; `with_int8` for a
    script that also runs exports (int8 needs export_model.py's calibrated copy)."""
    group.add_argument('--backend', default=default, choices=(DYGRAPH,) + BACKENDS, help=help)
    group.add_argument('--precision', default='fp32', choices=('fp32', 'bf16') + (('int8',) if with_int8 else ()),
                       help='bf16: openvino on a CPU with bf16 math'
                            + ('; int8: the export_model.py --int8 model (--model_dir only)' if with_int8 else ''))
    group.add_argument('--cpu_threads', type=int, default=cpu_threads(),
                       help='CPU math threads of the runtime (not dygraph)')


def check_backend_args(args: argparse.Namespace) -> None:
    """One-line refusals: --precision without a runtime that reads it, --amp with one."""
    if args.backend == DYGRAPH and args.precision != 'fp32':
        raise ValueError(f'--precision {args.precision} chooses how an export runs: add --backend paddle, '
                         f'onnxruntime or openvino (dygraph runs fp32, or --amp on a GPU)')
    if args.backend != DYGRAPH and args.amp:
        raise ValueError(f'--amp is dygraph autocast; --backend {args.backend} runs --precision instead')


def load_model(name: Optional[str], resume: Optional[str] = None, pretrained: Optional[str] = None,
               use_ema: bool = False, num_classes: Optional[int] = None):
    """Create `name` (default: the model a train.py checkpoint records), load its weights strictly (EMA copy
    with `use_ema`) and switch to eval mode; `model.default_cfg['architecture']` names it.

    A train.py checkpoint means the same whichever of `resume`/`pretrained` names it: its run's num_classes
    and eval preprocessing (input_size, crop_pct, interpolation) become the model's, unless given here
    (num_classes) or by flags later (the protocol). `model.class_names` is its training data's class names
    by label id (None for weights without them, e.g. released ones).
    """
    if not (resume or pretrained):
        raise ValueError(NO_WEIGHTS_HINT)
    path = resolve_source(resume or pretrained)
    content = read_weight_file(path)  # once: a checkpoint gives its run settings and its weights
    run_args, class_names = recorded_run(path, content)
    name = name or run_args.get('model')
    if not name:
        raise ValueError(f'--model is required: {resume or pretrained} does not record its model (train.py '
                         f'checkpoints do); e.g. --model cvt_13_224x224')
    num_classes = num_classes or run_args.get('num_classes')
    model = create_model(name, **({'num_classes': num_classes} if num_classes else {}))
    load_weights(model, path, key='model_ema' if use_ema else None, content=content)
    if run_args:
        model.default_cfg.update(resolve_data_cfg(model.default_cfg, **{
            k: run_args.get(k) for k in ('input_size', 'crop_pct', 'interpolation')}))
    model.class_names = class_names
    model.eval()
    return model


def check_amp(amp: AmpConfig) -> None:
    """AMP is a GPU feature in Paddle: on CPU autocast runs in fp32, so say so once (stderr) and go on."""
    note = amp.cpu_note()
    if note:
        print(f'note: {note}', file=sys.stderr)


IMAGES_HELP = 'image files, folders (searched recursively) or glob patterns'


def add_image_args(group, required: bool = True, help: str = IMAGES_HELP) -> None:
    """--images PATH ..., as predict.py, infer.py and tools/check_export.py share it.

    The reference repos' spellings stay as aliases: --infer_imgs (PaddleClas predict) and --input_file
    (PaddleClas deploy).
    """
    group.add_argument('--images', '--infer_imgs', '--input_file', dest='images', nargs='+', required=required,
                       metavar='PATH', help=help)


def add_result_args(group) -> None:
    """--topk, --json, --output_json and --strict, as predict.py and infer.py share them."""
    group.add_argument('--topk', type=int, default=5, help='classes reported per image')
    group.add_argument('--json', action='store_true',
                       help='print the JSON list instead of the table on a terminal (piped output is always JSON)')
    group.add_argument('--output_json', metavar='FILE', help='also write all results here as JSON')
    group.add_argument('--strict', action='store_true',
                       help='stop at the first unreadable image (default: skip it, list it on stderr, count it)')


# ImageNet-1k's class folders: 1000 WordNet ids whose sorted order is the official label order (that of
# IMAGENET_LABELS), from n01440764 (tench) to n15075141 (toilet tissue). The repo ships no full wnid list;
# another 1000 wnids (an ImageNet-21k subset) would not start and end with these two.
WNID = re.compile(r'n\d{8}')
IMAGENET_FIRST_LAST_WNIDS = ('n01440764', 'n15075141')


def is_imagenet_1k_folders(class_names: Sequence[str]) -> bool:
    return (len(class_names) == 1000 and (class_names[0], class_names[-1]) == IMAGENET_FIRST_LAST_WNIDS
            and all(WNID.fullmatch(name) for name in class_names))


def label_names_for(num_classes: int, label_list: Optional[str] = None,
                    class_names: Optional[Sequence[str]] = None) -> Optional[List[str]]:
    """Names to show for each class id: from `label_list` ('id name' lines), else the training data's
    `class_names` (a checkpoint's), else None; ImageNet's wnid folders, and 1000 classes without names,
    show the repo's ImageNet names."""
    if label_list is None and class_names is not None and not is_imagenet_1k_folders(class_names):
        if len(class_names) != num_classes:
            raise ValueError(f"the checkpoint's class_names has {len(class_names)} names, expected {num_classes} "
                             f"(the model's num_classes): pass --label_list FILE")
        return list(class_names)
    path = label_list or (IMAGENET_LABELS if num_classes == 1000 else None)
    if path is None:
        return None
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: label list not found')
    names = read_label_names(path)
    if len(names) != num_classes:
        raise ValueError(f'{path}: {len(names)} labels, expected {num_classes} (the model\'s num_classes)')
    return names


"""The export folder's layout: its file names, the graph's input name, and inference.yml (read and written here).

An export holds inference.json (Paddle 3, PIR) or inference.pdmodel (the legacy program: Paddle 2.x, or
export_model.py --format pdmodel), inference.pdiparams, inference.yml (model name, num_classes, with_softmax,
resolved eval preprocessing, label names to show, the training data's class names) and, with ONNX,
model.onnx; export_model.py --int8 adds quantised copies (of model.onnx, and of inference.pdmodel). infer.py
needs nothing outside the folder.
"""
import os
from typing import Optional, Tuple

import yaml

MODEL_PREFIX = 'inference'
PROGRAM_FORMATS = ('json', 'pdmodel')  # PIR (Paddle 3), the legacy program (Paddle 2.x; Paddle 3 on request)
MODEL_FILES = tuple(f'{MODEL_PREFIX}.{fmt}' for fmt in PROGRAM_FORMATS)
CFG_FILE = f'{MODEL_PREFIX}.yml'
ONNX_FILE = 'model.onnx'
# export_model.py --int8: quantised copies of model.onnx, for ONNX Runtime (dynamic int8 MatMuls) and OpenVINO (IR)
INT8_ONNX_FILE = 'model_int8.onnx'
INT8_OPENVINO_FILE = 'openvino_int8.xml'  # weights in openvino_int8.bin
# export_model.py --format pdmodel --int8: the legacy program quantised by Paddle's post-training quantisation,
# for Paddle Inference --precision int8 on CPU (oneDNN)
INT8_PADDLE_FILES = (f'{MODEL_PREFIX}_int8.pdmodel', f'{MODEL_PREFIX}_int8.pdiparams')
INPUT_NAME = 'x'
PREPROCESS_KEYS = ('input_size', 'interpolation', 'crop_pct', 'crop_mode', 'mean', 'std')


def find_model_files(model_dir: str, model_file: Optional[str] = None,
                     params_file: Optional[str] = None) -> Tuple[str, str]:
    """(graph file, params file) of an export folder; explicit files win over the folder's."""
    if model_file is None:
        if not os.path.isdir(model_dir):
            raise FileNotFoundError(f'{model_dir}: model folder not found (expected the output of export_model.py)')
        candidates = [os.path.join(model_dir, name) for name in MODEL_FILES]
        model_file = next((p for p in candidates if os.path.isfile(p)), None)
        if model_file is None:
            raise FileNotFoundError(f'{model_dir}: no {" or ".join(MODEL_FILES)} found '
                                    f'(expected the output of export_model.py)')
    elif not os.path.isfile(model_file):
        raise FileNotFoundError(f'{model_file}: model file not found (expected a .json or .pdmodel graph)')
    if not model_file.endswith(('.json', '.pdmodel')):
        raise ValueError(f'{model_file}: expected a .json or .pdmodel graph file')
    params_file = params_file or os.path.splitext(model_file)[0] + '.pdiparams'
    if not os.path.isfile(params_file):
        raise FileNotFoundError(f'{params_file}: parameters file not found (expected next to {model_file})')
    return model_file, params_file


def read_inference_cfg(model_dir: str) -> dict:
    """inference.yml of an export folder, checked for the keys infer.py reads."""
    path = os.path.join(model_dir, CFG_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: not found (expected the {CFG_FILE} that export_model.py writes)')
    with open(path, encoding='utf-8') as f:
        cfg = yaml.safe_load(f)
    if not isinstance(cfg, dict):
        raise ValueError(f'{path}: expected a mapping, found {type(cfg).__name__}')
    if cfg.get('feature_info'):
        raise ValueError(f'{path}: a features-only export (export_model.py --features_only): its outputs are '
                         f'feature maps, not class scores; run it with paddle.inference (README, '
                         f'"CvT as a backbone")')
    for key in ('model', 'num_classes', 'with_softmax', 'preprocess'):
        if key not in cfg:
            raise KeyError(f"{path}: missing key '{key}'")
    missing = [k for k in PREPROCESS_KEYS if k not in (cfg['preprocess'] or {})]
    if missing:
        raise KeyError(f"{path}: missing key 'preprocess.{missing[0]}'")
    for key in ('label_names', 'class_names'):
        names = cfg.get(key)
        if names is not None and len(names) != cfg['num_classes']:
            raise ValueError(f"{path}: {len(names)} {key}, expected num_classes = {cfg['num_classes']}")
    return cfg


def write_inference_cfg(folder: str, cfg: dict) -> None:
    """inference.yml into `folder`, in the order `cfg` gives its keys."""
    with open(os.path.join(folder, CFG_FILE), 'w', encoding='utf-8') as f:
        yaml.safe_dump(cfg, f, sort_keys=False, allow_unicode=True)

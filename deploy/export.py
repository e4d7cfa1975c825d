"""Writing the export folder: the static graph traced from the model (PIR's inference.json or the legacy
inference.pdmodel), inference.yml and, optionally, ONNX (and the int8 copies of deploy/quantize.py), built
under a temporary name and swapped into place whole."""
import contextlib
import os
import shutil
from typing import List, Optional, Sequence

import numpy as np
import paddle
import paddle.nn.functional as F

from models.layers import portable_attention
from utils.env import dropped_output_lines
from utils.fileio import storage_errors, sync_folder

from .layout import (CFG_FILE, INPUT_NAME, MODEL_PREFIX, ONNX_FILE, PREPROCESS_KEYS, PROGRAM_FORMATS,
                     find_model_files, write_inference_cfg)
from .quantize import quantize_onnx, quantize_paddle_program

ONNX_OPSET = 17  # first opset with a native LayerNormalization
ONNX_PACKAGES = 'pip install paddle2onnx onnxruntime onnx-graphsurgeon sympy'
# What tracing and saving print from C++ on every export of this model (glog lines, so with a varying prefix).
STATIC_EXPORT_NOISE = (
    # Paddle 3, on tracing an API that has an `out=` argument (softmax); none is passed here
    'Paddle static graph(PIR) not support input out tensor for now',
    'New Executor is Running',  # Paddle 2.6
)
# paddle2onnx's progress lines and its Polygraphy constant folding's, printed on every export.
ONNX_EXPORT_NOISE = (
    '[Paddle2ONNX] Start parsing the Paddle model file',
    '[Paddle2ONNX] Use opset_version',
    '[Paddle2ONNX] PaddlePaddle model is exported as ONNX format now',
    'Try to perform constant folding on the ONNX model with Polygraphy',
    "'colored' module is not installed",
    '[I] Folding Constants',
    '[I]     Total Nodes',
    # ONNX Runtime's symbolic shape inference fails on this graph (onnxruntime installed or not); the
    # fallback works, and the advice to install ONNX Runtime does not apply
    'Falling back to `onnx.shape_inference`',
    'Note that using ONNX-Runtime for shape inference may be faster',
    'Consider installing ONNX-Runtime',
    'ONNX model saved in',  # names the staging folder, renamed into place afterwards
)


def check_onnx_export_available() -> None:
    """Fail before any work when paddle2onnx is missing (it would otherwise pip-install its helpers mid-export)
    or unusable (paddle2onnx 2.x refuses to import under Paddle 2.x)."""
    for module in ('paddle2onnx', 'onnx_graphsurgeon'):
        try:
            __import__(module)
        except ImportError:
            raise ValueError(f'--onnx needs {module}, which is not installed: {ONNX_PACKAGES}') from None
        except ValueError as e:
            raise ValueError(f'--onnx: {module} cannot run with this Paddle {paddle.__version__} '
                             f'({str(e).splitlines()[0][:120]}); on Paddle 2.x use paddle2onnx<2') from None


def native_program_format() -> str:
    """What paddle.jit.save writes on the installed Paddle: 'json' (PIR) where the PIR API is on, as on
    Paddle 3, else 'pdmodel' (the legacy program, as on Paddle 2.6)."""
    return 'json' if paddle.framework.use_pir_api() else 'pdmodel'


def check_program_format(program_format: str) -> None:
    """Refuse, in one line, a --format the installed Paddle cannot write."""
    if program_format not in PROGRAM_FORMATS:
        raise ValueError(f"--format must be one of {', '.join(PROGRAM_FORMATS)}, got '{program_format}'")
    if program_format == native_program_format():
        return
    if program_format == 'json':
        raise ValueError(f'--format json: Paddle {paddle.__version__} writes only the legacy program '
                         f'(inference.pdmodel); inference.json needs Paddle 3 with its PIR API on; '
                         f'use --format pdmodel')
    if not hasattr(getattr(paddle, 'pir_utils', None), 'DygraphOldIrGuard'):
        raise ValueError(f'--format pdmodel: Paddle {paddle.__version__} offers no switch to the legacy program '
                         f'(paddle.pir_utils.DygraphOldIrGuard); use --format json')


def _plain(value):
    """Tuples and numpy scalars as YAML-safe lists and numbers."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, 'item') else value


def export_inference_model(model, output_dir: str, model_name: str, data_cfg: dict, *, batch_size: int = -1,
                           with_softmax: bool = False, label_names: Optional[Sequence[str]] = None,
                           class_names: Optional[Sequence[str]] = None, onnx: bool = False,
                           calib_batches: Optional[Sequence[np.ndarray]] = None,
                           feature_info: Optional[Sequence[dict]] = None,
                           program_format: Optional[str] = None) -> List[str]:
    """Export `model` for deployment into `output_dir`; returns the written file names. `model` is traced
    as given: pass `models.export_rewrites.rewrite_for_export(model)` for the deployed form.

    A backbone (models.cvt.CvTFeatures) has one graph output per feature map; its `feature_info` goes into
    inference.yml, which marks the folder as one that infer.py/eval.py do not classify with.

    `program_format` ('json' or 'pdmodel'; default: what the installed Paddle writes) is the Paddle
    Inference graph's format; a pdmodel on Paddle 3 needs the rewritten model (its QuickGELU's sigmoid
    is, like paddle.matmul, a C function that takes PIR values only; see `_legacy_program`). ONNX is always
    converted from the installed Paddle's own format: paddle2onnx 2.x translates a legacy program to PIR
    first, and that translation of this model crashes (segfault in paddle2onnx 2.1.0, at the class token's
    expand_v2), so on Paddle 3 a pdmodel export traces PIR once more for it.

    With `calib_batches` (needs `onnx` or a pdmodel), the int8 copies of deploy/quantize.py are written too.
    `label_names` are what infer.py shows; `class_names` (the training data's, e.g. its folder names)
    are what eval.py --model_dir checks the val folders against.

    The folder is built under a temporary name next to `output_dir` and renamed into place, so a
    failed export never leaves a half-written folder, and a previous export is replaced whole.
    """
    check_output_dir(output_dir)
    program_format = program_format or native_program_format()
    check_program_format(program_format)
    if onnx:
        check_onnx_export_available()
    if batch_size < 1 and batch_size != -1:
        raise ValueError(f'--batch_size must be -1 (dynamic) or >= 1, got {batch_size}')
    output_dir = os.path.abspath(output_dir)
    staging = os.path.join(os.path.dirname(output_dir), f'.{os.path.basename(output_dir)}.tmp{os.getpid()}')
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed export of this pid, never another's
    with storage_errors(output_dir):  # a read-only folder names --output, not the staging folder
        os.makedirs(staging)
    try:
        _save_static(model, staging, data_cfg['input_size'], batch_size, with_softmax, program_format)
        cfg = dict(model=model_name, num_classes=int(model.num_classes), with_softmax=bool(with_softmax),
                   batch_size=int(batch_size),
                   preprocess={k: _plain(data_cfg[k]) for k in PREPROCESS_KEYS},
                   label_names=list(label_names) if label_names else None,
                   class_names=list(class_names) if class_names else None,
                   int8_calibration_images=len(calib_batches) if calib_batches else None)
        if feature_info:
            cfg['feature_info'] = [dict(info) for info in feature_info]
        write_inference_cfg(staging, cfg)
        if onnx:
            source, native = staging, native_program_format()
            if program_format != native:
                source = os.path.join(staging, 'onnx_source')
                os.makedirs(source)
                _save_static(model, source, data_cfg['input_size'], batch_size, with_softmax, native)
            _export_onnx(*find_model_files(source), os.path.join(staging, ONNX_FILE))
            if source != staging:
                shutil.rmtree(source)
        if calib_batches and onnx:
            quantize_onnx(os.path.join(staging, ONNX_FILE), staging, calib_batches)
        if calib_batches and program_format == 'pdmodel':
            quantize_paddle_program(staging, calib_batches)
        _swap_into_place(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sorted(os.listdir(output_dir))


def check_output_dir(output_dir: str) -> None:
    """Refuse an --output that is not empty and not a previous export: replacing a folder deletes it."""
    if os.path.exists(output_dir):
        if not os.path.isdir(output_dir):
            raise ValueError(f'{output_dir}: exists and is not a folder (expected an export output folder)')
        if os.listdir(output_dir) and not os.path.isfile(os.path.join(output_dir, CFG_FILE)):
            raise ValueError(f'{output_dir}: folder is not empty and holds no {CFG_FILE}; '
                             f'refusing to replace it (choose a new --output)')


class InferenceModel(paddle.nn.Layer):
    """What is traced: the model, with softmax on top when asked."""

    def __init__(self, model: paddle.nn.Layer, with_softmax: bool):
        super().__init__()
        self.model = model
        self.with_softmax = with_softmax

    def forward(self, x):
        out = self.model(x)
        return F.softmax(out, axis=-1) if self.with_softmax else out


def _save_static(model, folder: str, input_size: Sequence[int], batch_size: int, with_softmax: bool,
                 program_format: str) -> None:
    """Trace and save the deployed graph: the whole of it happens here (one place to wrap in a context), with
    attention traced as explicit matmul/softmax ops whatever device traces it (models.layers.portable_attention)."""
    layer = InferenceModel(model, with_softmax)
    layer.eval()
    shape = [None if batch_size == -1 else batch_size] + [int(s) for s in input_size]
    spec = [paddle.static.InputSpec(shape=shape, dtype='float32', name=INPUT_NAME)]
    legacy = program_format != native_program_format()  # checked: only pdmodel on a PIR Paddle gets here
    with dropped_output_lines(STATIC_EXPORT_NOISE), portable_attention(), \
            (_legacy_program() if legacy else contextlib.nullcontext()):
        static = paddle.jit.to_static(layer, input_spec=spec, full_graph=True)
        paddle.jit.save(static, os.path.join(folder, MODEL_PREFIX))


@contextlib.contextmanager
def _legacy_program():
    """Trace into Paddle's legacy program on a PIR Paddle (3.3.1 tested), as Paddle's own QAT save does
    (DygraphOldIrGuard: FLAGS_enable_pir_api off for the trace, back on after). Two of this model's paths
    fail there: F.scaled_dot_product_attention ('tuple' object has no attribute 'numel'), avoided by the
    explicit softmax every export traces; and paddle.matmul, which Paddle 3.3 binds to a C function taking PIR
    values only ('matmul(): argument (position 1) must be Value, but got Variable'), so it gets the legacy
    matmul_v2."""
    matmul = paddle.matmul
    paddle.matmul = _matmul_for_legacy_program(matmul)
    try:
        with paddle.pir_utils.DygraphOldIrGuard():
            yield
    finally:
        paddle.matmul = matmul


def _matmul_for_legacy_program(matmul):
    """`matmul` whose legacy-program Variables become a matmul_v2 op, as Paddle 2.6's paddle.matmul appends it."""
    from paddle.base.framework import Variable
    from paddle.base.layer_helper import LayerHelper

    @paddle.jit.not_to_static
    def traced(x, y, transpose_x=False, transpose_y=False, name=None):
        if not isinstance(x, Variable):
            return matmul(x, y, transpose_x, transpose_y, name)
        helper = LayerHelper('matmul_v2')
        out = helper.create_variable_for_type_inference(dtype=x.dtype)
        helper.append_op(type='matmul_v2', inputs={'X': x, 'Y': y}, outputs={'Out': out},
                         attrs={'trans_x': transpose_x, 'trans_y': transpose_y})
        return out
    return traced


def _export_onnx(model_file: str, params_file: str, onnx_file: str) -> None:
    import paddle2onnx
    with dropped_output_lines(ONNX_EXPORT_NOISE):
        paddle2onnx.export(model_file, params_file, onnx_file, opset_version=ONNX_OPSET)
    if not os.path.isfile(onnx_file):
        raise ValueError(f'{onnx_file}: paddle2onnx wrote no model (see its log above)')


def _swap_into_place(staging: str, output_dir: str) -> None:
    """Rename the finished `staging` folder to `output_dir` (replacing a previous export), durably."""
    sync_folder(staging)
    if not os.path.exists(output_dir):
        os.rename(staging, output_dir)
        sync_folder(os.path.dirname(output_dir))
        return
    retired = staging + '.old'
    os.rename(output_dir, retired)
    try:
        os.rename(staging, output_dir)
    except OSError:
        os.rename(retired, output_dir)  # put the previous export back
        raise
    sync_folder(os.path.dirname(output_dir))
    shutil.rmtree(retired, ignore_errors=True)

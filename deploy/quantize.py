"""Post-training int8 quantisation of an export, calibrated on the user's images with the export's own eval
preprocessing: of model.onnx, an OpenVINO IR quantised by NNCF and an ONNX Runtime copy with dynamically
quantised MatMuls (its fastest int8 form for this graph, measured; see README Speed); of the legacy program
(inference.pdmodel), Paddle's own post-training quantisation, for Paddle Inference's oneDNN int8."""
import logging
import os
from contextlib import contextmanager
from typing import List, Optional, Sequence

import numpy as np
import paddle

from utils.env import dropped_output_lines

from .layout import INPUT_NAME, INT8_ONNX_FILE, INT8_OPENVINO_FILE, INT8_PADDLE_FILES, MODEL_PREFIX


INT8_PACKAGES = 'pip install nncf openvino onnxruntime'


# The ops whose weights and inputs Paddle's PTQ quantises: the convolutions and every matmul (the Linear
# layers and both attention products); oneDNN runs them int8 and the rest fp32
PADDLE_INT8_OPS = ('conv2d', 'depthwise_conv2d', 'matmul_v2')
# What Paddle's PTQ prints on every run: its steps, progress bars, a deprecation of its own loader call, and
# the folder it saved to (the staging folder, renamed into place afterwards)
PADDLE_PTQ_NOISE = ('Load model and set data loader', 'The old way to load inference model is deprecated',
                    'Collect quantized variable names', 'Sampling stage', 'Update the program', 'Adding quant',
                    'The quantized model is saved in', 'New Executor is Running')


def check_int8_export_available(onnx: bool, calib_images: Optional[str], calib_count: int, batch_size: int,
                                program_format: str = 'json') -> None:
    """Fail before any work on flags that cannot give an int8 model."""
    if not onnx and program_format != 'pdmodel':
        raise ValueError('--int8 quantises model.onnx or inference.pdmodel: add --onnx, or --format pdmodel '
                         '(Paddle Inference int8)')
    if batch_size != -1:
        raise ValueError('--int8 calibrates one image at a time: export with --batch_size -1 (any batch)')
    if not calib_images:
        raise ValueError('--int8 needs --calib_images DIR (a few hundred images like the ones the model will see)')
    if calib_count < 1:
        raise ValueError(f'--calib_count must be >= 1, got {calib_count}')
    for module in ('nncf', 'openvino', 'onnxruntime') if onnx else ():
        try:
            __import__(module)
        except ImportError:
            raise ValueError(f'--int8 needs {module}, which is not installed: {INT8_PACKAGES}') from None


def spread_evenly(files: List[str], count: int) -> List[str]:
    """Up to `count` of the sorted `files`, evenly spaced, so every class folder gives calibration images."""
    if len(files) <= count:
        return files
    return [files[i] for i in np.linspace(0, len(files) - 1, count).round().astype(int)]


def quantize_onnx(onnx_file: str, output_dir: str, batches: List[np.ndarray]) -> List[str]:
    """Write the int8 copies of `onnx_file` into `output_dir`; returns their names.

    OpenVINO: NNCF's transformer preset (activation ranges from `batches`, softmax, LayerNorm and the
    residual adds kept fp32, SmoothQuant and bias correction), saved as IR because OpenVINO cannot read
    NNCF's QDQ ONNX of this graph; on AVX2 without VNNI neither the default preset, nor attention kept
    fp32, nor weight-only int8 ran faster (README Speed). ONNX Runtime: its MatMuls with int8 weights
    and activation ranges taken per batch at run time; its kernels run NNCF's static QDQ graph slower
    than fp32 here.
    """
    import nncf
    import openvino
    from onnxruntime.quantization import QuantType, quantize_dynamic
    with _root_log_level(logging.ERROR):  # its root-logger chatter: a line per tensor, generic advice
        quantize_dynamic(onnx_file, os.path.join(output_dir, INT8_ONNX_FILE), op_types_to_quantize=['MatMul'],
                         weight_type=QuantType.QInt8)
    quantized = nncf.quantize(openvino.Core().read_model(onnx_file), nncf.Dataset(batches),
                              model_type=nncf.ModelType.TRANSFORMER, subset_size=len(batches))
    # fp32 weights kept for the ops left unquantised (save_model would store them as fp16)
    openvino.save_model(quantized, os.path.join(output_dir, INT8_OPENVINO_FILE), compress_to_fp16=False)
    return [INT8_ONNX_FILE, INT8_OPENVINO_FILE]


def quantize_paddle_program(folder: str, batches: Sequence[np.ndarray]) -> List[str]:
    """Write `folder`/inference_int8.pdmodel/.pdiparams: `folder`/inference.pdmodel quantised by Paddle's
    post-training quantisation (activation ranges: the largest magnitude seen over `batches`; per-channel
    weight scales), which Paddle Inference runs int8 with oneDNN (`enable_mkldnn_int8`). Returns their names.
    KL ranges kept the same top-1 on the digits model and took ~15x longer to calibrate (a histogram per
    activation in Python)."""
    from paddle.static.quantization import PostTrainingQuantization
    with dropped_output_lines(PADDLE_PTQ_NOISE), _legacy_static_mode():
        ptq = PostTrainingQuantization(
            executor=paddle.static.Executor(paddle.CPUPlace()), model_dir=folder,
            model_filename=f'{MODEL_PREFIX}.pdmodel', params_filename=f'{MODEL_PREFIX}.pdiparams',
            data_loader=_CalibrationFeeds(batches), batch_nums=len(batches), algo='abs_max',
            quantizable_op_type=list(PADDLE_INT8_OPS), weight_quantize_type='channel_wise_abs_max')
        ptq.quantize()
        ptq.save_quantized_model(folder, model_filename=INT8_PADDLE_FILES[0], params_filename=INT8_PADDLE_FILES[1])
    return list(INT8_PADDLE_FILES)


class _CalibrationFeeds(paddle.io.DataLoader):
    """The calibration batches as PTQ reads its `data_loader`: called, it yields one feed dict per batch.
    A DataLoader only for the type check of Paddle 2.6's PTQ (Paddle 3.3 takes any callable)."""

    def __init__(self, batches: Sequence[np.ndarray]):  # no super().__init__: nothing of a real loader is used
        self.batches = batches

    def __call__(self):
        return ({INPUT_NAME: batch} for batch in self.batches)

    def __len__(self):
        return len(self.batches)


@contextmanager
def _legacy_static_mode():
    """Static mode with the legacy program, which Paddle's PTQ reads and writes: Paddle 3 switches its PIR
    API off for the block (OldIrGuard), Paddle 2.6 has only the legacy program."""
    guard = getattr(getattr(paddle, 'pir_utils', None), 'OldIrGuard', None)
    if guard is not None:
        with guard():
            yield
        return
    paddle.enable_static()
    try:
        yield
    finally:
        paddle.disable_static()


@contextmanager
def _root_log_level(level: int):
    root = logging.getLogger()
    previous = root.level
    root.setLevel(max(level, previous))
    try:
        yield
    finally:
        root.setLevel(previous)

"""Post-training int8 quantisation of the exported ONNX model: an OpenVINO IR quantised by NNCF and
calibrated on the user's images with the export's own eval preprocessing, and an ONNX Runtime copy with
dynamically quantised MatMuls (its fastest int8 form for this graph, measured; see README Speed)."""
import logging
import os
from contextlib import contextmanager
from typing import List, Optional

import numpy as np

from .layout import INT8_ONNX_FILE, INT8_OPENVINO_FILE


INT8_PACKAGES = 'pip install nncf openvino onnxruntime'


def check_int8_export_available(onnx: bool, calib_images: Optional[str], calib_count: int, batch_size: int) -> None:
    """Fail before any work on flags that cannot give an int8 model."""
    if not onnx:
        raise ValueError('--int8 quantises model.onnx: add --onnx')
    if batch_size != -1:
        raise ValueError('--int8 calibrates one image at a time: export with --batch_size -1 (any batch)')
    if not calib_images:
        raise ValueError('--int8 needs --calib_images DIR (a few hundred images like the ones the model will see)')
    if calib_count < 1:
        raise ValueError(f'--calib_count must be >= 1, got {calib_count}')
    for module in ('nncf', 'openvino', 'onnxruntime'):
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


@contextmanager
def _root_log_level(level: int):
    root = logging.getLogger()
    previous = root.level
    root.setLevel(max(level, previous))
    try:
        yield
    finally:
        root.setLevel(previous)

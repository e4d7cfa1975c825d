"""Post-training int8 quantisation of the exported ONNX model (NNCF), calibrated on the user's images with
the export's own eval preprocessing: a QDQ ONNX copy for ONNX Runtime and, when openvino is installed,
an OpenVINO IR for OpenVINO (which cannot read NNCF's QDQ ONNX of this graph)."""
import os
from typing import List, Optional

import numpy as np

from datasets.transforms import build_transform
from utils.inference import find_images, preprocess

NNCF_PACKAGE = 'pip install nncf'


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
    try:
        import nncf  # noqa: F401
    except ImportError:
        raise ValueError(f'--int8 needs nncf, which is not installed: {NNCF_PACKAGE}') from None


def calibration_batches(calib_images: str, data_cfg: dict, count: int) -> List[np.ndarray]:
    """Up to `count` images of `calib_images` (spread evenly over its sorted files, so every class folder
    contributes), each a (1, 3, H, W) batch preprocessed exactly as inference.yml says."""
    files = find_images([calib_images])
    if len(files) > count:
        files = [files[i] for i in np.linspace(0, len(files) - 1, count).round().astype(int)]
    transform = build_transform(is_train=False, **data_cfg)
    return [preprocess([path], transform) for path in files]


def quantize_onnx(onnx_file: str, output_dir: str, batches: List[np.ndarray]) -> List[str]:
    """Write int8 copies of `onnx_file` into `output_dir` (activation ranges from `batches`); returns their names.

    NNCF's transformer preset keeps softmax, LayerNorm and the residual adds in fp32 and applies
    SmoothQuant and bias correction, which is what keeps a transformer's accuracy at int8.
    """
    import onnx
    from utils.deploy import INT8_ONNX_FILE, INT8_OPENVINO_FILE
    model = onnx.load(onnx_file)
    input_name = model.graph.input[0].name
    written = [INT8_ONNX_FILE]
    onnx.save(_quantize(model, [{input_name: batch} for batch in batches]), os.path.join(output_dir, INT8_ONNX_FILE))
    try:
        import openvino
    except ImportError:
        return written
    quantized = _quantize(openvino.Core().read_model(onnx_file), batches)
    # fp32 weights kept for the ops left unquantised (save_model would store them as fp16)
    openvino.save_model(quantized, os.path.join(output_dir, INT8_OPENVINO_FILE), compress_to_fp16=False)
    return written + [INT8_OPENVINO_FILE]


def _quantize(model, samples):
    import nncf
    return nncf.quantize(model, nncf.Dataset(samples), model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=len(samples))

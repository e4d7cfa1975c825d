"""Running an export: Paddle Inference, ONNX Runtime or OpenVINO behind one callable, the checks of what
this machine and these packages can serve, and the predictor seen as a model by the evaluation loop."""
import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import paddle

from utils.env import cpu_summary, dropped_output_lines

from .export import ONNX_PACKAGES
from .layout import INPUT_NAME, INT8_ONNX_FILE, INT8_OPENVINO_FILE, INT8_PADDLE_FILES, ONNX_FILE, find_model_files

BF16_FLAGS = ('avx512_bf16', 'amx_bf16')  # either gives bf16 math


def missing_bf16_flags(cpu: dict) -> Optional[str]:
    """Why this CPU has no bf16 math, naming the flags /proc/cpuinfo does not list; None when it lists one."""
    if any(cpu['flags'][flag] for flag in BF16_FLAGS):
        return None
    return f"this CPU lists neither {' nor '.join(BF16_FLAGS)} in /proc/cpuinfo"


BACKENDS = ('paddle', 'onnxruntime', 'openvino')
PRECISIONS = ('fp32', 'fp16', 'bf16', 'int8')
OPENVINO_PACKAGE = 'pip install openvino'
BACKEND_PRECISIONS = {'onnxruntime': ('fp32', 'int8'), 'openvino': ('fp32', 'bf16', 'int8')}
# Paddle Inference's oneDNN bf16 on the legacy program: the ops of this graph with a bf16 kernel, except
# elementwise_add, whose bf16 residual adds fail on Paddle 3.3.1 ("The type of data we are trying to retrieve
# (float32) does not match the type of data (bfloat16)", operator elementwise_add)
PADDLE_BF16_OPS = ('fc', 'fused_matmul', 'matmul_v2', 'conv2d', 'fused_conv2d', 'depthwise_conv2d', 'layer_norm',
                   'softmax', 'transpose2', 'fused_transpose', 'reshape2', 'fused_reshape2', 'concat', 'split',
                   'scale', 'slice', 'swish', 'elementwise_mul')
# Paddle 3.3.1 on inference.json (PIR) with enable_mkldnn_bfloat16, at predictor creation (measured)
PIR_BF16_ERROR = 'Ctx should have corresponding OpInfo pd_op.quantize'
# What Paddle Inference prints on every bf16/int8 predictor: a glog line on enabling bf16, one line per pass
ONEDNN_PASS_NOISE = ('Hardware support for BFLOAT16 is enabled', '---    ')


def check_device_options(backend: str, use_gpu: bool, use_tensorrt: bool, precision: str,
                         model_file: Optional[str] = None) -> None:
    """One-line refusals for what the installed Paddle / ONNX Runtime / OpenVINO or this CPU cannot serve."""
    if backend not in BACKENDS:
        raise ValueError(f"--backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    if backend != 'paddle':
        if use_tensorrt:
            raise ValueError(f'--use_tensorrt is a Paddle Inference option; drop it for --backend {backend}')
        if precision not in BACKEND_PRECISIONS[backend]:
            raise ValueError(f'--backend {backend} runs --precision {" or ".join(BACKEND_PRECISIONS[backend])}, '
                             f'got {precision}')
        if backend == 'openvino' and use_gpu:
            raise ValueError('--backend openvino runs on the CPU here; drop --use_gpu')
        if backend == 'onnxruntime' and use_gpu:
            import onnxruntime
            if 'CUDAExecutionProvider' not in onnxruntime.get_available_providers():
                raise ValueError('--use_gpu: this onnxruntime has no CUDAExecutionProvider '
                                 '(pip install onnxruntime-gpu)')
        return
    if use_gpu and not paddle.is_compiled_with_cuda():
        raise ValueError('--use_gpu: the installed Paddle is a CPU build (install paddlepaddle-gpu)')
    if use_tensorrt and not use_gpu:
        raise ValueError('--use_tensorrt needs --use_gpu')
    if use_tensorrt and tuple(paddle.inference.get_trt_compile_version()) == (0, 0, 0):
        raise ValueError('--use_tensorrt: the installed Paddle was built without TensorRT')
    if use_tensorrt and model_file and model_file.endswith('.json'):
        raise ValueError(f'--use_tensorrt: {model_file} is a Paddle 3 (PIR) program, which Paddle\'s TensorRT '
                         f'engine option does not run (PIR needs paddle.tensorrt conversion, not implemented here); '
                         f'drop --use_tensorrt, or export with export_model.py --format pdmodel')
    if precision == 'fp16' and not use_gpu:
        raise ValueError('--precision fp16 needs --use_gpu (CPU inference runs fp32)')
    if precision == 'bf16':
        _check_paddle_bf16(use_gpu, model_file)
    if precision == 'int8' and not use_tensorrt and use_gpu:
        raise ValueError('--precision int8 on Paddle Inference runs on the CPU (oneDNN) or with --use_tensorrt; '
                         'drop --use_gpu or add --use_tensorrt')


def _check_paddle_bf16(use_gpu: bool, model_file: Optional[str]) -> None:
    """Paddle Inference bf16 is oneDNN's, on a CPU with bf16 math and on the legacy program only."""
    if use_gpu:
        raise ValueError('--precision bf16 on Paddle Inference runs on the CPU (oneDNN); drop --use_gpu')
    reason = missing_bf16_flags(cpu_summary()) or (
        'Paddle finds no bf16 kernels on this CPU (paddle.base.core.supports_bfloat16() is False)'
        if not paddle.base.core.supports_bfloat16() else None)
    if reason:
        raise ValueError(f'--precision bf16 is not offered on Paddle Inference: {reason}; use --backend openvino '
                         f'--precision bf16 where OpenVINO supports it, or fp32')
    if model_file and model_file.endswith('.json'):
        raise ValueError(f"--precision bf16: {model_file} is a Paddle 3 (PIR) program, whose oneDNN bf16 passes "
                         f"fail on Paddle {paddle.__version__} ({PIR_BF16_ERROR}); export with export_model.py "
                         f"--format pdmodel, or use --backend openvino --precision bf16")


def _paddle_predictor(model_file: str, params_file: str, input_size: Sequence[int], max_batch_size: int, *,
                      use_gpu: bool, enable_mkldnn: bool, cpu_threads: int, precision: str,
                      use_tensorrt: bool, ir_optim: bool) -> Callable[[np.ndarray], np.ndarray]:
    from paddle import inference
    config = inference.Config(model_file, params_file)
    precision_type = {'fp32': inference.PrecisionType.Float32, 'fp16': inference.PrecisionType.Half,
                      'bf16': inference.PrecisionType.Float32,  # GPU precision; bf16 is a CPU oneDNN option
                      'int8': inference.PrecisionType.Int8}[precision]
    if use_gpu:
        config.enable_use_gpu(256, 0, precision_type if not use_tensorrt else inference.PrecisionType.Float32)
        if use_tensorrt:
            config.enable_tensorrt_engine(workspace_size=1 << 30, max_batch_size=max_batch_size, min_subgraph_size=3,
                                          precision_mode=precision_type, use_static=False,
                                          use_calib_mode=precision == 'int8')
            shape = [int(s) for s in input_size]
            config.set_trt_dynamic_shape_info({INPUT_NAME: [1] + shape}, {INPUT_NAME: [max_batch_size] + shape},
                                              {INPUT_NAME: [max_batch_size] + shape})
    else:
        config.disable_gpu()
        config.set_cpu_math_library_num_threads(cpu_threads)
        if precision in ('bf16', 'int8') and not (enable_mkldnn and ir_optim):
            raise ValueError(f'--precision {precision} on Paddle Inference is made by oneDNN graph passes: '
                             f'drop --no_enable_mkldnn and --no_ir_optim')
        if enable_mkldnn:
            config.enable_mkldnn()
        if precision == 'bf16':
            with dropped_output_lines(ONEDNN_PASS_NOISE):
                config.enable_mkldnn_bfloat16()
            config.set_bfloat16_op(set(PADDLE_BF16_OPS))
        elif precision == 'int8':  # the quantised program's fake-quant ops become oneDNN int8 kernels
            config.enable_mkldnn_int8()
    # enable_memory_optim() is left out on purpose: it breaks these graphs on Paddle 3.3.
    config.switch_ir_optim(ir_optim)
    config.disable_glog_info()
    with dropped_output_lines(ONEDNN_PASS_NOISE):
        predictor = inference.create_predictor(config)
    input_handle = predictor.get_input_handle(predictor.get_input_names()[0])
    output_handle = predictor.get_output_handle(predictor.get_output_names()[0])

    def run(batch: np.ndarray) -> np.ndarray:
        input_handle.reshape(list(batch.shape))
        input_handle.copy_from_cpu(np.ascontiguousarray(batch, dtype=np.float32))
        predictor.run()
        return output_handle.copy_to_cpu()

    return run


def _paddle_int8_file(model_dir: str) -> str:
    """inference_int8.pdmodel of an export folder; missing, the line names the export flags that write it."""
    path = os.path.join(model_dir, INT8_PADDLE_FILES[0])
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: not found (Paddle Inference int8 runs a quantised program: export with '
                                f'export_model.py --format pdmodel --int8 --calib_images DIR, or use --backend '
                                f'openvino or onnxruntime --precision int8)')
    return path


def _onnx_file(model_dir: str, precision: str, backend: str) -> str:
    """model.onnx, or the backend's int8 copy; missing ones name the export flag that writes them."""
    if precision == 'int8':
        path = os.path.join(model_dir, INT8_OPENVINO_FILE if backend == 'openvino' else INT8_ONNX_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'{path}: not found (export with export_model.py --onnx --int8 --calib_images DIR)')
    else:
        path = os.path.join(model_dir, ONNX_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f'{path}: not found (export with export_model.py --onnx)')
    return path


def _onnx_predictor(onnx_file: str, use_gpu: bool, cpu_threads: int) -> Callable[[np.ndarray], np.ndarray]:
    try:
        import onnxruntime
    except ImportError:
        raise ValueError(f'--backend onnxruntime needs onnxruntime, which is not installed: {ONNX_PACKAGES}') from None
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = cpu_threads
    providers = (['CUDAExecutionProvider'] if use_gpu else []) + ['CPUExecutionProvider']
    session = onnxruntime.InferenceSession(onnx_file, options, providers=providers)
    input_name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    return run


def openvino_cpu_capabilities(core) -> List[str]:
    """What OpenVINO's CPU plugin computes natively here, e.g. ['FP32', 'INT8'] or with 'BF16'."""
    return list(core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))


def openvino_precision_hint(precision: str, capabilities: Sequence[str]) -> str:
    """OpenVINO's INFERENCE_PRECISION_HINT: the precision of the ops a graph does not fix itself. bf16 asks for
    it; an int8 graph also runs what NNCF left unquantised (softmax, LayerNorm, residual adds, the depthwise
    convs) in bf16 where the CPU has bf16 math (OpenVINO 2026.4's own default there; 1.1x at batch 8 on a Zen 4,
    README Speed), fp32 elsewhere."""
    return 'bf16' if precision == 'bf16' or (precision == 'int8' and 'BF16' in capabilities) else 'f32'


def _openvino_predictor(onnx_file: str, precision: str, cpu_threads: int) -> Callable[[np.ndarray], np.ndarray]:
    try:
        import openvino
    except ImportError:
        raise ValueError(f'--backend openvino needs openvino, which is not installed: {OPENVINO_PACKAGE}') from None
    core = openvino.Core()
    capabilities = openvino_cpu_capabilities(core)
    if precision == 'bf16' and 'BF16' not in capabilities:
        reason = missing_bf16_flags(cpu_summary()) or f"OpenVINO reports no bf16 math ({', '.join(capabilities)})"
        raise ValueError(f'--precision bf16: {reason}, so OpenVINO would run fp32; use --precision fp32 or int8')
    config = {'INFERENCE_NUM_THREADS': cpu_threads, 'PERFORMANCE_HINT': 'LATENCY',
              'INFERENCE_PRECISION_HINT': openvino_precision_hint(precision, capabilities)}
    request = core.compile_model(onnx_file, 'CPU', config).create_infer_request()

    def run(batch: np.ndarray) -> np.ndarray:
        return request.infer([np.ascontiguousarray(batch, dtype=np.float32)])[0]

    return run


def _fixed_batch(run: Callable[[np.ndarray], np.ndarray], batch_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """A graph exported with a fixed batch takes exactly that many images: pad, then drop the padding."""
    def padded(batch: np.ndarray) -> np.ndarray:
        outputs = []
        for start in range(0, len(batch), batch_size):
            chunk = batch[start:start + batch_size]
            pad = np.zeros((batch_size - len(chunk),) + chunk.shape[1:], dtype=chunk.dtype)
            outputs.append(run(np.concatenate([chunk, pad]))[:len(chunk)])
        return np.concatenate(outputs)
    return padded


def build_predictor(model_dir: str, cfg: dict, *, backend: str = 'paddle', model_file: Optional[str] = None,
                    params_file: Optional[str] = None, max_batch_size: int = 1, use_gpu: bool = False,
                    enable_mkldnn: bool = True, cpu_threads: int = 1, precision: str = 'fp32',
                    use_tensorrt: bool = False, ir_optim: bool = True) -> Callable[[np.ndarray], np.ndarray]:
    """A callable (N, 3, H, W) float32 -> (N, num_classes) graph output (probabilities or logits, see
    cfg['with_softmax']) for the Paddle Inference, ONNX Runtime or OpenVINO backend."""
    if backend == 'paddle':
        if precision == 'int8' and not use_tensorrt and model_file is None:
            model_file = _paddle_int8_file(model_dir)
        model_file, params_file = find_model_files(model_dir, model_file, params_file)
    check_device_options(backend, use_gpu, use_tensorrt, precision, model_file)
    fixed = cfg.get('batch_size', -1)
    if backend == 'onnxruntime':
        run = _onnx_predictor(_onnx_file(model_dir, precision, backend), use_gpu, cpu_threads)
    elif backend == 'openvino':
        run = _openvino_predictor(_onnx_file(model_dir, precision, backend), precision, cpu_threads)
    else:
        run = _paddle_predictor(model_file, params_file, cfg['preprocess']['input_size'],
                                fixed if fixed > 0 else max_batch_size, use_gpu=use_gpu, enable_mkldnn=enable_mkldnn,
                                cpu_threads=cpu_threads, precision=precision, use_tensorrt=use_tensorrt,
                                ir_optim=ir_optim)
    return _fixed_batch(run, fixed) if fixed > 0 else run


class PredictorAsModel:
    """An exported predictor seen as training.evaluation.evaluate() sees a model: eval(), and a call from a
    paddle image batch to logits (log-probabilities for a softmax graph: same top-k, same cross-entropy)."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], cfg: dict):
        self.run, self.cfg = run, cfg

    def eval(self):
        return self

    def __call__(self, images: paddle.Tensor) -> paddle.Tensor:
        output = self.run(images.numpy()).astype(np.float32, copy=False)
        if self.cfg['with_softmax']:
            output = np.log(np.maximum(output, np.finfo(np.float32).tiny))
        return paddle.to_tensor(output)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def are_probabilities(output: np.ndarray, atol: float = 1e-4) -> bool:
    """Whether every row of a graph's (N, num_classes) output is a distribution: all >= 0, summing to 1."""
    output = output.astype(np.float64, copy=False)
    return bool((output >= 0).all() and np.allclose(output.sum(axis=-1), 1.0, rtol=0, atol=atol))


def graph_to_probs(output: np.ndarray, cfg: Dict) -> np.ndarray:
    """Probabilities from the exported graph's output, applying softmax when the graph has none."""
    output = output.astype(np.float32, copy=False)
    return output if cfg['with_softmax'] else softmax(output)

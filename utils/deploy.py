"""The export directory: writing it (static graph, inference.yml, optional ONNX) and running it
with Paddle Inference or ONNX Runtime.

Layout: inference.json (Paddle 3, PIR) or inference.pdmodel (Paddle 2.x), inference.pdiparams,
inference.yml (model name, num_classes, with_softmax, resolved eval preprocessing, label names to show,
the training data's class names)
and, with ONNX, model.onnx. infer.py needs nothing outside the folder.
"""
import os
import shutil
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import paddle
import paddle.nn.functional as F
import yaml

from utils.env import cpu_summary, dropped_output_lines
from utils.fileio import storage_errors

MODEL_PREFIX = 'inference'
MODEL_FILES = (f'{MODEL_PREFIX}.json', f'{MODEL_PREFIX}.pdmodel')  # Paddle 3 (PIR), Paddle 2.x
CFG_FILE = f'{MODEL_PREFIX}.yml'
ONNX_FILE = 'model.onnx'
# export_model.py --int8: quantised copies of model.onnx, for ONNX Runtime (dynamic int8 MatMuls) and OpenVINO (IR)
INT8_ONNX_FILE = 'model_int8.onnx'
INT8_OPENVINO_FILE = 'openvino_int8.xml'  # weights in openvino_int8.bin
INPUT_NAME = 'x'
ONNX_OPSET = 17  # first opset with a native LayerNormalization
PREPROCESS_KEYS = ('input_size', 'interpolation', 'crop_pct', 'crop_mode', 'mean', 'std')
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


def _plain(value):
    """Tuples and numpy scalars as YAML-safe lists and numbers."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if hasattr(value, 'item') else value


def export_inference_model(model, output_dir: str, model_name: str, data_cfg: dict, *, batch_size: int = -1,
                           with_softmax: bool = False, label_names: Optional[Sequence[str]] = None,
                           class_names: Optional[Sequence[str]] = None, onnx: bool = False,
                           calib_batches: Optional[Sequence[np.ndarray]] = None,
                           feature_info: Optional[Sequence[dict]] = None) -> List[str]:
    """Export `model` for deployment into `output_dir`; returns the written file names. `model` is traced
    as given: pass `models.export_rewrites.rewrite_for_export(model)` for the deployed form.

    A backbone (models.cvt.CvTFeatures) has one graph output per feature map; its `feature_info` goes into
    inference.yml, which marks the folder as one that infer.py/eval.py do not classify with.

    With `calib_batches` (needs `onnx`), the int8 copies of utils/quantize.py are written too.
    `label_names` are what infer.py shows; `class_names` (the training data's, e.g. its folder names)
    are what eval.py --model_dir checks the val folders against.

    The folder is built under a temporary name next to `output_dir` and renamed into place, so a
    failed export never leaves a half-written folder, and a previous export is replaced whole.
    """
    check_output_dir(output_dir)
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
        _save_static(model, staging, data_cfg['input_size'], batch_size, with_softmax)
        cfg = dict(model=model_name, num_classes=int(model.num_classes), with_softmax=bool(with_softmax),
                   batch_size=int(batch_size),
                   preprocess={k: _plain(data_cfg[k]) for k in PREPROCESS_KEYS},
                   label_names=list(label_names) if label_names else None,
                   class_names=list(class_names) if class_names else None,
                   int8_calibration_images=len(calib_batches) if calib_batches else None)
        if feature_info:
            cfg['feature_info'] = [dict(info) for info in feature_info]
        with open(os.path.join(staging, CFG_FILE), 'w', encoding='utf-8') as f:
            yaml.safe_dump(cfg, f, sort_keys=False, allow_unicode=True)
        if onnx:
            model_file, params_file = find_model_files(staging)
            _export_onnx(model_file, params_file, os.path.join(staging, ONNX_FILE))
        if calib_batches:
            from utils.quantize import quantize_onnx
            quantize_onnx(os.path.join(staging, ONNX_FILE), staging, calib_batches)
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


def _save_static(model, folder: str, input_size: Sequence[int], batch_size: int, with_softmax: bool) -> None:
    """Trace and save the deployed graph: the whole of it happens here (one place to wrap in a context)."""
    layer = InferenceModel(model, with_softmax)
    layer.eval()
    shape = [None if batch_size == -1 else batch_size] + [int(s) for s in input_size]
    spec = [paddle.static.InputSpec(shape=shape, dtype='float32', name=INPUT_NAME)]
    with dropped_output_lines(STATIC_EXPORT_NOISE):
        static = paddle.jit.to_static(layer, input_spec=spec, full_graph=True)
        paddle.jit.save(static, os.path.join(folder, MODEL_PREFIX))


def _export_onnx(model_file: str, params_file: str, onnx_file: str) -> None:
    import paddle2onnx
    with dropped_output_lines(ONNX_EXPORT_NOISE):
        paddle2onnx.export(model_file, params_file, onnx_file, opset_version=ONNX_OPSET)
    if not os.path.isfile(onnx_file):
        raise ValueError(f'{onnx_file}: paddle2onnx wrote no model (see its log above)')


def _swap_into_place(staging: str, output_dir: str) -> None:
    if not os.path.exists(output_dir):
        os.rename(staging, output_dir)
        return
    retired = staging + '.old'
    os.rename(output_dir, retired)
    try:
        os.rename(staging, output_dir)
    except OSError:
        os.rename(retired, output_dir)  # put the previous export back
        raise
    shutil.rmtree(retired, ignore_errors=True)


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
                         f'drop --use_tensorrt, or export with Paddle 2.6 for an inference.pdmodel')
    if precision == 'fp16' and not use_gpu:
        raise ValueError('--precision fp16 needs --use_gpu (CPU inference runs fp32)')
    if precision == 'bf16':
        reason = missing_bf16_flags(cpu_summary()) or (
            'Paddle finds no bf16 kernels on this CPU (paddle.base.core.supports_bfloat16() is False)'
            if not paddle.base.core.supports_bfloat16() else 'its oneDNN bf16 path is untested on these exports')
        raise ValueError(f'--precision bf16 is not offered on Paddle Inference: {reason}; use --backend openvino '
                         f'--precision bf16 where OpenVINO supports it, or fp32')
    if precision == 'int8' and not use_tensorrt:
        raise ValueError('--precision int8 needs --use_tensorrt on Paddle Inference (its CPU int8 runs only '
                         'PaddleSlim-quantised programs, which this export is not); on CPU use --backend openvino '
                         'or onnxruntime --precision int8 (export_model.py --int8)')


def _paddle_predictor(model_file: str, params_file: str, input_size: Sequence[int], max_batch_size: int, *,
                      use_gpu: bool, enable_mkldnn: bool, cpu_threads: int, precision: str,
                      use_tensorrt: bool, ir_optim: bool) -> Callable[[np.ndarray], np.ndarray]:
    from paddle import inference
    config = inference.Config(model_file, params_file)
    precision_type = {'fp32': inference.PrecisionType.Float32, 'fp16': inference.PrecisionType.Half,
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
        if enable_mkldnn:
            config.enable_mkldnn()
    # enable_memory_optim() is left out on purpose: it breaks these graphs on Paddle 3.3.
    config.switch_ir_optim(ir_optim)
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    input_handle = predictor.get_input_handle(predictor.get_input_names()[0])
    output_handle = predictor.get_output_handle(predictor.get_output_names()[0])

    def run(batch: np.ndarray) -> np.ndarray:
        input_handle.reshape(list(batch.shape))
        input_handle.copy_from_cpu(np.ascontiguousarray(batch, dtype=np.float32))
        predictor.run()
        return output_handle.copy_to_cpu()

    return run


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
    # bf16 is a hint for the fp32 ops; int8 graphs keep fp32 between their quantised ops
    config = {'INFERENCE_NUM_THREADS': cpu_threads, 'PERFORMANCE_HINT': 'LATENCY',
              'INFERENCE_PRECISION_HINT': 'bf16' if precision == 'bf16' else 'f32'}
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
    """An exported predictor seen as utils.evaluation.evaluate() sees a model: eval(), and a call from a
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


def graph_to_probs(output: np.ndarray, cfg: Dict) -> np.ndarray:
    """Probabilities from the exported graph's output, applying softmax when the graph has none."""
    output = output.astype(np.float32, copy=False)
    return output if cfg['with_softmax'] else softmax(output)

"""--to_static: the model's forward as one static graph (paddle.jit.to_static), compiled by CINN where Paddle
has it (a CUDA build with CINN, on a GPU), for training and evaluation.

The whole forward is translated (full_graph=True, Paddle's AST path): the bytecode path (SOT, the default
on Paddle 3) breaks on models.layers.Linear's dygraph-only CPU branch on 2.6 and 3.3 alike. Train and eval
mode each get their own program, and losses and weights follow dygraph's (tests/training/test_graph.py).
"""
import warnings

import paddle

from utils.env import dropped_output_lines

# What translating and first running a program print on every run (C++ glog lines, so with a varying prefix).
STATIC_RUN_NOISE = (
    'Paddle static graph(PIR) not support input out tensor for now',  # Paddle 3: softmax's unused `out=`
    'New Executor is Running',
    'pir interpreter is running by multi-thread mode',  # Paddle 3
    'Standalone Executor is Used',  # Paddle 2.6
    'The `is_initialized` method is deprecated',  # Paddle 2.6, from its own translator
)
# Paddle 3 warns while building a backward program (its own full_like asks for a tensor's place).
warnings.filterwarnings('ignore', message="Tensor do not have 'place' interface for pir graph mode")


def cinn_available() -> bool:
    """Whether CINN can compile here: a Paddle built with CUDA and CINN, running on a GPU."""
    return (paddle.is_compiled_with_cinn() and paddle.is_compiled_with_cuda()
            and paddle.get_device().startswith('gpu'))


def to_static(model: paddle.nn.Layer) -> paddle.nn.Layer:
    """`model` (the same object, parameters and names unchanged) with its forward run as a static graph.

    CINN is asked for only where `cinn_available()` (Paddle 3 would otherwise default to it, 2.6 turns on
    `build_strategy.build_cinn_pass` for it); elsewhere the graph runs on Paddle's kernels. The call
    that translates and first runs each mode's program does so with Paddle's per-program log lines dropped.
    """
    model = paddle.jit.to_static(model, full_graph=True, backend='CINN' if cinn_available() else None)
    static_forward = model.forward
    translated = set()  # the modes (training or not) whose program exists

    def forward(*args, **kwargs):
        if model.training in translated:
            return static_forward(*args, **kwargs)
        with dropped_output_lines(STATIC_RUN_NOISE):
            outputs = static_forward(*args, **kwargs)
        translated.add(model.training)
        return outputs

    model.forward = forward
    return model

"""Process-group helpers: init, rank and world size, all-reduce (no-ops in one process).

Multi-process runs start through `python -m paddle.distributed.launch --nproc_per_node N train.py ...`,
which sets PADDLE_TRAINERS_NUM / PADDLE_TRAINER_ID for every worker (NCCL on GPU, gloo on CPU).
"""
import os
from typing import Any, List, Mapping, Sequence, Tuple

import numpy as np
import paddle
import paddle.distributed as dist

from .env import dropped_output_lines


def get_world_size() -> int:
    """Number of processes in the job; 1 when not launched distributed."""
    return max(dist.get_world_size(), 1)


def get_rank() -> int:
    """This process's global rank; 0 when not launched distributed."""
    return max(dist.get_rank(), 0)


def is_main_process() -> bool:
    return get_rank() == 0


# What joining the group prints on every rank (the launcher echoes rank 0's to the terminal): the
# changed-flags table and the store's connection chatter.
INIT_NOISE = ('Modified FLAGS detected', "FLAGS(name='FLAGS_enable_pir_in_executor'", '=' * 71,
              'create libuv server at port', 'Successfully connected to', 'Retry to connect to')


def init_distributed() -> Tuple[int, int]:
    """Join the process group when launched with several workers; returns (rank, world_size)."""
    launched = int(os.environ.get('PADDLE_TRAINERS_NUM', '1')) > 1 or get_world_size() > 1
    if launched and not dist.is_initialized():
        with dropped_output_lines(INIT_NOISE):
            dist.init_parallel_env()
    return get_rank(), get_world_size()


def all_reduce_sum(tensor: paddle.Tensor) -> paddle.Tensor:
    """Sum `tensor` over all processes, in place; returns it."""
    if get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: paddle.Tensor) -> paddle.Tensor:
    """Average a floating-point `tensor` over all processes, in place; returns it."""
    world_size = get_world_size()
    if world_size > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor.scale_(1.0 / world_size)
    return tensor


def unwrap_model(model: paddle.nn.Layer) -> paddle.nn.Layer:
    """The bare model inside a `paddle.DataParallel` wrapper (state-dict names without `_layers.`)."""
    return model._layers if isinstance(model, paddle.DataParallel) else model


def broadcast_buffers(model: paddle.nn.Layer, src: int = 0) -> None:
    """Copy rank `src`'s non-trainable state (BatchNorm running statistics) to every rank.

    paddle.DataParallel syncs only gradients, so each rank's running statistics follow its own data.
    torch DDP broadcasts rank 0's buffers before every forward, so rank 0's evolve from rank 0's batches
    alone and the others are overwritten; broadcasting before evaluation and saving gives the same state,
    and training forwards (which use batch statistics) never read them.
    """
    if get_world_size() == 1:
        return
    model = unwrap_model(model)
    trainable = {id(p) for p in model.parameters() if not p.stop_gradient}
    for tensor in model.state_dict().values():
        if id(tensor) not in trainable:
            dist.broadcast(tensor, src=src)


# Room for a message about one rank's state (a path and a position) in `all_gather_rows`.
TEXT_BYTES = 1024


def all_gather_rows(numbers: Sequence[float], text: str = '') -> List[Tuple[Tuple[float, ...], str]]:
    """Every rank's (numbers, text), in rank order, from one all-gather; [(numbers, text)] in one process.

    `numbers` must have the same length on every rank; float64 carries integers and checksums exactly.
    `text` travels as UTF-8 bytes cut to TEXT_BYTES (no pickling), for messages that name each rank's state.
    """
    numbers = tuple(float(n) for n in numbers)
    if get_world_size() == 1:
        return [(numbers, text)]
    count, encoded = len(numbers), text.encode('utf-8')[:TEXT_BYTES]
    row = np.zeros(count + 1 + TEXT_BYTES, dtype=np.float64)  # numbers, text length, text bytes
    row[:count], row[count] = numbers, len(encoded)
    row[count + 1:count + 1 + len(encoded)] = np.frombuffer(encoded, dtype=np.uint8)
    gathered = []
    dist.all_gather(gathered, paddle.to_tensor(row))
    rows = []
    for values in (tensor.numpy() for tensor in gathered):
        data = values[count + 1:count + 1 + int(values[count])].astype(np.uint8).tobytes()
        rows.append((tuple(float(v) for v in values[:count]), data.decode('utf-8', errors='replace')))
    return rows


def weights_checksum(state: Mapping[str, Any]) -> float:
    """A float64 sum of |w| over a state dict of paddle tensors or numpy arrays (a checkpoint's 'model')."""
    total = paddle.zeros([], dtype='float64')
    for value in state.values():
        tensor = value if isinstance(value, paddle.Tensor) else paddle.to_tensor(value)
        total += tensor.astype('float64').abs().sum()
    return float(total)


def weights_agree_across_ranks(model: paddle.nn.Layer) -> Tuple[bool, float]:
    """(every rank holds the same weights, this rank's checksum) by `weights_checksum` over the model."""
    checksum = weights_checksum(unwrap_model(model).state_dict())
    values = [numbers[0] for numbers, _ in all_gather_rows([checksum])]
    return max(values) == min(values), checksum

"""Count what a block of code moves between host and device: the work a GPU would wait for.

`count_host_traffic()` patches the Python entry points that make a tensor from host data
(`paddle.to_tensor`, `paddle.full`, `paddle.assign` of a non-tensor) and the ones that read a tensor
back to the host, waiting for the device (`Tensor.numpy`, `.item`, `.tolist`, `float()`, `int()`,
`bool()`). On a CPU nothing is copied, but the calls are the same ones a GPU run makes.
"""
import contextlib
from dataclasses import dataclass, field
from typing import List

import numpy as np
import paddle
import paddle.tensor
import paddle.tensor.creation

_MAKERS = ('to_tensor', 'full', 'assign')
_READS = ('numpy', 'item', 'tolist', '__float__', '__int__', '__bool__')


@dataclass
class HostTraffic:
    copies: List[str] = field(default_factory=list)  # host -> device: which maker
    copied_bytes: int = 0
    syncs: List[str] = field(default_factory=list)  # device -> host reads


@contextlib.contextmanager
def count_host_traffic():
    traffic = HostTraffic()
    saved = []
    depth = [0]  # a maker or read called from inside another is counted once (to_tensor calls assign, ...)

    def patch(owner, name, wrapper_of):
        if hasattr(owner, name):
            saved.append((owner, name, getattr(owner, name)))
            setattr(owner, name, wrapper_of(getattr(owner, name), name))

    def maker(real, name):
        def counted(*args, **kwargs):
            data = args[0] if args else kwargs.get('data', kwargs.get('x', kwargs.get('fill_value')))
            if depth[0] == 0 and not (name == 'assign' and isinstance(data, paddle.Tensor)):
                traffic.copies.append(name)
                traffic.copied_bytes += np.asarray(data).nbytes if name != 'full' else 8  # full: one scalar
            depth[0] += 1
            try:
                return real(*args, **kwargs)
            finally:
                depth[0] -= 1
        return counted

    def read(real, name):
        def counted(self, *args, **kwargs):
            if depth[0] == 0:
                traffic.syncs.append(name)
            depth[0] += 1
            try:
                return real(self, *args, **kwargs)
            finally:
                depth[0] -= 1
        return counted

    for owner in (paddle, paddle.tensor, paddle.tensor.creation):
        for name in _MAKERS:
            patch(owner, name, maker)
    for name in _READS:
        patch(paddle.Tensor, name, read)
    try:
        yield traffic
    finally:
        for owner, name, real in reversed(saved):
            setattr(owner, name, real)

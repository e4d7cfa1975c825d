"""Test helper: write PyTorch checkpoint files (zip and legacy format) without torch.

Emits the same pickle opcodes `torch.save` does: tensors reduce to `torch._utils._rebuild_tensor_v2`
over a storage that is pickled as a persistent id ('storage', torch.<X>Storage, key, 'cpu', numel),
and the storage bytes go to `<prefix>/data/<key>` (zip) or after the pickles (legacy).
"""
import collections
import io
import pickle
import struct
import zipfile

import numpy as np

LEGACY_MAGIC = 0x1950a86a20f9469cfc6c

_STORAGE_NAMES = {
    np.dtype(np.float32): 'FloatStorage', np.dtype(np.float64): 'DoubleStorage',
    np.dtype(np.float16): 'HalfStorage', np.dtype(np.int64): 'LongStorage', np.dtype(np.int32): 'IntStorage',
    np.dtype(np.int8): 'CharStorage', np.dtype(np.uint8): 'ByteStorage', np.dtype(np.bool_): 'BoolStorage',
}


class Global:
    """A module-level name pickled by reference, without importing the module (torch is absent)."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle insists that a reduce function is callable
        raise TypeError(f'{self.module}.{self.name} is only a name here')


class Storage:
    """A flat storage; `bf16=True` keeps float32 values as their upper 16 bits (torch.bfloat16)."""

    def __init__(self, values: np.ndarray, bf16: bool = False):
        values = np.ascontiguousarray(values).reshape(-1)
        if bf16:
            self.name = 'BFloat16Storage'
            self.flat = (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
        else:
            self.name, self.flat = _STORAGE_NAMES[values.dtype], values

    def raw(self, byteorder: str = 'little') -> bytes:
        return self.flat.astype(self.flat.dtype.newbyteorder('<' if byteorder == 'little' else '>')).tobytes()


class Tensor:
    """A torch tensor as pickled: a view (offset, size, stride in elements) of a storage."""

    def __init__(self, storage: Storage, offset: int, size, stride):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    @classmethod
    def of(cls, array: np.ndarray, bf16: bool = False) -> 'Tensor':
        array = np.asarray(array)
        strides = [int(np.prod(array.shape[i + 1:])) for i in range(array.ndim)]
        return cls(Storage(array, bf16), 0, array.shape, strides)

    def numpy(self) -> np.ndarray:
        """The values this tensor stands for, as a contiguous array (not for bf16 storages)."""
        flat = self.storage.flat
        view = np.lib.stride_tricks.as_strided(flat[self.offset:], self.size, [s * flat.itemsize for s in self.stride])
        return np.ascontiguousarray(view)

    def __reduce__(self):
        return (Global('torch._utils', '_rebuild_tensor_v2'),
                (self.storage, self.offset, self.size, self.stride, False, collections.OrderedDict()))


def tensors(obj):
    """Replace every numpy array in nested dicts/lists by a Tensor with its own storage."""
    if isinstance(obj, np.ndarray):
        return Tensor.of(obj)
    if isinstance(obj, dict):
        return type(obj)((k, tensors(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [tensors(v) for v in obj]
    return obj


class _TorchPickler(pickle._Pickler):
    """Pure-python pickler (its dispatch table can be extended) that writes Globals and storages."""

    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file, legacy: bool = False):
        super().__init__(file, protocol=2)
        self.legacy = legacy
        self.storages = {}

    def save_global_ref(self, obj):
        self.write(pickle.GLOBAL + f'{obj.module}\n{obj.name}\n'.encode('ascii'))
        self.memoize(obj)

    dispatch[Global] = save_global_ref

    def persistent_id(self, obj):
        if not isinstance(obj, Storage):
            return None
        key = next((k for k, s in self.storages.items() if s is obj), str(len(self.storages)))
        self.storages[key] = obj
        pid = ('storage', Global('torch', obj.name), key, 'cpu', obj.flat.size)
        return pid + (None,) if self.legacy else pid


def write_torch_zip(path, obj, prefix: str = 'archive', byteorder: str = 'little') -> None:
    """Write `obj` (Tensors, or arrays converted by `tensors`) like torch>=1.6 `torch.save`."""
    buf = io.BytesIO()
    pickler = _TorchPickler(buf)
    pickler.dump(tensors(obj))
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_STORED) as archive:
        archive.writestr(f'{prefix}/data.pkl', buf.getvalue())
        archive.writestr(f'{prefix}/byteorder', byteorder)
        for key, storage in pickler.storages.items():
            archive.writestr(f'{prefix}/data/{key}', storage.raw(byteorder))
        archive.writestr(f'{prefix}/version', '3\n')


def write_torch_legacy(path, obj) -> None:
    """Write `obj` like torch's legacy (pre-1.6) `torch.save(..., _use_new_zipfile_serialization=False)`."""
    with open(path, 'wb') as file:
        for header in (LEGACY_MAGIC, 1001, dict(protocol_version=1001, little_endian=True,
                                                type_sizes=dict(short=2, int=4, long=4))):
            pickle.dump(header, file, protocol=2)
        pickler = _TorchPickler(file, legacy=True)
        pickler.dump(tensors(obj))
        keys = sorted(pickler.storages)
        pickle.dump(keys, file, protocol=2)
        for key in keys:
            storage = pickler.storages[key]
            file.write(struct.pack('<q', storage.flat.size))
            file.write(storage.raw())

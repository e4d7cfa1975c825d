"""Safe readers for PyTorch checkpoints (zip and legacy format) and Paddle pickles, without torch.

`torch.load` and `paddle.load` unpickle whatever a file asks for, which lets a downloaded checkpoint
run code. These readers rebuild only tensors and plain containers: every global the pickle names
must be on an allowlist, anything else is refused before it is called. Tensors come back as numpy
arrays (bfloat16 widened to float32). Formats: https://github.com/pytorch/pytorch/blob/main/torch/serialization.py
"""
import collections
import io
import os
import pickle
import struct
import zipfile
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

# Written first by torch's legacy (pre-1.6, non-zip) serializer.
TORCH_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c

# Storage class name -> numpy dtype; bfloat16 is read as its raw 16 bits and widened afterwards.
_STORAGE_DTYPES = {
    'DoubleStorage': np.float64, 'FloatStorage': np.float32, 'HalfStorage': np.float16,
    'BFloat16Storage': np.uint16, 'LongStorage': np.int64, 'IntStorage': np.int32,
    'ShortStorage': np.int16, 'CharStorage': np.int8, 'ByteStorage': np.uint8, 'BoolStorage': np.bool_,
    'ComplexFloatStorage': np.complex64, 'ComplexDoubleStorage': np.complex128,
}


class _StorageType:
    """Stands in for a `torch.<X>Storage` class: pickles only use it as a dtype tag."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


# Stands in for torch.Tensor / Parameter, which pickles of tensor subclasses pass around as a tag only.
_TENSOR_CLASS = object()


class _Storage:
    """A storage's flat array, or (legacy format) a placeholder until its bytes have been read."""

    def __init__(self, storage_type: _StorageType, data: Optional[np.ndarray] = None):
        self.storage_type = storage_type
        self.data = data


class _PendingTensor:
    """A tensor whose storage bytes come after the pickle (legacy format)."""

    def __init__(self, storage: _Storage, offset: int, size: Tuple[int, ...], stride: Tuple[int, ...]):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _tensor_from_storage(storage: _Storage, offset: int, size, stride) -> np.ndarray:
    flat = storage.data
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride):
        raise ValueError(f'tensor size {list(size)} and stride {list(stride)} differ in length')
    native = flat.dtype.newbyteorder('=')
    if 0 in size:
        array = np.zeros(size, dtype=native)
    else:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))
        if offset < 0 or min(stride, default=0) < 0 or last >= flat.size:
            raise ValueError(f'tensor of size {list(size)} reaches past its storage of {flat.size} elements')
        view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size,
                                               strides=[s * flat.itemsize for s in stride])
        array = np.array(view, dtype=native, order='C')
    if storage.storage_type.name == 'BFloat16Storage':
        array = (array.astype(np.uint32) << 16).view(np.float32)
    return array


def _rebuild_tensor(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                    metadata=None):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError('tensor data is not a storage')
    if storage.data is None:
        return _PendingTensor(storage, storage_offset, size, stride)
    return _tensor_from_storage(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


def _rebuild_from_type(func, new_type, args, state):
    # Wraps a tensor subclass; the class and its python attributes are dropped, the data kept.
    return func(*args)


def _codecs_encode(text: str, encoding: str = 'utf-8') -> bytes:
    # Protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1'); nothing else is needed.
    if encoding not in ('latin1', 'latin-1'):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding '{encoding}'")
    return text.encode('latin1')


class _Sealed:
    """Wraps one of the functions above: a pickle's BUILD opcode cannot set attributes on it
    (e.g. a function's __defaults__), so one file cannot tamper with how the next is read."""

    __slots__ = ('_func',)

    def __init__(self, func: Callable):
        object.__setattr__(self, '_func', func)

    def __call__(self, *args):
        return self._func(*args)

    def __setattr__(self, name, value):
        raise pickle.UnpicklingError('refusing to modify a rebuild function')

    def __setstate__(self, state):
        raise pickle.UnpicklingError('refusing to modify a rebuild function')


def _numpy_globals() -> Dict[Tuple[str, str], Any]:
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct, scalar
    table = {}
    # numpy 1 pickles name numpy.core, numpy 2 names numpy._core; both mean the same functions.
    for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        table[(module, '_reconstruct')] = _reconstruct
        table[(module, 'scalar')] = scalar
    table[('numpy', 'ndarray')] = np.ndarray
    table[('numpy', 'dtype')] = np.dtype
    return table


def _base_globals() -> Dict[Tuple[str, str], Any]:
    table = _numpy_globals()
    table[('collections', 'OrderedDict')] = collections.OrderedDict
    table[('_codecs', 'encode')] = _Sealed(_codecs_encode)
    # paddle.save writes tensors nested in containers as tuple((name, ndarray)); protocol 2
    # spells the module the Python 2 way.
    table[('builtins', 'tuple')] = table[('__builtin__', 'tuple')] = tuple
    return table


def _torch_globals() -> Dict[Tuple[str, str], Any]:
    table = _base_globals()
    table[('torch._utils', '_rebuild_tensor_v2')] = _Sealed(_rebuild_tensor)
    table[('torch._utils', '_rebuild_parameter')] = _Sealed(_rebuild_parameter)
    table[('torch._utils', '_rebuild_parameter_with_state')] = _Sealed(_rebuild_parameter)
    table[('torch._tensor', '_rebuild_from_type_v2')] = _Sealed(_rebuild_from_type)
    table[('torch', 'Tensor')] = _TENSOR_CLASS
    table[('torch.nn.parameter', 'Parameter')] = _TENSOR_CLASS
    for name in _STORAGE_DTYPES:
        table[('torch', name)] = _StorageType(name)
    return table


class _Refused(Exception):
    """A pickle named a global outside the allowlist (kept apart from corruption errors)."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves globals only from `allowed` and storages only through `load_storage`."""

    def __init__(self, file, allowed: Dict[Tuple[str, str], Any],
                 load_storage: Optional[Callable[[tuple], _Storage]] = None):
        super().__init__(file, encoding='latin1')
        self._allowed = allowed
        self._load_storage = load_storage

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise _Refused(f"{module}.{name}") from None

    def persistent_load(self, pid):
        if self._load_storage is None or not (isinstance(pid, tuple) and pid and pid[0] == 'storage'):
            raise pickle.UnpicklingError(f'unsupported persistent id {pid!r:.80}')
        return self._load_storage(pid)


def _wrap_errors(path: str, read: Callable[[], Any]) -> Any:
    """Run `read`, turning refusals and any decoding failure into one-line ValueErrors naming `path`."""
    try:
        return read()
    except _Refused as refused:
        raise ValueError(f"{path}: refusing to unpickle '{refused}' (only tensor data is allowed)") from None
    except (FileNotFoundError, PermissionError):
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, EOFError, OSError, MemoryError,
            OverflowError, RecursionError, struct.error, zipfile.BadZipFile, pickle.UnpicklingError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(f'{path}: truncated or corrupt checkpoint ({reason})') from None


def _storage_from_bytes(storage_type: _StorageType, raw: bytes, numel: int, big_endian: bool) -> _Storage:
    dtype = storage_type.dtype.newbyteorder('>' if big_endian else '<')
    if len(raw) < numel * dtype.itemsize:
        raise ValueError(f'storage holds {len(raw)} bytes, expected {numel * dtype.itemsize}')
    return _Storage(storage_type, np.frombuffer(raw, dtype=dtype, count=numel))


def _check_storage_pid(pid: tuple) -> Tuple[_StorageType, str, int]:
    _, storage_type, key, _location, numel = pid[:5]
    if not isinstance(storage_type, _StorageType):
        raise pickle.UnpicklingError(f'storage of unknown type {storage_type!r:.80}')
    return storage_type, str(key), int(numel)


def _zip_prefix(archive: zipfile.ZipFile) -> str:
    for name in archive.namelist():
        head, _, tail = name.rpartition('/')
        if tail == 'data.pkl' and '/' not in head:
            return head + '/' if head else ''
    raise ValueError('zip archive has no data.pkl (not a PyTorch checkpoint)')


def _load_torch_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as archive:
        prefix = _zip_prefix(archive)
        names = set(archive.namelist())
        byteorder = 'little'
        if prefix + 'byteorder' in names:
            byteorder = archive.read(prefix + 'byteorder').decode('ascii').strip()
        storages: Dict[str, _Storage] = {}

        def load_storage(pid: tuple) -> _Storage:
            storage_type, key, numel = _check_storage_pid(pid)
            if key not in storages:
                raw = archive.read(f'{prefix}data/{key}')
                storages[key] = _storage_from_bytes(storage_type, raw, numel, byteorder == 'big')
            return storages[key]

        with archive.open(prefix + 'data.pkl') as pkl:
            return _RestrictedUnpickler(io.BytesIO(pkl.read()), _torch_globals(), load_storage).load()


def _materialize(obj: Any) -> Any:
    """Replace pending tensors (legacy format) by arrays once all storage bytes are known."""
    if isinstance(obj, _PendingTensor):
        return _tensor_from_storage(obj.storage, obj.offset, obj.size, obj.stride)
    if isinstance(obj, dict):
        for key in obj:
            obj[key] = _materialize(obj[key])
        return obj
    if isinstance(obj, list):
        return [_materialize(item) for item in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize(item) for item in obj)
    return obj


def _load_torch_legacy(file) -> Any:
    """Body of a legacy file after its magic number: protocol, sys info, object, keys, raw storages."""
    globals_ = _torch_globals()
    _RestrictedUnpickler(file, globals_).load()  # protocol version
    _RestrictedUnpickler(file, globals_).load()  # sys info; storages are little-endian regardless
    roots: Dict[str, _Storage] = {}
    views = []

    def load_storage(pid: tuple) -> _Storage:
        storage_type, key, _ = _check_storage_pid(pid)
        roots.setdefault(key, _Storage(storage_type))
        view_meta = pid[5] if len(pid) > 5 else None
        if view_meta is None:
            return roots[key]
        view = _Storage(storage_type)  # an old-style view of part of a root storage
        views.append((view, key, int(view_meta[1]), int(view_meta[2])))
        return view

    obj = _RestrictedUnpickler(file, globals_, load_storage).load()
    keys = _RestrictedUnpickler(file, globals_).load()
    for key in keys:
        storage = roots[str(key)]
        (numel,) = struct.unpack('<q', file.read(8))
        itemsize = storage.storage_type.dtype.itemsize
        filled = _storage_from_bytes(storage.storage_type, file.read(numel * itemsize), numel, False)
        storage.data = filled.data
    for view, key, offset, size in views:
        view.data = roots[key].data[offset:offset + size]
    return _materialize(obj)


def _unpack_paddle(obj: Any) -> Any:
    """Undo paddle.save's encodings: (name, ndarray) tuples for tensors, split big arrays."""
    if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str) and isinstance(obj[1], np.ndarray):
        return obj[1]
    if isinstance(obj, list):
        return [_unpack_paddle(item) for item in obj]
    if not isinstance(obj, dict):
        return obj
    obj = {key: _unpack_paddle(value) for key, value in obj.items()}
    for key, info in obj.pop('UnpackBigParamInfor@@', {}).items():
        obj[key] = np.concatenate([obj.pop(part) for part in info['slices']]).reshape(info['OriginShape'])
    obj.pop('StructuredToParameterName@@', None)
    return obj


def _load_pickle_file(path: str) -> Any:
    with open(path, 'rb') as file:
        first = _RestrictedUnpickler(file, _base_globals()).load()
        if type(first) is int and first == TORCH_LEGACY_MAGIC:
            return _load_torch_legacy(file)
        return _unpack_paddle(first)


def load_checkpoint(path: str) -> Any:
    """Read a `torch.save` file (zip or legacy) or a `paddle.save` pickle (.pdparams, .pdopt, .pd)
    into nested dicts/lists of numpy arrays; the format is told by content, not by extension."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'{path}: no such file')
    with open(path, 'rb') as file:
        is_zip = file.read(4) == b'PK\x03\x04'
    if is_zip:
        return _wrap_errors(path, lambda: _load_torch_zip(path))
    return _wrap_errors(path, lambda: _load_pickle_file(path))

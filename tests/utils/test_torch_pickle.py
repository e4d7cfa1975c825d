"""utils/torch_pickle.py: torch zip/legacy and Paddle pickles read without torch, and nothing else unpickled."""
import os
import pickle

import numpy as np
import paddle
import pytest

from torch_files import Storage, Tensor, write_torch_legacy, write_torch_zip
from utils.torch_pickle import load_checkpoint

BASE = np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5


def _tensors():
    """Arrays torch checkpoints hold, with the views (offset, strides) a reader must honour."""
    shared = Storage(BASE)
    return {
        'float': BASE,
        'transposed': Tensor(shared, 0, (4, 3), (1, 4)),
        'offset_view': Tensor(shared, 5, (2, 3), (4, 1)),
        'half': BASE.astype(np.float16),
        'bf16': Tensor.of(BASE, bf16=True),
        'long_scalar': np.array(7, dtype=np.int64),
        'bool': np.array([True, False, True]),
        'empty': np.zeros((0, 3), dtype=np.float32),
    }


EXPECTED = {
    'float': BASE, 'transposed': BASE.T, 'offset_view': BASE.reshape(-1)[[5, 6, 7, 9, 10, 11]].reshape(2, 3),
    'half': BASE.astype(np.float16), 'bf16': BASE,  # these values are exact in bfloat16
    'long_scalar': np.array(7, dtype=np.int64), 'bool': np.array([True, False, True]),
    'empty': np.zeros((0, 3), dtype=np.float32),
}


def _check(loaded):
    assert set(loaded) == set(EXPECTED)
    for name, want in EXPECTED.items():
        assert loaded[name].dtype == want.dtype and loaded[name].dtype.isnative, name
        np.testing.assert_array_equal(loaded[name], want, err_msg=name)


@pytest.mark.parametrize('byteorder', ['little', 'big'])
def test_zip_format_rebuilds_dtypes_views_and_byteorder(tmp_path, byteorder):
    path = tmp_path / 'ckpt.pth'
    write_torch_zip(path, {'state_dict': _tensors(), 'epoch': 3}, byteorder=byteorder)
    loaded = load_checkpoint(str(path))
    assert loaded['epoch'] == 3
    _check(loaded['state_dict'])


def test_legacy_format(tmp_path):
    path = tmp_path / 'legacy.pth'
    write_torch_legacy(path, _tensors())
    _check(load_checkpoint(str(path)))


def test_views_are_copies_not_aliases(tmp_path):
    path = tmp_path / 'ckpt.pth'
    write_torch_zip(path, _tensors())
    loaded = load_checkpoint(str(path))
    loaded['transposed'][0, 0] = 100.0
    assert loaded['float'][0, 0] == BASE[0, 0] and loaded['transposed'].flags.c_contiguous


@pytest.mark.parametrize('protocol', [2, 4])
def test_paddle_save_files_match_paddle_load(tmp_path, protocol):
    paddle.seed(0)
    layer = paddle.nn.Sequential(paddle.nn.Linear(3, 4), paddle.nn.BatchNorm1D(4))
    checkpoint = {'model': layer.state_dict(), 'epoch': 2, 'args': {'lr': 0.5}, 'best': np.float32(0.25)}
    path = str(tmp_path / 'ckpt.pd')
    paddle.save(checkpoint, path, protocol=protocol)
    paddle.save(layer.state_dict(), str(tmp_path / 'w.pdparams'), protocol=protocol)
    loaded = load_checkpoint(path)
    assert loaded['epoch'] == 2 and loaded['args'] == {'lr': 0.5} and loaded['best'] == np.float32(0.25)
    flat = load_checkpoint(str(tmp_path / 'w.pdparams'))
    assert 'StructuredToParameterName@@' not in flat
    for name, value in layer.state_dict().items():
        np.testing.assert_array_equal(loaded['model'][name], value.numpy())
        np.testing.assert_array_equal(flat[name], value.numpy())


def test_paddle_split_big_params_are_joined(tmp_path):
    # paddle.save with protocol < 4 splits arrays over 1 GiB into slices listed under 'UnpackBigParamInfor@@'.
    flat = BASE.reshape(-1)
    info = {'w': {'OriginShape': (3, 4), 'slices': ['w@@.0', 'w@@.1']}}
    path = tmp_path / 'big.pdparams'
    path.write_bytes(pickle.dumps({'w@@.0': flat[:7], 'w@@.1': flat[7:], 'UnpackBigParamInfor@@': info}, protocol=2))
    loaded = load_checkpoint(str(path))
    assert list(loaded) == ['w']
    np.testing.assert_array_equal(loaded['w'], BASE)


class _RunsCode:
    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


def test_refuses_code_in_torch_zip(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    write_torch_zip(path, {'weight': BASE, 'payload': _RunsCode(os.system, f'touch {marker}')})
    with pytest.raises(ValueError, match=r"evil\.pth: refusing to unpickle '(posix|nt)\.system'"):
        load_checkpoint(str(path))
    assert not marker.exists()


def test_refuses_code_in_paddle_pickle(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pdparams'
    payload = _RunsCode(eval, f"open({str(marker)!r}, 'w')")
    path.write_bytes(pickle.dumps({'head.weight': BASE, 'x': payload}, protocol=4))
    with pytest.raises(ValueError, match=r"evil\.pdparams: refusing to unpickle 'builtins\.eval' "
                                         r"\(only tensor data is allowed\)"):
        load_checkpoint(str(path))
    assert not marker.exists()


def test_pickle_cannot_tamper_with_rebuild_functions(tmp_path):
    # GLOBAL _codecs.encode, then BUILD with slot state {'__defaults__': ('zlib',)}: setattr on the function.
    path = tmp_path / 'tamper.pd'
    path.write_bytes(b'\x80\x02c_codecs\nencode\nN}X\x0c\x00\x00\x00__defaults__(X\x04\x00\x00\x00zlibt'
                     b'q\x00s\x86b.')
    with pytest.raises(ValueError, match='tamper.pd: .*refusing to modify a rebuild function'):
        load_checkpoint(str(path))


@pytest.mark.parametrize('writer', ['zip', 'pdparams'])
def test_truncated_file_is_one_line_value_error(tmp_path, writer):
    path = tmp_path / f'cut.{writer}'
    if writer == 'zip':
        write_torch_zip(path, _tensors())
    else:
        paddle.save({'w': BASE}, str(path))
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match=rf'cut\.{writer}: truncated or corrupt checkpoint') as info:
        load_checkpoint(str(path))
    assert '\n' not in str(info.value)


def test_storage_shorter_than_tensor_is_corrupt(tmp_path):
    path = tmp_path / 'short.pth'
    write_torch_zip(path, {'w': Tensor(Storage(BASE), 4, (3, 4), (4, 1))})
    with pytest.raises(ValueError, match='short.pth: truncated or corrupt checkpoint .*reaches past its storage'):
        load_checkpoint(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pth: no such file'):
        load_checkpoint(str(tmp_path / 'nope.pth'))

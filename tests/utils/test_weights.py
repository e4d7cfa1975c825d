"""utils/weights.py + models/cvt_weights.py + tools/convert_weights.py: every weight source round-trips into
cvt_tiny exactly, and wrong files fail with one line that names the file, the offending keys and the flag to use."""
import json
import logging
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import paddle
import pytest
from safetensors.numpy import save_file

from models import create_model
from models import cvt_weights
from models.cvt import ConvolutionalVisionTransformer
from models.cvt_weights import PRETRAINED_URLS, checkpoint_filter_fn, load_weights, resolve_source
from tests.scripts import assert_hint_flags_accepted
from torch_files import Storage, Tensor, write_torch_zip
from utils.download import cache_path
from utils.weights import read_state_dict, save_state_dict

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope='module')
def source():
    """A cvt_tiny with non-trivial BatchNorm statistics (so their renaming is exercised), in eval mode."""
    paddle.seed(1)
    model = create_model('cvt_tiny')
    rng = np.random.RandomState(0)
    for name, value in model.state_dict().items():
        if name.endswith(('._mean', '._variance')):
            value.set_value(rng.uniform(0.5, 1.5, value.shape).astype('float32'))
    model.eval()
    return model


@pytest.fixture(scope='module')
def images():
    return paddle.to_tensor(np.random.RandomState(1).randn(2, 3, 64, 64).astype('float32'))


def _outputs(model, images) -> np.ndarray:
    model.eval()
    with paddle.no_grad():
        return model(images).numpy()


def _fresh(**overrides):
    paddle.seed(2)  # different initial values than `source`, so a silent non-load would show
    return create_model('cvt_tiny', **overrides)


def _official_name(name: str) -> str:
    return re.sub(r'\._mean$', '.running_mean', re.sub(r'\._variance$', '.running_var', name))


def _official_tensors(model) -> dict:
    """The model in microsoft/CvT torch layout; Linear weights are transposed *views* as torch often stores them."""
    out = {}
    for name, value in model.state_dict().items():
        array = value.numpy()
        if name.endswith('.weight') and array.ndim == 2:
            fan_in, fan_out = array.shape
            out[name] = Tensor(Storage(array), 0, (fan_out, fan_in), (1, fan_out))
        else:
            out[_official_name(name)] = array
        if name.endswith('._variance'):
            out[name[:-len('_variance')] + 'num_batches_tracked'] = np.array(100, dtype=np.int64)
    return out


_QKV = (('q', 'query'), ('k', 'key'), ('v', 'value'))
_HF_BLOCK = {  # official block sub-module -> transformers CvtLayer path (written from modeling_cvt.py)
    'norm1': 'layernorm_before', 'norm2': 'layernorm_after', 'mlp.fc1': 'intermediate.dense',
    'mlp.fc2': 'output.dense', 'attn.proj': 'attention.output.dense',
    **{f'attn.proj_{s}': f'attention.attention.projection_{long}' for s, long in _QKV},
    **{f'attn.conv_proj_{s}.{ours}': f'attention.attention.convolution_projection_{long}.convolution_projection.{hf}'
       for s, long in _QKV for ours, hf in (('conv', 'convolution'), ('bn', 'normalization'))},
}


def _hf_name(official: str) -> str:
    head, _, leaf = official.rpartition('.')
    if head in ('norm', 'head'):
        return {'norm': 'layernorm', 'head': 'classifier'}[head] + '.' + leaf
    stage, _, rest = official.partition('.')
    base = f'cvt.encoder.stages.{stage[len("stage"):]}.'
    if rest == 'cls_token':
        return base + rest
    if rest.startswith('patch_embed.'):
        part = {'proj': 'projection', 'norm': 'normalization'}[rest.split('.')[1]]
        return f'{base}embedding.convolution_embeddings.{part}.{leaf}'
    _, block, sub = rest.split('.', 2)
    return f'{base}layers.{block}.{_HF_BLOCK[sub.rpartition(".")[0]]}.{leaf}'


def _official_arrays(model) -> dict:
    """`_official_tensors` with the views materialised as plain torch-layout arrays."""
    return {k: v if isinstance(v, np.ndarray) else v.numpy() for k, v in _official_tensors(model).items()}


def _hf_arrays(model) -> dict:
    return {_hf_name(k): v for k, v in _official_arrays(model).items()}


def _write(fmt: str, model, tmp_path) -> tuple:
    """Write `model` in source format `fmt`; returns (path, key to pass)."""
    state = model.state_dict()
    if fmt == 'official_pth':  # torch.save of a DistributedDataParallel state dict
        path = tmp_path / 'CvT-tiny.pth'
        write_torch_zip(path, {f'module.{k}': v for k, v in _official_tensors(model).items()})
    elif fmt == 'official_checkpoint':  # microsoft/CvT training checkpoint: 'model' is a name there
        path = tmp_path / 'checkpoint.pth'
        write_torch_zip(path, {'epoch': 3, 'model': 'cls_cvt', 'state_dict': _official_tensors(model), 'perf': 0.5})
    elif fmt == 'hf_bin':
        path = tmp_path / 'pytorch_model.bin'
        write_torch_zip(path, _hf_arrays(model), prefix='pytorch_model')
    elif fmt == 'hf_safetensors':
        path = tmp_path / 'model.safetensors'
        save_file(_hf_arrays(model), str(path))
    elif fmt == 'paddleclas':
        path = tmp_path / 'CvT_tiny_pretrained.pdparams'
        paddle.save(state, str(path), protocol=2)
    else:  # this repo's training checkpoint
        path = tmp_path / 'checkpoint-latest.pd'
        decoy = {k: paddle.zeros_like(v) for k, v in state.items()}
        paddle.save({'model': decoy, 'model_ema': state, 'epoch': 5, 'args': {'lr': 1e-3}}, str(path))
        return path, 'model_ema'
    return path, None


FORMATS = ['official_pth', 'official_checkpoint', 'hf_bin', 'hf_safetensors', 'paddleclas', 'repo_checkpoint']


@pytest.mark.parametrize('fmt', FORMATS)
def test_round_trip_gives_identical_outputs(fmt, source, images, tmp_path):
    path, key = _write(fmt, source, tmp_path)
    model = _fresh()
    report = load_weights(model, str(path), key=key)
    assert report['loaded'] == len(model.state_dict()) and not report['skipped']
    assert report['format'] == {'official': 'official', 'hf': 'hf'}.get(fmt.split('_')[0], 'paddle')
    np.testing.assert_array_equal(_outputs(model, images), _outputs(source, images))


def test_official_key_counts_for_cvt_13():
    # microsoft/CvT cvt-13: 459 tensors = 420 Paddle state entries + 39 BatchNorm step counters.
    model = create_model('cvt_13_224x224')
    arrays = _official_arrays(model)
    assert len(arrays) == 459
    converted, _ = checkpoint_filter_fn(arrays)
    assert len(converted) == 420 and set(converted) == set(model.state_dict())
    assert converted['head.weight'].shape == (384, 1000)


def test_wrong_variant_names_shapes(source, tmp_path):
    other = ConvolutionalVisionTransformer(depths=(1, 1, 2), dims=(16, 32, 48), heads=(1, 2, 4))
    path = tmp_path / 'other.pdparams'
    paddle.save(other.state_dict(), str(path))
    with pytest.raises(ValueError) as info:
        load_weights(_fresh(), str(path))
    message = str(info.value)
    assert '\n' not in message and message.startswith(f'{path}: does not match the model')
    assert "'stage2.patch_embed.proj.weight' has shape [48, 32, 3, 3], expected [64, 32, 3, 3]" in message
    assert "unexpected 'stage2.blocks.1." in message


def test_other_class_count_names_the_flags_that_fix_it(source, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / 'tools'))  # tools/convert_weights.py imports tools/_bootstrap
    path, _ = _write('official_pth', source, tmp_path)
    with pytest.raises(ValueError) as info:
        load_weights(_fresh(num_classes=10), str(path))
    message = str(info.value)
    assert "'head.weight' has shape [64, 1000], expected [64, 10]" in message and 'skip=' not in message
    assert '--num_classes 1000' in message and 'train.py --finetune' in message
    for script in ('eval.py', 'predict.py', 'export_model.py', 'tools/convert_weights.py', 'train.py'):
        assert assert_hint_flags_accepted(script, message) == {'--num_classes', '--finetune'}, script


def test_head_reinitialised_only_when_its_shape_differs_and_logged(source, tmp_path, caplog):
    path, _ = _write('hf_safetensors', source, tmp_path)
    model = _fresh(num_classes=10)
    head_before = model.head.weight.numpy().copy()
    messages = []
    collect = logging.Handler()  # on the logger itself: the project logger need not propagate to the root
    collect.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger('cvt.utils.weights')
    logger.addHandler(collect)
    try:
        with caplog.at_level(logging.INFO, logger=logger.name):
            report = load_weights(model, str(path), skip_if_mismatched=('head.',))
    finally:
        logger.removeHandler(collect)
    assert report['skipped'] == ['head.weight', 'head.bias']
    skipped_logs = [m for m in messages if 're-initialising' in m]
    assert len(skipped_logs) == 2 and "'head.weight'" in skipped_logs[0] and '[64, 1000]' in skipped_logs[0]
    np.testing.assert_array_equal(model.head.weight.numpy(), head_before)
    expected = source.state_dict()
    for name, value in model.state_dict().items():
        if not name.startswith('head.'):
            np.testing.assert_array_equal(value.numpy(), expected[name].numpy(), err_msg=name)
    same = _fresh()
    assert load_weights(same, str(path), skip_if_mismatched=('head.',))['skipped'] == []
    np.testing.assert_array_equal(same.head.weight.numpy(), source.head.weight.numpy())


def test_missing_key_is_named(source, tmp_path):
    state = {k: v for k, v in source.state_dict().items() if k != 'norm.bias'}
    path = tmp_path / 'partial.pdparams'
    paddle.save(state, str(path))
    with pytest.raises(ValueError, match=r"missing 'norm\.bias'"):
        load_weights(_fresh(), str(path))


def test_unknown_format_names_first_keys(tmp_path):
    path = tmp_path / 'unknown.safetensors'
    save_file({'foo.bar': np.zeros(3, np.float32), 'foo.baz': np.ones(2, np.float32)}, str(path))
    with pytest.raises(ValueError, match=r"unknown\.safetensors: unrecognised weight layout, first unknown keys: "
                                         r"'foo\.bar', 'foo\.baz'"):
        load_weights(_fresh(), str(path))


def test_unknown_hugging_face_key_is_named(source, tmp_path):
    arrays = _hf_arrays(source)
    arrays['cvt.encoder.stages.0.layers.0.attention.rotary.weight'] = np.zeros(2, np.float32)
    path = tmp_path / 'model.safetensors'
    save_file(arrays, str(path))
    with pytest.raises(ValueError, match=r"unknown Hugging Face CvT keys: 'cvt\.encoder\.stages\.0\.layers\.0\."
                                         r"attention\.rotary\.weight'"):
        load_weights(_fresh(), str(path))


def test_missing_file_and_truncated_file(source, tmp_path):
    with pytest.raises(FileNotFoundError, match=r'^weights/none\.pdparams: no such file'):
        load_weights(_fresh(), 'weights/none.pdparams')
    path, _ = _write('hf_bin', source, tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match='pytorch_model.bin: truncated or corrupt checkpoint'):
        load_weights(_fresh(), str(path))


def test_checkpoint_key_errors(source, tmp_path):
    path, _ = _write('repo_checkpoint', source, tmp_path)
    with pytest.raises(KeyError, match=r"no entry 'ema' \(top-level entries: 'model', 'model_ema', 'epoch'"):
        read_state_dict(str(path), key='ema')
    with pytest.raises(ValueError, match=r"entry 'args' holds no state dict.*--use_ema for 'model_ema'"):
        read_state_dict(str(path), key='args')
    assert not np.any(read_state_dict(str(path))['head.weight'])  # default: 'model' (the zero decoy)


def test_use_ema_on_a_run_without_ema_names_the_flags(source, tmp_path):
    path = tmp_path / 'checkpoint-latest.pd'
    paddle.save({'model': source.state_dict(), 'model_ema': None, 'args': {}}, str(path))  # train.py without EMA
    with pytest.raises(KeyError, match=r'no EMA weights in this file \(train\.py keeps them with --model_ema\); '
                                       r'drop --use_ema') as info:
        read_state_dict(str(path), key='model_ema')
    for script in ('eval.py', 'predict.py', 'export_model.py'):
        assert assert_hint_flags_accepted(script, str(info.value)) == {'--model_ema', '--use_ema'}


def test_tags_resolve_to_known_urls(monkeypatch, tmp_path):
    fetched = []
    monkeypatch.setattr(cvt_weights, 'download_url', lambda url, **kw: fetched.append(url) or str(tmp_path))
    resolve_source('cvt_13_224x224')
    resolve_source('cvt_13_384x384.hf_in22k')
    resolve_source('cvt_w24_384x384.paddleclas_in22k')
    assert fetched == [PRETRAINED_URLS['cvt_13_224x224']['hf'],
                       'https://huggingface.co/microsoft/cvt-13-384-22k/resolve/main/pytorch_model.bin',
                       'https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/'
                       'CvT_W24_384_22kto1k_pretrained.pdparams']
    with pytest.raises(ValueError, match=r"cvt_13_224x224\.timm: unknown weights tag .*cvt_13_224x224\.hf"):
        resolve_source('cvt_13_224x224.timm')


def test_save_state_dict_is_atomic_and_loadable(source, images, tmp_path):
    path = tmp_path / 'out' / 'w.pdparams'
    save_state_dict(source.state_dict(), str(path))
    assert sorted(p.name for p in path.parent.iterdir()) == ['w.pdparams']
    assert set(paddle.load(str(path))) == set(source.state_dict())
    model = _fresh()
    load_weights(model, str(path))
    np.testing.assert_array_equal(_outputs(model, images), _outputs(source, images))
    save_state_dict({'w': paddle.to_tensor([1.5, -2.0]).astype('bfloat16')}, str(path))
    np.testing.assert_array_equal(read_state_dict(str(path))['w'], np.array([1.5, -2.0], np.float32))


def test_convert_weights_list_gives_every_tag_its_url_and_cache_path(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT / 'tools'))
    assert runpy.run_path(str(ROOT / 'tools/convert_weights.py'))['main'](['--list']) == 0
    printed = capsys.readouterr().out
    for model, urls in PRETRAINED_URLS.items():
        for source, url in urls.items():
            assert f'{model}.{source}' in printed and url in printed and f'cache: {cache_path(url)}' in printed


def _convert_cli(*args):
    return subprocess.run([sys.executable, 'tools/convert_weights.py', *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={'OMP_NUM_THREADS': '1', 'PATH': '/usr/bin:/bin'})


def test_convert_weights_cli(source, images, tmp_path):
    src, _ = _write('official_pth', source, tmp_path)
    dst = tmp_path / 'cvt_tiny.pdparams'
    done = _convert_cli(str(src), str(dst), '--model', 'cvt_tiny')
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary['format'] == 'official' and summary['tensors'] == len(source.state_dict())
    model = _fresh()
    load_weights(model, str(dst))
    np.testing.assert_array_equal(_outputs(model, images), _outputs(source, images))

    failed = _convert_cli(str(tmp_path / 'nope.pth'), str(dst), '--model', 'cvt_tiny')
    assert failed.returncode == 1 and failed.stderr.count('error:') == 1
    known = ', '.join(PRETRAINED_URLS)
    assert failed.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'nope.pth'}: no such file, nor an http(s) URL or a known weights tag "
        f"({known}, optionally '.<source>')")

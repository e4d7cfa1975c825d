"""Every hint names something the script that prints it accepts: the failing commands are run as a user
would, and each flag their one-line errors name is parsed against that script's parser."""
import errno
import os
import shutil

import paddle
import pytest

from cli import run_main
from models import create_model
from models import cvt_weights
from tests.scripts import assert_hint_flags_accepted, one_line_error, script_main
from tests.shapes import write_shapes_dataset


@pytest.fixture(scope='module')
def shapes(tmp_path_factory):
    return write_shapes_dataset(str(tmp_path_factory.mktemp('shapes')), train_per_class=2, val_per_class=2, size=32)


@pytest.fixture(scope='module')
def tiny_run_checkpoint(tmp_path_factory):
    """A checkpoint as train.py writes it for cvt_tiny on 3 classes: weights and the run's args."""
    path = tmp_path_factory.mktemp('ckpt') / 'checkpoint-best.pd'
    paddle.seed(0)
    model = create_model('cvt_tiny', num_classes=3)
    paddle.save({'model': model.state_dict(), 'args': {'model': 'cvt_tiny', 'num_classes': 3}}, str(path))
    return path


def test_unreadable_val_image_names_no_option_eval_lacks(shapes, tiny_run_checkpoint, tmp_path, capsys):
    data = tmp_path / 'data'
    shutil.copytree(os.path.join(shapes, 'val'), data / 'val')
    bad = data / 'val' / 'circle' / 'bad.png'
    bad.write_bytes(b'junk')
    line = one_line_error('eval.py', [str(data), '--model', 'cvt_tiny', '--resume', str(tiny_run_checkpoint),
                                      '--num_workers', '0'], capsys)
    assert line.startswith(f'error: {bad}: unreadable image')
    assert_hint_flags_accepted('eval.py', line)


def test_failed_download_during_finetune_names_no_other_flag(shapes, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('CVT_CACHE_DIR', str(tmp_path / 'cache'))
    monkeypatch.setitem(cvt_weights.PRETRAINED_URLS, 'cvt_tiny', {'hf': 'http://127.0.0.1:9/cvt-tiny/model.bin'})
    with pytest.raises(SystemExit):
        run_main(script_main('train.py'), [shapes, '--config', 'configs/train/cvt/finetune_custom.yaml',
                                           '--model', 'cvt_tiny', '--finetune', 'cvt_tiny', '--batch_size', '2',
                                           '--output', str(tmp_path / 'out'), '--num_workers', '0'])
    message = capsys.readouterr().err
    assert 'cvt_tiny: cannot download http://127.0.0.1:9/cvt-tiny/model.bin' in message
    assert '--pretrained' not in message  # train.py's --pretrained loads strictly: not what --finetune does
    assert_hint_flags_accepted('train.py', message)


@pytest.mark.parametrize('script', ['eval.py', 'predict.py', 'export_model.py'])
def test_checkpoint_of_another_model_says_which_model_it_is(script, shapes, tiny_run_checkpoint, tmp_path, capsys):
    argv = {'eval.py': [shapes, '--num_workers', '0'],
            'predict.py': ['--images', os.path.join(shapes, 'val', 'circle', '000.png')],
            'export_model.py': ['--output', str(tmp_path / 'export')]}[script]
    line = one_line_error(script, [*argv, '--model', 'cvt_21_224x224', '--resume', str(tiny_run_checkpoint)], capsys)
    assert line == (f'error: {tiny_run_checkpoint}: this checkpoint is cvt_tiny, not cvt_21_224x224: '
                    f'pass --model cvt_tiny')
    assert_hint_flags_accepted(script, line)


def test_weights_without_a_recorded_model_are_named_by_their_layout(tmp_path, capsys):
    bare = tmp_path / 'cvt13.pdparams'
    paddle.save(create_model('cvt_13_224x224').state_dict(), str(bare))  # a released file: no run args
    line = one_line_error('predict.py', ['--images', 'demo/flower.jpg', '--model', 'cvt_tiny',
                                         '--pretrained', str(bare)], capsys)
    assert line == (f'error: {bare}: this checkpoint is cvt_13_224x224, not cvt_tiny: pass --model cvt_13_224x224 '
                    f'(or cvt_13_384x384, the same weights at another input size)')
    assert_hint_flags_accepted('predict.py', line)
    line = one_line_error('predict.py', ['--images', 'demo/flower.jpg', '--pretrained', str(bare)], capsys)
    assert line.startswith(f'error: --model is required: {bare} does not record its model')
    assert_hint_flags_accepted('predict.py', line)


def test_model_comes_from_the_checkpoint_when_not_given(shapes, tiny_run_checkpoint, tmp_path, capsys):
    image = os.path.join(shapes, 'val', 'square', '000.png')
    assert script_main('predict.py')(['--images', image, '--resume', str(tiny_run_checkpoint)]) == 0
    assert '"class_ids"' in capsys.readouterr().out
    assert script_main('export_model.py')(['--resume', str(tiny_run_checkpoint), '--output',
                                           str(tmp_path / 'export')]) == 0
    assert '"model": "cvt_tiny"' in capsys.readouterr().out
    assert script_main('eval.py')([shapes, '--resume', str(tiny_run_checkpoint), '--num_workers', '0']) == 0
    assert '"model": "cvt_tiny"' in capsys.readouterr().out


def test_model_name_suggestions_prefer_the_typed_prefix(tiny_run_checkpoint, capsys):
    line = one_line_error('predict.py', ['--images', 'demo/flower.jpg', '--model', 'cvt_13', '--resume',
                                         str(tiny_run_checkpoint)], capsys)
    assert line.startswith("error: unknown model 'cvt_13' (did you mean 'cvt_13_224x224' or 'cvt_13_384x384'?)")


def test_folder_and_read_only_targets_name_the_users_path(shapes, tiny_run_checkpoint, tmp_path, monkeypatch,
                                                          capsys):
    folder = tmp_path / 'results'
    folder.mkdir()
    image = os.path.join(shapes, 'val', 'square', '000.png')
    line = one_line_error('predict.py', ['--images', image, '--resume', str(tiny_run_checkpoint),
                                         '--output_json', str(folder)], capsys)
    assert line == f'error: {folder}: cannot write (it is a folder; name a file); the previous file, if any, ' \
                   f'is unchanged'
    out = tmp_path / 'export'
    real_makedirs = os.makedirs

    def read_only(path, *args, **kwargs):  # as a read-only folder answers a non-root user
        if os.path.dirname(os.path.abspath(path)) == str(tmp_path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), path)
        return real_makedirs(path, *args, **kwargs)
    monkeypatch.setattr(os, 'makedirs', read_only)
    line = one_line_error('export_model.py', ['--resume', str(tiny_run_checkpoint), '--output', str(out)], capsys)
    assert line.startswith(f'error: {out}: cannot write (permission denied)') and '.tmp' not in line

"""utils.config: precedence, key and type validation, args.yaml round trip, --help."""
import argparse
import os
import re

import pytest

from training.args import build_train_parser
from utils.config import add_bool, add_config_args, dump_config, parse_args


def _write(tmp_path, text, name='recipe.yaml'):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _parse(argv):
    return parse_args(build_train_parser(), argv)


def test_defaults_are_the_official_cvt13_recipe():
    args = _parse([])
    assert (args.model, args.opt, args.opt_betas, args.opt_eps) == ('cvt_13_224x224', 'adamw', [0.9, 0.999], 1e-8)
    assert (args.base_lr, args.base_batch_size, args.batch_size, args.weight_decay) == (2e-3, 2048, 256, 0.05)
    assert (args.epochs, args.warmup_epochs, args.warmup_lr, args.min_lr) == (300, 5, 1e-6, 1e-5)
    assert (args.mixup, args.cutmix, args.smoothing, args.reprob) == (0.8, 1.0, 0.1, 0.25)
    assert args.aa == 'rand-m9-mstd0.5-inc1' and args.amp is True and args.auto_resume is True
    assert args.lr is None and args.clip_grad is None and args.data_dir is None


def test_precedence_defaults_yaml_overrides_flags(tmp_path):
    cfg = _write(tmp_path, 'weight_decay: 0.1\nepochs: 5\namp: false\nopt_betas: [0.8, 0.9]\n')
    args = _parse(['--config', cfg])
    assert (args.weight_decay, args.epochs, args.amp, args.opt_betas) == (0.1, 5, False, [0.8, 0.9])
    assert args.min_lr == 1e-5  # untouched keys keep the built-in default
    args = _parse(['--config', cfg, '-o', 'epochs=7', '-o', 'opt_betas=[0.9, 0.95]'])
    assert (args.epochs, args.opt_betas) == (7, [0.9, 0.95])
    args = _parse(['/data', '--config', cfg, '-o', 'epochs=7', '--epochs', '9', '--amp'])
    assert (args.epochs, args.amp, args.weight_decay, args.data_dir) == (9, True, 0.1, '/data')


def test_negative_flag_undoes_a_yaml_true(tmp_path):
    cfg = _write(tmp_path, 'model_ema: true\nauto_resume: true\n')
    args = _parse(['--config', cfg, '--no_model_ema', '--no_auto_resume'])
    assert args.model_ema is False and args.auto_resume is False


def test_yaml_values_are_converted_like_flags(tmp_path):
    # PyYAML reads `1e-3` (no dot) as a string; the flag's type turns it into the number.
    cfg = _write(tmp_path, 'lr: 1e-3\nwarmup_lr: 0\naa: none\nclip_grad: null\ndata_dir: /data\n')
    args = _parse(['--config', cfg])
    assert args.lr == 1e-3 and isinstance(args.warmup_lr, float) and args.warmup_lr == 0.0
    assert args.aa is None and args.clip_grad is None and args.data_dir == '/data'
    assert _parse(['--aa', 'none']).aa is None


def test_unknown_key_names_file_and_suggests(tmp_path):
    cfg = _write(tmp_path, 'weight_decy: 0.1\n')
    with pytest.raises(ValueError) as err:
        _parse(['--config', cfg])
    assert str(err.value) == f"{cfg}: unknown key 'weight_decy' (did you mean 'weight_decay'?)"
    with pytest.raises(ValueError, match=r"unknown key 'zzz'; see --help"):
        _parse(['--config', _write(tmp_path, 'zzz: 1\n', 'b.yaml')])
    with pytest.raises(ValueError, match=r"^-o smothing=0\.2: unknown key 'smothing' \(did you mean 'smoothing'\?\)$"):
        _parse(['-o', 'smothing=0.2'])


def test_plumbing_keys_are_not_recipe_keys(tmp_path):
    with pytest.raises(ValueError, match="unknown key 'config'"):
        _parse(['--config', _write(tmp_path, 'config: other.yaml\n')])


@pytest.mark.parametrize('text, expected', [
    ('weight_decay: abc', "key 'weight_decay' expects a number, found 'abc'"),
    ('epochs: 2.5', "key 'epochs' expects an integer, found 2.5"),
    ('epochs: null', "key 'epochs' expects an integer, found None"),
    ('epochs: true', "key 'epochs' expects an integer, found True"),
    ('opt_betas: [0.9]', "key 'opt_betas' expects a list of 2 numbers, found [0.9]"),
    ('opt_betas: 0.9', "key 'opt_betas' expects a list of 2 numbers, found 0.9"),
    ('amp: 1', "key 'amp' expects true or false, found 1"),
    ('amp_dtype: fp16', "key 'amp_dtype' expects one of float16, bfloat16, found 'fp16'"),
    ('clip_grad: high', "key 'clip_grad' expects null or a number, found 'high'"),
    ('model: [cvt_13]', "key 'model' expects a string, found ['cvt_13']"),
])
def test_wrong_type_names_file_and_key(tmp_path, text, expected):
    cfg = _write(tmp_path, text + '\n')
    with pytest.raises(ValueError) as err:
        _parse(['--config', cfg])
    assert str(err.value) == f'{cfg}: {expected}'


def test_bad_files_give_one_line_errors(tmp_path):
    missing = str(tmp_path / 'nope.yaml')
    with pytest.raises(FileNotFoundError, match=f'^{re.escape(missing)}: config file not found$'):
        _parse(['--config', missing])
    with pytest.raises(ValueError, match='expected a mapping of flag names to values, found list'):
        _parse(['--config', _write(tmp_path, '- 1\n- 2\n')])
    with pytest.raises(ValueError, match=r'broken.yaml: not valid YAML \(line 2: mapping values') as err:
        _parse(['--config', _write(tmp_path, 'epochs: 3\nlr: a: b\n', 'broken.yaml')])
    assert '\n' not in str(err.value)
    with pytest.raises(ValueError, match='^-o epochs: expected KEY=VALUE'):
        _parse(['-o', 'epochs'])


def test_dump_round_trips_through_config(tmp_path):
    cfg = _write(tmp_path, 'weight_decay: 0.1\naa: null\nscale: [0.5, 1.0]\n')
    args = _parse(['/data', '--config', cfg, '--epochs', '3', '--no_amp', '-o', 'clip_grad=1.0'])
    out = tmp_path / 'run' / 'args.yaml'
    dump_config(args, str(out))
    assert out.read_text().startswith('#')
    assert os.listdir(out.parent) == ['args.yaml']  # the temp file was renamed, not left behind
    again = _parse(['--config', str(out)])
    plumbing = ('config', 'opts')
    assert {k: v for k, v in vars(again).items() if k not in plumbing} == \
           {k: v for k, v in vars(args).items() if k not in plumbing}


def test_help_shows_groups_and_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse(['--help'])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for group in ('data:', 'model:', 'optimizer:', 'schedule:', 'augmentation:', 'mixup:', 'regularisation:',
                  'EMA:', 'AMP:', 'distributed:', 'checkpoint/output:', 'logging:'):
        assert group in text
    assert '(default: 0.05)' in text and '--no_amp' in text and 'turn --amp off' in text


def test_help_shows_yaml_values_as_defaults(tmp_path, capsys):
    cfg = _write(tmp_path, 'weight_decay: 0.123\n')
    with pytest.raises(SystemExit):
        _parse(['--config', cfg, '--help'])
    assert '(default: 0.123)' in capsys.readouterr().out


def test_parse_args_is_generic():
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_config_args(parser)
    parser.add_argument('--weights', default=None)
    add_bool(parser, 'amp', False, 'half precision')
    args = parse_args(parser, ['-o', 'weights=w.pdparams', '--amp'])
    assert args.weights == 'w.pdparams' and args.amp is True
    with pytest.raises(ValueError, match="unknown key 'weight' \\(did you mean 'weights'\\?\\)"):
        parse_args(parser, ['-o', 'weight=x'])


def test_parser_is_reusable_after_a_config(tmp_path):
    parser = build_train_parser()
    parse_args(parser, ['--config', _write(tmp_path, 'clip_grad: 1.0\nepochs: 3\n')])
    args = parse_args(parser, ['-o', 'clip_grad=null'])
    assert args.epochs == 300 and args.clip_grad is None


@pytest.mark.parametrize('argv, expected', [
    (['--lr_rate', '1'], "train.py: error: unknown argument '--lr_rate' (did you mean '--lr'?); see train.py --help"),
    (['--epoch=3'], "train.py: error: unknown argument '--epoch=3' (did you mean '--epochs'?); see train.py --help"),
    (['--weight-decay', '1', '--zzzqqq'], "train.py: error: unknown arguments '--weight-decay' (did you mean "
                                          "'--weight_decay'?), '--zzzqqq'; see train.py --help"),
])
def test_unknown_flags_get_one_line_with_the_closest_flag(argv, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(build_train_parser(), argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [expected]


def test_unknown_flag_is_named_before_a_missing_required_one(capsys):
    from cli import script_parser
    parser = script_parser('predict.py', 'Classify images.')
    parser.add_argument('--images', required=True)
    with pytest.raises(SystemExit):
        parser.parse_args(['--image', 'x.jpg'])
    assert capsys.readouterr().err == ("predict.py: error: unknown argument '--image' (did you mean '--images'?); "
                                       "see predict.py --help\n")

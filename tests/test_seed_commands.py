"""The seed repo's README commands (flytocc/CvT-paddle, sections 4.1-4.4) run here as written, with a tiny
model's files in place of the seed's weights, and print PaddleClas's result shape; infer.py also on a graph
without inference.yml, as the seed's export_model.py writes it (protocol from flags, softmax detected)."""
import json
import logging
import runpy
import shutil

import numpy as np
import pytest

from deploy.predictors import are_probabilities
from tests.scripts import ROOT, assert_hint_flags_accepted, export_tiny, one_line_error, script_main
from training.args import build_train_parser
from utils.config import parse_args

RESULT_KEYS = ['class_ids', 'scores', 'file_name', 'label_names']
IMAGE = str(ROOT / 'demo' / 'flower.jpg')


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """(checkpoint, export folder) of a seeded 3-class cvt_tiny."""
    root = tmp_path_factory.mktemp('seed')
    return root / 'ckpt.pd', export_tiny(root, 3)


@pytest.fixture(scope='module')
def softmax_export(tmp_path_factory):
    """Export folder of a seeded 1000-class cvt_tiny whose graph ends in softmax (export_model.py --with_softmax)."""
    return export_tiny(tmp_path_factory.mktemp('seed_softmax'), 1000, '--with_softmax')


def _graph(folder) -> str:
    return str(next(p for p in (folder / 'inference.json', folder / 'inference.pdmodel') if p.is_file()))


def _without_cfg(export, tmp_path):
    """A copy of an export folder without inference.yml: the graph and parameters, as the seed's export writes."""
    bare = tmp_path / 'seed_export'
    shutil.copytree(export, bare)
    (bare / 'inference.yml').unlink()
    return bare


def _seed_infer(folder, capsys, *flags: str) -> list:
    """The seed's infer.py command on `folder`'s graph (with `flags`): its JSON results."""
    assert script_main('infer.py')(['--interpolation', 'bicubic', '--model_file', _graph(folder),
                                    '--params_file', str(folder / 'inference.pdiparams'),
                                    '--input_file', IMAGE, *flags]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _results(out: str) -> list:
    results = json.loads(out.strip().splitlines()[-1])
    assert [list(r) for r in results] == [RESULT_KEYS] and results[0]['file_name'] == IMAGE
    assert len(results[0]['class_ids']) == 3 and abs(sum(results[0]['scores']) - 1) < 1e-3
    return results


def test_predict_as_the_seed_runs_it(exported, capsys):
    ckpt, _ = exported
    assert script_main('predict.py')(['--infer_imgs', IMAGE, '--model', 'cvt_tiny', '--num_classes', '3',
                                      '--interpolation', 'bicubic', '--resume', str(ckpt)]) == 0
    _results(capsys.readouterr().out)


def test_infer_with_model_and_params_files_as_the_seed_runs_it(exported, capsys):
    _, export = exported
    model_file = next(p for p in (export / 'inference.json', export / 'inference.pdmodel') if p.is_file())
    assert script_main('infer.py')(['--interpolation', 'bicubic', '--model_file', str(model_file),
                                    '--params_file', str(export / 'inference.pdiparams'),
                                    '--input_file', IMAGE]) == 0
    _results(capsys.readouterr().out)


def test_train_flags_of_the_seed_parse():
    args = parse_args(build_train_parser(), ['data', '--cls_label_path_train', 'data/train_list.txt',
                                             '--cls_label_path_val', 'data/val_list.txt', '--log_wandb',
                                             '--wandb_project', 'cvt'])
    assert (args.cls_label_path_train, args.cls_label_path_val) == ('data/train_list.txt', 'data/val_list.txt')
    assert args.log_wandb and args.wandb_project == 'cvt'


def _no_cfg_lines(caplog) -> list:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.INFO and 'inference.yml: not found' in r.getMessage()]


def test_infer_runs_a_graph_without_inference_yml_as_the_seed_exports_it(exported, tmp_path, capsys, caplog):
    _, export = exported
    bare = _without_cfg(export, tmp_path)
    caplog.set_level(logging.INFO)
    results = _seed_infer(bare, capsys, '--input_size', '64')
    assert [list(r) for r in results] == [RESULT_KEYS] and results[0]['label_names'] == []
    # same flags, same protocol as the export's inference.yml (64px, crop_pct 0.875, bicubic): same probabilities
    assert results == _seed_infer(export, capsys)
    [line] = _no_cfg_lines(caplog)
    assert str(bare / 'inference.yml') in line and '64px, crop_pct 0.875 center, bicubic' in line
    assert 'not probabilities: softmax applied' in line
    assert assert_hint_flags_accepted('infer.py', line) >= {'--input_size', '--interpolation', '--with_softmax'}


def test_infer_detects_a_softmax_graph_without_inference_yml(softmax_export, tmp_path, capsys, caplog):
    bare = _without_cfg(softmax_export, tmp_path)
    caplog.set_level(logging.INFO)
    results = _seed_infer(bare, capsys, '--input_size', '64')
    [line] = _no_cfg_lines(caplog)
    assert '1000 classes; its outputs are probabilities' in line and '--no_with_softmax' in line
    # not softmaxed twice (that would flatten every score to ~1/1000); 1000 outputs show ImageNet's names
    assert results == _seed_infer(softmax_export, capsys) and results[0]['scores'][0] > 0.0012
    assert len(results[0]['label_names']) == 5 and all(results[0]['label_names'])


def test_infer_without_inference_yml_at_another_size_names_input_size(exported, tmp_path, capsys):
    _, export = exported
    bare = _without_cfg(export, tmp_path)
    error = one_line_error('infer.py', ['--model_file', _graph(bare), '--input_file', IMAGE], capsys)
    assert _graph(bare) in error and '[1, 3, 224, 224]' in error and '--input_size PX' in error
    assert_hint_flags_accepted('infer.py', error)


def test_infer_without_inference_yml_refuses_a_graph_of_feature_maps(tmp_path, capsys):
    bare = _without_cfg(export_tiny(tmp_path, 3, '--features_only'), tmp_path)
    error = one_line_error('infer.py', ['--model_file', _graph(bare), '--input_file', IMAGE, '--input_size', '64'],
                           capsys)
    assert error.startswith(f'error: {_graph(bare)}: the graph outputs shape [1, ')
    assert 'expected (N, num_classes)' in error


@pytest.mark.parametrize('flags, named', [(['--input_size', '224'], 'says the graph takes 64px'),
                                          (['--with_softmax'], 'says with_softmax: false')])
def test_infer_flags_for_a_graph_without_inference_yml_must_agree_with_one(exported, capsys, flags, named):
    _, export = exported
    error = one_line_error('infer.py', ['--model_file', _graph(export), '--input_file', IMAGE, *flags], capsys)
    assert f"{export / 'inference.yml'} {named}" in error and f'drop {flags[0]}' in error


@pytest.mark.parametrize('input_size, protocol', [(None, (224, 0.875, 'center')), (384, (384, 1.0, 'squash')),
                                                  (64, (64, 0.875, 'center'))])
def test_a_graph_without_inference_yml_takes_the_registry_protocol_of_its_size(input_size, protocol):
    cfg = runpy.run_path(str(ROOT / 'infer.py'))['seed_model_cfg'](input_size)
    assert (cfg['input_size'][-1], cfg['crop_pct'], cfg['crop_mode'], cfg['interpolation']) == protocol + ('bicubic',)


@pytest.mark.parametrize('rows, expected', [([[0.2, 0.8], [1.0, 0.0]], True), ([[0.2, 0.80009]], True),
                                            ([[0.2, 0.8002]], False), ([[1.1, -0.1]], False),
                                            ([[0.5, 0.5, 0.5]], False)])
def test_probabilities_are_rows_at_least_zero_summing_to_one(rows, expected):
    assert are_probabilities(np.array(rows, dtype=np.float32)) is expected

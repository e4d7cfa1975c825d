"""The seed repo's README commands (flytocc/CvT-paddle, sections 4.1-4.4) run here as written, with a tiny
model's files in place of the seed's weights, and print PaddleClas's result shape."""
import json

import pytest

from tests.scripts import ROOT, export_tiny, script_main
from training.args import build_train_parser
from utils.config import parse_args

RESULT_KEYS = ['class_ids', 'scores', 'file_name', 'label_names']
IMAGE = str(ROOT / 'demo' / 'flower.jpg')


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """(checkpoint, export folder) of a seeded 3-class cvt_tiny."""
    root = tmp_path_factory.mktemp('seed')
    return root / 'ckpt.pd', export_tiny(root, 3)


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

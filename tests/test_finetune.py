"""The fine-tuning recipe on a user's own small dataset: it refuses to start without weights, fits its batch
to the data, says when an epoch gives few updates or leaves images out, and learns (README's command)."""
import json
import logging
import os
import shlex

import pytest

import train
from tests.scripts import ROOT, assert_hint_flags_accepted, one_line_error, script_main
from tests.shapes import write_shapes_dataset
from training.args import build_train_parser
from utils.config import parse_args

RECIPE = 'configs/train/cvt/finetune_custom.yaml'


def _recipe_args(*flags):
    return parse_args(build_train_parser(), ['data', '--config', str(ROOT / RECIPE), *flags])


def test_recipe_refuses_to_start_without_finetune(tmp_path, capsys):
    line = one_line_error('train.py', [str(tmp_path), '--config', str(ROOT / RECIPE), '--output', str(tmp_path)],
                          capsys)
    assert line == (f'error: {ROOT / RECIPE}: this fine-tuning recipe needs --finetune WEIGHTS (a .pdparams/.pd '
                    f'file, URL or tag such as cvt_13_224x224); --finetune none trains it from random weights')
    assert_hint_flags_accepted('train.py', line)
    assert os.listdir(tmp_path) == []  # refused before anything is read or written


def test_finetune_none_is_the_explicit_start_from_random_weights():
    args = _recipe_args('--finetune', 'none')
    assert args.finetune is None
    train.check_finetune_source(args)  # no error
    train.check_finetune_source(_recipe_args('--finetune', 'weights/cvt_13_224x224.pdparams'))
    train.check_finetune_source(_recipe_args('--resume', 'output/run/checkpoint-latest.pd'))


@pytest.mark.parametrize('images, batch, updates', [(120, 12, 10), (300, 30, 10), (5000, 64, 78), (7, 1, 7)])
def test_recipe_fits_its_batch_to_a_small_training_set(images, batch, updates):
    args = _recipe_args('--finetune', 'w.pd')
    said = []
    collect = logging.Handler()  # on the logger itself: the project logger need not propagate to the root
    collect.emit = lambda record: said.append(record.getMessage())
    logger = logging.getLogger('cvt.train')
    logger.addHandler(collect)
    try:
        train.fit_batch_to_data(args, images, world_size=1)
    finally:
        logger.removeHandler(collect)
    assert args.batch_size == batch
    assert said == ([] if batch == 64 else [f'batch_size {batch} (not 64): {images} training images give '
                                            f'{updates} updates per epoch at --min_updates_per_epoch 10'])
    assert train.updates_per_epoch(images, args.batch_size, 1, args.update_freq) == updates
    assert train.epoch_use_note(args, images, world_size=1) is None or images in (5000, 7)


def test_few_updates_and_dropped_images_are_said_with_the_flags_that_help():
    args = parse_args(build_train_parser(), ['data', '--batch_size', '64'])
    note = train.epoch_use_note(args, 120, world_size=1)
    assert note == ('120 training images at global batch 64 give 1 update per epoch (56 images left out of each '
                    'epoch by drop_last): too few to learn from; pass --batch_size 12 (or --min_updates_per_epoch '
                    '10) for 10')
    assert_hint_flags_accepted('train.py', note)
    note = train.epoch_use_note(args, 1000, world_size=1)
    assert note.startswith('40 of 1000 training images are left out of each epoch (drop_last keeps whole batches '
                           'of global 64')
    assert_hint_flags_accepted('train.py', note)
    assert train.epoch_use_note(args, 1024, world_size=1) is None
    assert train.epoch_use_note(_recipe_args('--finetune', 'w.pd', '--batch_size', '1'), 7, world_size=1) == (
        '7 training images at global batch 1 give 7 updates per epoch: too few to learn from; add training images')
    two_ranks = train.epoch_use_note(args, 2000, world_size=2)
    assert two_ranks.startswith('80 of 2000 training images') and 'global 128' in two_ranks


def _readme_command(marker: str) -> list:
    """The README's one-line `python train.py ...` command on the line after `marker`'s code fence, as argv."""
    text = (ROOT / 'README.md').read_text(encoding='utf-8')
    block = text[text.index(marker):].split('```bash\n', 1)[1].split('```', 1)[0]
    line = next(line for line in block.splitlines() if line.startswith('python train.py'))
    return shlex.split(line)[2:]


@pytest.mark.slow
def test_readme_recipe_learns_shapes_from_a_model_trained_on_digits(tmp_path):
    """The README's CPU-sized fine-tune command, paths replaced: from cvt_tiny trained briefly on the digits
    demo data to >= 90% top-1 on 3 shapes x 40 images. About a minute on 2 idle cores."""
    pytest.importorskip('sklearn', reason='the digits dataset comes from scikit-learn (requirements-dev.txt)')
    from tools.make_demo_dataset import write_digits_dataset
    write_digits_dataset(str(tmp_path / 'digits'), image_size=32)
    assert script_main('train.py')([str(tmp_path / 'digits'), '--model', 'cvt_tiny', '--input_size', '32', '--epochs', '6',
                                    '--batch_size', '32', '--lr', '2e-3', '--warmup_epochs', '1', '--mixup', '0',
                                    '--cutmix', '0', '--aa', 'none', '--reprob', '0', '--num_workers', '0',
                                    '--output', str(tmp_path), '--experiment', 'digits', '--save_freq', '0']) == 0
    shapes = write_shapes_dataset(str(tmp_path / 'shapes'))
    argv = _readme_command('A quick try on a CPU')
    argv = [shapes if a == '/data/shapes' else str(tmp_path / 'digits' / 'checkpoint-best.pd')
            if a == 'output/demo/cvt_tiny_demo/checkpoint-best.pd' else a for a in argv]
    assert script_main('train.py')([*argv, '--output', str(tmp_path), '--num_workers', '0']) == 0
    run_dir = tmp_path / 'finetune_custom'
    records = [json.loads(line) for line in (run_dir / 'log.txt').read_text().splitlines()]
    assert records[-1]['best_acc1'] >= 90.0, [r['test_acc1'] for r in records]
    assert parse_args(build_train_parser(), ['--config', str(run_dir / 'args.yaml')]).batch_size == 12
    log = (run_dir / 'train.log').read_text()
    assert 'left out' not in log and 're-initialising' in log  # the digits head (10) is replaced by 3 classes
    start = next(line for line in log.splitlines() if 'training cvt_tiny for 30 epochs' in line)
    assert start.endswith('10 updates/epoch, global batch 12, 32px, crop_pct 0.875 center, bicubic')


def test_start_line_names_the_preprocessing_in_words():
    from datasets.transforms import resolve_data_cfg
    from models import get_model_cfg
    described = train.describe_data_cfg(resolve_data_cfg(get_model_cfg('cvt_tiny'), input_size=32))
    assert described == '32px, crop_pct 0.875 center, bicubic'

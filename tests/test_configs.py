"""configs/train/cvt/*.yaml: every recipe parses with the train.py flags and keeps the official values."""
from pathlib import Path

import pytest

from models import list_models
from training.args import FINETUNE_REQUIRED, build_train_parser
from utils.config import load_config_file, parse_args

CONFIG_DIR = Path(__file__).resolve().parents[1] / 'configs' / 'train' / 'cvt'
OFFICIAL = ('cvt_13_224x224', 'cvt_13_384x384', 'cvt_21_224x224', 'cvt_21_384x384', 'cvt_w24_384x384')
ALL = OFFICIAL + ('cvt_tiny_demo', 'finetune_384_from_224', 'finetune_custom')

# Common to every official file: AdamW, 300 epochs, 5 warmup epochs from 1e-6, cosine to 1e-5,
# Mixup .8 / CutMix 1 / smoothing .1, AMP on, no clipping, no EMA.
COMMON = dict(opt='adamw', opt_betas=[0.9, 0.999], opt_eps=1e-8, epochs=300, warmup_epochs=5, warmup_lr=1e-6,
              min_lr=1e-5, sched_on_updates=False, mixup=0.8, cutmix=1.0, mixup_prob=1.0, mixup_switch_prob=0.5,
              smoothing=0.1, amp=True, amp_dtype='float16', clip_grad=None, model_ema=False, num_classes=1000,
              hflip=0.5, vflip=0.0, scale=[0.08, 1.0], color_jitter=0.0)
TIMM_LOADER = dict(aa='rand-m9-mstd0.5-inc1', reprob=0.25, remode='pixel', recount=1, repeated_aug=False)
EXPECTED = {
    'cvt_13_224x224': dict(base_lr=2e-3, base_batch_size=2048, batch_size=256, weight_decay=0.05, drop_path=0.1,
                           **TIMM_LOADER),
    'cvt_13_384x384': dict(base_lr=2e-3, base_batch_size=2048, batch_size=256, weight_decay=0.05, drop_path=0.1,
                           **TIMM_LOADER),
    # The official cvt-21-224x224 skips the timm loader: no RandAugment, no erasing; repeated-aug sampler.
    'cvt_21_224x224': dict(base_lr=1e-3, base_batch_size=1024, batch_size=128, weight_decay=0.1, drop_path=0.1,
                           aa=None, reprob=0.0, repeated_aug=True),
    'cvt_21_384x384': dict(base_lr=1e-3, base_batch_size=1024, batch_size=128, weight_decay=0.1, drop_path=0.1,
                           **TIMM_LOADER),
    'cvt_w24_384x384': dict(base_lr=1e-3, base_batch_size=1024, batch_size=128, weight_decay=0.1, drop_path=0.3,
                            **TIMM_LOADER),
}


def _load(name):
    return parse_args(build_train_parser(), ['--config', str(CONFIG_DIR / f'{name}.yaml')])


def test_the_recipe_set_is_complete():
    assert sorted(p.stem for p in CONFIG_DIR.glob('*.yaml')) == sorted(ALL)


@pytest.mark.parametrize('name', ALL)
def test_recipe_parses_and_names_a_registered_model(name):
    args = _load(name)  # raises on any unknown key or ill-typed value
    assert args.model in list_models()
    assert (CONFIG_DIR / f'{name}.yaml').read_text().startswith('# ')


@pytest.mark.parametrize('name', OFFICIAL)
def test_official_recipe_values(name):
    args = _load(name)
    assert args.model == name
    assert {k: getattr(args, k) for k in COMMON} == COMMON
    assert {k: getattr(args, k) for k in EXPECTED[name]} == EXPECTED[name]
    # The official runs use 8 GPUs: base_lr is the LR at the official global batch, lr is left to scaling.
    assert args.batch_size * 8 == args.base_batch_size and args.lr is None


@pytest.mark.parametrize('name', OFFICIAL)
def test_official_recipe_cites_its_source(name):
    source = f"microsoft/CvT experiments/imagenet/cvt/{name.replace('_', '-')}.yaml"
    assert source in (CONFIG_DIR / f'{name}.yaml').read_text()


def test_finetune_recipes_require_weights():
    ft384 = _load('finetune_384_from_224')
    assert ft384.model.endswith('384x384') and ft384.finetune == FINETUNE_REQUIRED and ft384.num_classes == 1000
    assert (ft384.opt, ft384.momentum, ft384.base_batch_size, ft384.weight_decay) == ('sgd', 0.9, 512, 0.0)
    custom = load_config_file(str(CONFIG_DIR / 'finetune_custom.yaml'))
    assert custom['finetune'] == FINETUNE_REQUIRED and custom['num_classes'] is None
    assert _load('finetune_custom').model == 'cvt_13_224x224'


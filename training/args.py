"""train.py's flags: every training setting, grouped, with the defaults of the official recipe.

The parser machinery (YAML defaults, `-o`, one-line errors, args.yaml) is utils/config.py's.
"""
import argparse

from utils.config import ArgumentParser, HelpFormatter, add_bool, add_config_args, optional_str
from utils.env import default_num_workers

# `finetune: required` in a recipe: train.py refuses to start until --finetune names weights (or 'none').
FINETUNE_REQUIRED = 'required'


def build_train_parser() -> argparse.ArgumentParser:
    """The train.py flags, grouped; defaults follow the official cvt-13-224x224 recipe on 8 GPUs."""
    parser = ArgumentParser(
        prog='train.py', formatter_class=HelpFormatter, allow_abbrev=False,
        description='Train or fine-tune CvT. Recipes: configs/train/cvt/*.yaml.')
    add_config_args(parser)

    g = parser.add_argument_group('data')
    g.add_argument('data_dir', nargs='?', default=None,
                   help='dataset root with train/ and val/ class folders, or the root the list files refer to')
    g.add_argument('--cls_label_path_train', default=None, metavar='FILE',
                   help="training list of 'relative/path label' lines (default: class folders in data_dir/train)")
    g.add_argument('--cls_label_path_val', default=None, metavar='FILE',
                   help="validation list of 'relative/path label' lines (default: class folders in data_dir/val)")
    g.add_argument('--label_list', default=None, metavar='FILE',
                   help="'id name' lines naming the classes of a --cls_label_path_train run, stored in its "
                        "checkpoints and exports (class folders name themselves)")
    g.add_argument('--input_size', type=int, default=None, metavar='PX',
                   help="square train and eval input side (default: the model's default_cfg)")
    g.add_argument('--interpolation', default=None, choices=('nearest', 'bilinear', 'bicubic'),
                   help="resize interpolation for train and eval (default: the model's, bicubic)")
    g.add_argument('--crop_pct', type=float, default=None,
                   help="eval resizes to input_size / crop_pct, then centre-crops (default: the model's)")
    g.add_argument('--batch_size', type=int, default=256,
                   help='images per process and step; global batch = batch_size x world size x update_freq')
    g.add_argument('--min_updates_per_epoch', type=int, default=0, metavar='N',
                   help='lower --batch_size when the training set is too small for N optimizer updates per '
                        'epoch (small fine-tuning sets); 0: keep --batch_size')
    g.add_argument('--num_workers', type=int, default=default_num_workers(6),
                   help='data loader worker processes per GPU (default: 6, at most the CPU cores per process)')
    add_bool(g, 'use_shared_memory', True,
             'pass batches from loader workers through shared memory (turn off when /dev/shm is small)')
    g.add_argument('--bad_image_policy', default='skip', choices=('skip', 'error'),
                   help='an unreadable image: log its path and load another sample (counted per epoch), '
                        'or stop naming it')

    g = parser.add_argument_group('model')
    g.add_argument('--model', default='cvt_13_224x224', help='registered model name (models.list_models())')
    g.add_argument('--pretrained', default=None, metavar='WEIGHTS',
                   help='weights (path or known tag) loaded before training; all keys and shapes must match')
    g.add_argument('--finetune', type=optional_str, default=None, metavar='WEIGHTS',
                   help='weights to start a new run from; the head is re-initialised when its shape differs '
                        'from --num_classes; optimizer state and epoch are not taken over. A recipe with '
                        f"'finetune: {FINETUNE_REQUIRED}' needs it; 'none' trains such a recipe from random weights")
    g.add_argument('--num_classes', type=int, default=None,
                   help='classifier outputs (default: the number of classes in the training data)')
    add_bool(g, 'grad_checkpointing', False,
             'recompute each transformer block in backward instead of storing its activations: less memory, '
             'about one more forward per step, the same gradients (README "Gradient checkpointing")')

    g = parser.add_argument_group('fine-tuning', 'for --finetune runs; all off by default')
    g.add_argument('--layer_decay', type=float, default=None, metavar='D',
                   help='layer-wise LR decay: LR x D^(L - depth), blocks numbered across the stages (a stage\'s '
                        'patch embedding and cls token with its first block), final norm and head at L; e.g. 0.75')
    g.add_argument('--freeze_stages', type=int, default=0, choices=(0, 1, 2, 3),
                   help='stages 1..N get no gradient and no optimizer state; their BatchNorms keep their '
                        'running statistics')
    add_bool(g, 'bn_eval', False, 'every BatchNorm (the conv projections\') normalises with, and keeps, its '
                                  'running statistics during training')

    g = parser.add_argument_group('optimizer')
    g.add_argument('--opt', default='adamw', choices=('adamw', 'sgd'), help='optimizer')
    g.add_argument('--lr', type=float, default=None,
                   help='peak learning rate, absolute; when unset, base_lr x global batch / base_batch_size')
    g.add_argument('--base_lr', type=float, default=2e-3, help='peak learning rate at --base_batch_size')
    g.add_argument('--base_batch_size', type=int, default=2048, help='global batch that --base_lr is given for')
    g.add_argument('--weight_decay', type=float, default=0.05,
                   help='decoupled weight decay (biases, norms and cls tokens get none)')
    g.add_argument('--opt_eps', type=float, default=1e-8, help='AdamW epsilon')
    g.add_argument('--opt_betas', type=float, nargs=2, default=[0.9, 0.999], metavar=('BETA1', 'BETA2'),
                   help='AdamW betas')
    g.add_argument('--momentum', type=float, default=0.9, help='SGD momentum')
    g.add_argument('--clip_grad', type=float, default=None,
                   help='clip gradients at this global norm or value (see --clip_mode); unset: no clipping')
    g.add_argument('--clip_mode', default='norm', choices=('norm', 'value'), help='what --clip_grad bounds')
    g.add_argument('--update_freq', type=int, default=1, help='accumulate gradients over N steps per update')

    g = parser.add_argument_group('schedule', 'linear warmup, then cosine decay to --min_lr')
    g.add_argument('--epochs', type=int, default=300, help='training epochs')
    g.add_argument('--warmup_epochs', type=int, default=5, help='linear warmup epochs')
    g.add_argument('--warmup_lr', type=float, default=1e-6, help='learning rate at the start of warmup')
    g.add_argument('--min_lr', type=float, default=1e-5, help='learning rate at the end of the cosine')
    add_bool(g, 'sched_on_updates', False,
             'update the learning rate every optimizer step (the official runs update it once per epoch)')

    g = parser.add_argument_group('augmentation', 'training images only')
    g.add_argument('--aa', type=optional_str, default='rand-m9-mstd0.5-inc1', metavar='POLICY',
                   help="RandAugment policy string; 'none' turns it off")
    g.add_argument('--color_jitter', type=float, default=0.0,
                   help='colour-jitter strength for brightness, contrast and saturation; 0 turns it off')
    g.add_argument('--hflip', type=float, default=0.5, help='horizontal flip probability')
    g.add_argument('--vflip', type=float, default=0.0, help='vertical flip probability')
    g.add_argument('--scale', type=float, nargs=2, default=[0.08, 1.0], metavar=('MIN', 'MAX'),
                   help='random-resized-crop area range, as a fraction of the image')
    g.add_argument('--ratio', type=float, nargs=2, default=[3 / 4, 4 / 3], metavar=('MIN', 'MAX'),
                   help='random-resized-crop aspect-ratio range')
    g.add_argument('--reprob', type=float, default=0.25, help='random-erasing probability')
    g.add_argument('--remode', default='pixel', choices=('const', 'rand', 'pixel'), help='random-erasing fill')
    g.add_argument('--recount', type=int, default=1, help='random-erasing regions per image')
    add_bool(g, 'repeated_aug', False, 'repeated-augmentation sampler (DeiT RASampler): an epoch keeps its length '
             'but shows a third of the images 3 times each, differently augmented, the copies on different ranks')

    g = parser.add_argument_group('mixup', 'Mixup/CutMix on the batch; targets become soft')
    g.add_argument('--mixup', type=float, default=0.8, help='Mixup alpha; 0 turns Mixup off')
    g.add_argument('--cutmix', type=float, default=1.0, help='CutMix alpha; 0 turns CutMix off')
    g.add_argument('--cutmix_minmax', type=float, nargs=2, default=None, metavar=('MIN', 'MAX'),
                   help='CutMix box size range as a fraction of the image; replaces --cutmix alpha when set')
    g.add_argument('--mixup_prob', type=float, default=1.0, help='probability of mixing a batch')
    g.add_argument('--mixup_switch_prob', type=float, default=0.5,
                   help='probability of CutMix rather than Mixup when both are on')
    g.add_argument('--mixup_mode', default='batch', choices=('batch', 'pair', 'elem'),
                   help='mix per batch, per pair of samples, or per sample')
    g.add_argument('--mixup_off_epoch', type=int, default=0, help='stop mixing from this epoch on; 0: never')

    g = parser.add_argument_group('regularisation')
    g.add_argument('--smoothing', type=float, default=0.1, help='label smoothing')
    g.add_argument('--drop_path', type=float, default=None,
                   help="stochastic-depth rate of the last stage (default: the model's, 0.1; 0.3 for W24)")
    g.add_argument('--drop', type=float, default=0.0, help='dropout rate inside the blocks')

    g = parser.add_argument_group('EMA', 'exponential moving average of the weights, evaluated alongside')
    add_bool(g, 'model_ema', False, 'keep an EMA copy of the model')
    g.add_argument('--model_ema_decay', type=float, default=0.9998, help='EMA decay per optimizer update')

    g = parser.add_argument_group('AMP', 'automatic mixed precision (GPU)')
    add_bool(g, 'amp', True, 'train with automatic mixed precision (float16 adds a dynamic loss scaler)')
    g.add_argument('--amp_dtype', default='float16', choices=('float16', 'bfloat16'), help='low-precision dtype')
    g.add_argument('--amp_level', default='O1', choices=('O1', 'O2'),
                   help='O1: autocast over fp32 weights; O2: low-precision weights with fp32 master copies')
    g.add_argument('--max_bad_steps', type=int, default=20,
                   help='stop after this many consecutive steps with a non-finite loss or gradient; 0: never')

    g = parser.add_argument_group('graph', 'static-graph execution (paddle.jit.to_static)')
    add_bool(g, 'to_static', False,
             'run the forward (training and evaluation) as one static graph, compiled by CINN on a GPU whose Paddle '
             'has it; on CPU it gives the same losses, at about the same speed (README)')

    g = parser.add_argument_group(
        'distributed', 'launch with: python -m paddle.distributed.launch --gpus 0,1,2,3 train.py ...; '
                       'world size and rank come from the launcher, --batch_size is per process')
    g.add_argument('--seed', type=int, default=0,
                   help='random seed: model init uses it on every rank; data and dropout mix in the rank')

    g = parser.add_argument_group('checkpoint/output')
    g.add_argument('--output', default='output', metavar='DIR', help='runs root; a run writes to OUTPUT/EXPERIMENT')
    g.add_argument('--experiment', default=None, metavar='NAME',
                   help="run name (default: the --config file's stem, else the model name)")
    g.add_argument('--resume', default=None, metavar='CHECKPOINT',
                   help='training state to continue from: model, optimizer, loss scaler, EMA, epoch')
    add_bool(g, 'auto_resume', True,
             'without --resume, continue from OUTPUT/EXPERIMENT/checkpoint-latest.pd when it exists and was '
             'written by the same run (data, lists, model, classes, input size); refuse when it was not')
    add_bool(g, 'overwrite', False, 'with --no_auto_resume: delete the earlier run\'s checkpoints and log.txt '
                                    'in OUTPUT/EXPERIMENT and start over')
    g.add_argument('--eval_freq', type=int, default=1, help='evaluate every N epochs and after the last')
    g.add_argument('--save_freq', type=int, default=10,
                   help='keep a numbered checkpoint every N epochs (latest and best are saved each epoch); 0: never')
    g.add_argument('--save_every_steps', type=int, default=0,
                   help='also refresh checkpoint-latest every N optimizer steps within an epoch; 0: never')
    g.add_argument('--keep_checkpoints', type=int, default=3, help='numbered checkpoints kept; 0 keeps all')

    g = parser.add_argument_group('logging')
    g.add_argument('--print_freq', type=int, default=50, help='log training metrics every N steps')
    add_bool(g, 'log_wandb', False, 'also log to Weights & Biases (needs the wandb package)')
    add_bool(g, 'log_visualdl', False,
             'also log to VisualDL in OUTPUT/EXPERIMENT/visualdl (needs the visualdl package)')
    g.add_argument('--wandb_project', default='cvt-paddle', help='Weights & Biases project')
    add_bool(g, 'debug', False, 'full tracebacks on errors')
    return parser

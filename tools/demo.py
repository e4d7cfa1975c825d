"""The whole pipeline on real data in a few minutes on a CPU: `make demo`.

Writes scikit-learn's handwritten digits as an ImageNet-style dataset, trains cvt_tiny with the real
train.py (2 processes through paddle.distributed.launch when 2+ cores exist), then runs eval.py,
predict.py, export_model.py, infer.py and the export parity check, draws the curves and prints a
summary. Every step is the command a user would type, printed before it runs. Re-running reuses
what exists: the dataset is kept and training resumes from (or stops at) its last checkpoint.
"""
import _bootstrap  # noqa: F401  (first: repo root on sys.path, then utils.env)

import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from typing import List, Optional

from cli import run_main, script_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'configs/train/cvt/cvt_tiny_demo.yaml'
EXPERIMENT = 'cvt_tiny_demo'


def run(cmd: List[str], env=None, may_refuse: bool = False) -> Optional[str]:
    """Run one pipeline step from the repo root, echoing the command; its stdout is returned. A step
    that `may_refuse` (a precision this CPU lacks) returns None on failure, its one-line reason shown."""
    print('\n$ ' + ' '.join(shlex.quote(c) for c in cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        if may_refuse:
            return None
        raise ValueError(f'demo step failed (exit {proc.returncode}): {" ".join(cmd)}')
    return proc.stdout


def last_json(stdout: str):
    """The machine-readable result line the scripts end with."""
    return json.loads([line for line in stdout.splitlines() if line.startswith(('{', '['))][-1])


def deployed_line(deployed: dict, checkpoint_acc1: float) -> str:
    """fp32 / bf16 / int8 val top-1 of the exported model, and int8's change against the checkpoint."""
    if not deployed:
        return 'n/a (export_model.py --int8 needs paddle2onnx, onnxruntime and nncf)'
    cells = [f"{p} {'n/a (refused above)' if acc is None else f'{acc:.2f}%'}" for p, acc in deployed.items()]
    return ', '.join(cells) + f"  (int8 {deployed['int8'] - checkpoint_acc1:+.2f} points vs the checkpoint)"


def main(argv=None) -> int:
    parser = script_parser('tools/demo.py', __doc__)
    parser.add_argument('--data', default='data/digits', help='where the demo dataset is written')
    parser.add_argument('--output', default='output/demo', help='runs root for the demo')
    parser.add_argument('--nproc', type=int, default=min(2, os.cpu_count() or 1),
                        help='training processes (paddle.distributed.launch when > 1)')
    parser.add_argument('--debug', action='store_true', help='full traceback on errors')
    args = parser.parse_args(argv)
    py = sys.executable
    start = time.time()

    run([py, 'tools/make_demo_dataset.py', args.data, '--image_size', '32'])

    train = ['train.py', args.data, '--config', CONFIG, '--output', args.output]
    if args.nproc > 1:
        env = {k: v for k, v in os.environ.items() if k != 'CUDA_VISIBLE_DEVICES'}  # set at all = GPU job
        run([py, '-m', 'paddle.distributed.launch', '--nproc_per_node', str(args.nproc),
             '--log_dir', os.path.join(args.output, 'launch_logs'), *train], env=env)
    else:
        run([py, *train])
    run_dir = os.path.join(args.output, EXPERIMENT)
    ckpt = os.path.join(run_dir, 'checkpoint-best.pd')
    # The checkpoint's own run settings supply num_classes and the eval preprocessing.
    weights = ['--model', 'cvt_tiny', '--resume', ckpt]
    labels = os.path.join(args.data, 'labels.txt')

    evaluation = last_json(run([py, 'eval.py', args.data, *weights, '--batch_size', '64',
                                '--output_json', os.path.join(run_dir, 'eval.json')]))
    samples = [os.path.join(args.data, 'val', f'digit_{k}') for k in (3, 7)]
    run([py, 'predict.py', '--images', *samples, *weights, '--label_list', labels, '--topk', '3',
         '--output_json', os.path.join(run_dir, 'predictions.json')])
    export_dir = os.path.join(run_dir, 'export')
    # int8 needs the ONNX export and NNCF; calibrated on training images, scored on val
    quantise = all(importlib.util.find_spec(m) for m in ('paddle2onnx', 'onnxruntime', 'nncf'))
    run([py, 'export_model.py', *weights, '--label_list', labels, '--output', export_dir,
         *(['--onnx', '--int8', '--calib_images', os.path.join(args.data, 'train'), '--calib_count', '64']
           if quantise else [])])
    deployed = {}
    if quantise:
        backend = 'openvino' if importlib.util.find_spec('openvino') else 'onnxruntime'
        for precision in ('fp32', 'bf16', 'int8'):
            out = run([py, 'eval.py', args.data, '--model_dir', export_dir, '--backend', backend,
                       '--precision', precision, '--batch_size', '64'], may_refuse=precision == 'bf16')
            deployed[precision] = last_json(out)['acc1'] if out else None
    inference = run([py, 'infer.py', '--model_dir', export_dir, '--images', os.path.join(args.data, 'val'),
                     '--batch_size', '32', '--benchmark', '--output_json', os.path.join(run_dir, 'infer.json')])
    run([py, 'tools/check_export.py', *weights, '--model_dir', export_dir, '--images', *samples])
    plot = os.path.join(run_dir, 'curves.png')
    run([py, 'tools/plot_log.py', run_dir, '--out', plot])

    with open(os.path.join(run_dir, 'log.txt')) as f:
        epochs = [json.loads(line) for line in f if line.strip()]
    train_speed = [e['train_images_per_s'] for e in epochs if e.get('train_images_per_s')]
    infer_speed = next((line for line in inference.splitlines() if 'images/s' in line), 'n/a').strip()
    print(f"""
==================== demo summary ====================
val top-1        {evaluation['acc1']:.2f}%  (top-5 {evaluation['acc5']:.2f}%, {evaluation['num_images']} images, \
chance 10%)
training         {len(epochs)} epochs, {train_speed[-1] if train_speed else float('nan'):.0f} images/s \
({args.nproc} process{'es' if args.nproc > 1 else ''})
inference        {infer_speed}
deployed top-1   {deployed_line(deployed, evaluation['acc1'])}
files            {run_dir}/ (checkpoints, log.txt, train.log, args.yaml, curves.png, export/)
total time       {time.time() - start:.0f} s
next, on real data (ImageNet layout: DATA/train/<class>/*, DATA/val/<class>/*):
  python train.py DATA --config configs/train/cvt/cvt_13_224x224.yaml
  python eval.py DATA --model cvt_13_224x224 --pretrained cvt_13_224x224
  python predict.py --images photo.jpg --model cvt_13_224x224 --pretrained cvt_13_224x224
======================================================""")
    return 0


if __name__ == '__main__':
    run_main(main)

"""The whole pipeline on real data in a few minutes on a CPU: `make demo`.

Writes scikit-learn's handwritten digits as an ImageNet-style dataset, trains cvt_tiny with the real
train.py (2 processes through paddle.distributed.launch when 2+ cores exist), then runs eval.py,
predict.py, export_model.py, infer.py and the export parity check, draws the curves and prints a
summary. Every step is the command a user would type, printed before it runs, then its result in a
line or two: training shows its epoch results (the launcher's output and every rank's log are in
files), and long JSON results are summarised (they are in the steps' --output_json files). Re-running
reuses what exists: the dataset is kept and training resumes from (or stops at) its last checkpoint.
"""
import _bootstrap  # noqa: F401  (first: repo root on sys.path, then utils.env)

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from typing import Callable, Dict, Iterator, List, Optional

from cli import run_main, script_parser
from utils.logger import LOG_LINE

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = 'configs/train/cvt/cvt_tiny_demo.yaml'
EXPERIMENT = 'cvt_tiny_demo'
# The INFO lines of train.py the demo shows (its warnings and errors are all shown); the rest is in the logs.
TRAINING_PROGRESS = ('* epoch ', 'resumed from ', 'done: ')


def shown_python(executable: str = sys.executable, root: str = ROOT) -> str:
    """This interpreter as the user types it in the repo root: `python` when that finds it (an activated
    .venv), else its path, relative inside the repo (`.venv/bin/python`)."""
    on_path = shutil.which('python')
    if on_path and os.path.abspath(on_path) == os.path.abspath(executable):
        return 'python'
    inside = os.path.abspath(executable).startswith(os.path.abspath(root) + os.sep)
    return os.path.relpath(executable, root) if inside else executable


def shown_command(cmd: List[str]) -> str:
    """`cmd` as a line the user can paste in the repo root."""
    return ' '.join(shlex.quote(c) for c in [shown_python() if cmd[0] == sys.executable else cmd[0], *cmd[1:]])


def last_json(stdout: str):
    """The machine-readable result line the scripts end with."""
    return json.loads([line for line in stdout.splitlines() if line.startswith(('{', '['))][-1])


def _flag(cmd: List[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def _lines_starting(prefix: str) -> Callable[[str, List[str]], List[str]]:
    return lambda stdout, cmd: [line for line in stdout.splitlines() if line.startswith(prefix)]


def plain_lines(stdout: str, cmd: List[str]) -> List[str]:
    """Every line but the JSON result."""
    return [line for line in stdout.splitlines() if line.strip() and not line.startswith(('{', '['))]


def predictions_summary(results: List[dict], path: str) -> str:
    """How many images got which top-1 class, instead of the whole list."""
    counts: Dict[str, int] = {}
    for r in results:
        top1 = r['label_names'][0] if r.get('label_names') else str(r['class_ids'][0])
        counts[top1] = counts.get(top1, 0) + 1
    return f"{len(results)} images, top-1: {', '.join(f'{k} {n}' for k, n in counts.items())} (all in {path})"


def export_summary(stdout: str, cmd: List[str]) -> List[str]:
    result = last_json(stdout)
    return [f"{result['output']}/: {', '.join(result['files'])}"]


# What each step shows of its stdout (its stderr, where warnings and errors go, is always shown).
SHOWN: Dict[str, Callable[[str, List[str]], List[str]]] = {
    'eval.py': _lines_starting('* Acc@1'),
    'predict.py': lambda stdout, cmd: [predictions_summary(read_json(_flag(cmd, '--output_json')),
                                                           _flag(cmd, '--output_json'))],
    'export_model.py': export_summary,
    'infer.py': _lines_starting('benchmark:'),
}


def read_json(path: str):
    with open(os.path.join(ROOT, path), encoding='utf-8') as f:
        return json.load(f)


def run(cmd: List[str], env=None, may_refuse: bool = False) -> Optional[str]:
    """Run one pipeline step from the repo root, echoing the command, then what `shown_stderr_line` keeps
    of its stderr and the lines SHOWN keeps of its stdout, which is returned. A step that `may_refuse`
    (a precision this CPU lacks) returns None on failure, its one-line reason shown."""
    print('$ ' + shown_command(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    failed = proc.returncode != 0 and not may_refuse
    if failed:  # everything it printed; a refusal, like a success, shows only its warnings and errors
        sys.stdout.write(proc.stdout)
        sys.stdout.flush()
    sys.stderr.write(''.join(line + '\n' for line in proc.stderr.splitlines() if failed or shown_stderr_line(line)))
    sys.stderr.flush()
    if failed:
        raise ValueError(f'demo step failed (exit {proc.returncode}): {shown_command(cmd)}')
    if proc.returncode != 0:
        return None
    script = os.path.basename(next((c for c in cmd[1:] if c.endswith('.py')), ''))
    for line in SHOWN.get(script, plain_lines)(proc.stdout, cmd):
        print(line)
    return proc.stdout


def shown_stderr_line(line: str) -> bool:
    """A step's warnings and errors; not its INFO log lines (weights loaded, images found, progress)."""
    match = LOG_LINE.match(line)
    return not (match and match['level'] == 'INFO')


def shown_training_line(line: str) -> bool:
    """train.py's epoch results, resume and end lines, warnings and errors; not its per-step progress."""
    match = LOG_LINE.match(line)
    return bool(match) and (match['level'] != 'INFO' or match['message'].startswith(TRAINING_PROGRESS))


def appended_lines(path: str, offset: int, running: Callable[[], bool], poll_s: float = 0.5) -> Iterator[str]:
    """Lines written to `path` past `offset` while `running()`, then the rest (a log being followed)."""
    pending = ''
    while True:
        still_running = running()
        if os.path.exists(path):
            with open(path, encoding='utf-8', errors='replace') as f:
                f.seek(offset)
                pending += f.read()
                offset = f.tell()
            *complete, pending = pending.split('\n')
            yield from complete
        if not still_running:
            if pending:
                yield pending
            return
        time.sleep(poll_s)


def run_training(cmd: List[str], output_file: str, log_file: str, env=None) -> None:
    """Run train.py (alone or under the launcher) with its output appended to `output_file`, showing the
    lines of `log_file` (rank 0's log; the output itself without the launcher) that shown_training_line keeps."""
    print('$ ' + shown_command(cmd), flush=True)
    print(f'(output in {output_file}' + (f", rank 0's log in {log_file})" if log_file != output_file else ')'),
          flush=True)
    output_file, log_file = (os.path.join(ROOT, p) for p in (output_file, log_file))
    os.makedirs(os.path.dirname(output_file), exist_ok=True)
    offset = os.path.getsize(log_file) if os.path.exists(log_file) else 0
    seen = []
    with open(output_file, 'ab') as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        for line in appended_lines(log_file, offset, lambda: proc.poll() is None):
            seen.append(line)
            if shown_training_line(line):
                print(line, flush=True)
    if proc.returncode != 0:
        sys.stdout.write(''.join(line + '\n' for line in seen[-20:]))
        raise ValueError(f'demo step failed (exit {proc.returncode}): {shown_command(cmd)}; '
                         f'its whole output: {os.path.relpath(output_file, ROOT)}')


def deployed_line(deployed: dict, checkpoint_acc1: float) -> str:
    """fp32 / bf16 / int8 val top-1 of the exported model, and int8's change against the checkpoint."""
    if not deployed:
        return 'n/a (export_model.py --int8 needs paddle2onnx, onnxruntime and nncf)'
    cells = [f"{p} {'n/a (refused above)' if acc is None else f'{acc:.2f}%'}" for p, acc in deployed.items()]
    return ', '.join(cells) + f"  (int8 {deployed['int8'] - checkpoint_acc1:+.2f} points vs the checkpoint)"


def next_steps(python: str, data: str, ckpt: str) -> str:
    """What to run next, as printed: the first works offline, the last downloads released weights once."""
    activate = '' if python == 'python' else '; or `source .venv/bin/activate`, then `python`'
    return f"""next (in the repo root{activate}):
  {python} predict.py --images {data}/val/digit_5 --model cvt_tiny --resume {ckpt} --label_list {data}/labels.txt
  {python} train.py DATA --config configs/train/cvt/cvt_13_224x224.yaml    # DATA/train/<class>/*, DATA/val/<class>/*
  {python} eval.py DATA --model cvt_13_224x224 --pretrained cvt_13_224x224  # downloads the weights once \
(offline: README, "Getting and converting released weights")"""


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
        launch_logs = os.path.join(args.output, 'launch_logs')
        run_training([py, '-m', 'paddle.distributed.launch', '--nproc_per_node', str(args.nproc),
                      '--log_dir', launch_logs, *train], output_file=os.path.join(launch_logs, 'launcher.log'),
                     log_file=os.path.join(launch_logs, 'workerlog.0'), env=env)
    else:
        output = os.path.join(args.output, 'train_output.log')
        run_training([py, *train], output_file=output, log_file=output)
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
{next_steps(shown_python(), args.data, ckpt)}
======================================================""")
    return 0


if __name__ == '__main__':
    run_main(main)

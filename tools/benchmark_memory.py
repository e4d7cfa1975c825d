"""Peak memory and step time of one CPU training step, with and without gradient checkpointing.

    python tools/benchmark_memory.py --models cvt_13_224x224 cvt_21_224x224 --sizes 224 384 --batch_size 8

Each (model, size, checkpointing) setting runs in a fresh process: build the model in train mode (its
default drop path on) with AdamW, then steps of forward, cross-entropy, backward, AdamW step, clear grad
on random pixels; `--warmup` untimed steps, then the median of `--steps` timed ones. Memory is the
process's peak resident set (getrusage ru_maxrss: everything Paddle's CPU allocator held at the worst
moment, weights, gradients and AdamW state included), and, apart, its rise over the resident set after
the model and optimizer were built (activations, plus gradients and the AdamW moments made at the first
step: the same in both settings). Prints one JSON line per setting, then the CPU
and a table with the checkpointed/plain ratios.
"""
import _bootstrap  # noqa: F401  (repo root on sys.path, CPU runtime set before paddle loads)

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import List, Optional, Sequence

from utils.config import ArgumentParser, HelpFormatter
from utils.env import cpu_summary
from utils.fileio import write_json

HERE = os.path.abspath(__file__)


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog='tools/benchmark_memory.py', description=' '.join(__doc__.split('\n\n')[0].split()),
                            formatter_class=HelpFormatter, allow_abbrev=False)
    parser.add_argument('--models', nargs='+', default=['cvt_13_224x224', 'cvt_21_224x224'], metavar='NAME',
                        help='registered model names')
    parser.add_argument('--sizes', type=int, nargs='+', default=[224, 384], metavar='PX', help='square input sides')
    parser.add_argument('--batch_size', type=int, default=8, help='images per step')
    parser.add_argument('--warmup', type=int, default=1, help='untimed steps first')
    parser.add_argument('--steps', type=int, default=2, help='timed steps (median reported)')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads (OMP_NUM_THREADS of each run)')
    parser.add_argument('--output_json', metavar='FILE', help='also write every setting\'s result here')
    parser.add_argument('--worker', metavar='JSON', help=argparse.SUPPRESS)  # one setting, in a fresh process
    return parser


def _rss_mib() -> float:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


def measure(model_name: str, size: int, batch_size: int, grad_checkpointing: bool, warmup: int,
            steps: int) -> dict:
    """One setting, in this process (its peak RSS is this process's)."""
    import paddle
    import paddle.nn.functional as F
    from models import create_model
    paddle.seed(0)
    model = create_model(model_name)
    model.train()
    model.set_grad_checkpointing(grad_checkpointing)
    optimizer = paddle.optimizer.AdamW(learning_rate=1e-4, parameters=model.parameters())
    images = paddle.randn([batch_size, 3, size, size])
    labels = paddle.randint(0, model.num_classes, [batch_size])
    built = _rss_mib()
    times = []
    for step in range(warmup + steps):
        began = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.clear_grad()
        float(loss)  # wait for the step
        if step >= warmup:
            times.append(time.perf_counter() - began)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return dict(model=model_name, size=size, batch_size=batch_size, grad_checkpointing=grad_checkpointing,
                peak_rss_mib=round(peak), rise_mib=round(peak - built), step_s=round(statistics.median(times), 2))


def _run_setting(setting: dict, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    proc = subprocess.run([sys.executable, HERE, '--worker', json.dumps(setting)], env=env, capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f'{setting}: the measuring process failed:\n{proc.stderr[-2000:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(results: Sequence[dict]) -> List[str]:
    """Markdown rows: plain vs checkpointed peak RSS and step time per (model, size), with ratios."""
    rows = ['| model | input | batch | peak RSS plain | peak RSS checkpointed | ratio | rise plain | '
            'rise checkpointed | ratio | step plain | step checkpointed | ratio |',
            '|---|---|---|---|---|---|---|---|---|---|---|---|']
    by_key = {(r['model'], r['size'], r['grad_checkpointing']): r for r in results}
    for (model, size, checkpointed), plain in by_key.items():
        if checkpointed:
            continue
        ckpt = by_key[(model, size, True)]
        rows.append(f"| {model} | {size} | {plain['batch_size']} | {plain['peak_rss_mib']} MiB | "
                    f"{ckpt['peak_rss_mib']} MiB | {ckpt['peak_rss_mib'] / plain['peak_rss_mib']:.2f} | "
                    f"{plain['rise_mib']} MiB | {ckpt['rise_mib']} MiB | {ckpt['rise_mib'] / plain['rise_mib']:.2f} | "
                    f"{plain['step_s']:.2f} s | {ckpt['step_s']:.2f} s | {ckpt['step_s'] / plain['step_s']:.2f} |")
    return rows


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        print(json.dumps(measure(**json.loads(args.worker))))
        return 0
    for flag in ('batch_size', 'steps', 'threads'):
        if getattr(args, flag) < 1:
            raise ValueError(f'--{flag} must be >= 1, got {getattr(args, flag)}')
    results = []
    for model in args.models:
        for size in args.sizes:
            for checkpointing in (False, True):
                results.append(_run_setting(dict(model_name=model, size=size, batch_size=args.batch_size,
                                                 grad_checkpointing=checkpointing, warmup=args.warmup,
                                                 steps=args.steps), args.threads))
                print(json.dumps(results[-1]), flush=True)
    print(f"CPU: {cpu_summary()['model_name']}, {args.threads} threads")
    print('\n'.join(table(results)))
    if args.output_json:
        write_json(args.output_json, results)
    return 0


if __name__ == '__main__':
    from cli import run_main
    run_main(main)

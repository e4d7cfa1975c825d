"""Compare our Paddle CvT against the PyTorch reference logits written by make_parity_fixtures.py.

Runs in the repo venv (no torch): each weight file listed in DIR/meta.json goes through
`models.load_weights` into a fresh `create_model(MODEL, num_classes=...)`, which then runs
in eval mode, fp32, on every saved input. Prints the max |logit difference| per file and input size,
then one JSON line; exits 1 when the worst difference is above --tol.

    .venv/bin/python tools/dev/check_parity.py tests/fixtures/parity --model cvt_tiny
"""
import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from cli import run_main  # noqa: E402


def read_meta(fixture_dir: Path) -> dict:
    """The metadata make_parity_fixtures.py wrote next to the weights."""
    path = fixture_dir / 'meta.json'
    if not path.is_file():
        raise FileNotFoundError(f'{path}: not found; expected the output folder of make_parity_fixtures.py')
    return json.loads(path.read_text())


def max_logit_diffs(fixture_dir: Path, model_name: str) -> Dict[str, Dict[str, float]]:
    """{weight file: {input size: max |our logits - reference logits|}} over all fixtures in the folder."""
    import paddle
    from models import create_model
    from models import load_weights

    meta = read_meta(fixture_dir)
    diffs = {}
    for filename in meta['weights'].values():
        model = create_model(model_name, num_classes=meta['num_classes'])
        load_weights(model, str(fixture_dir / filename))
        model.eval()
        diffs[filename] = {}
        for case in meta['cases']:
            x = np.load(fixture_dir / case['input'])
            reference = np.load(fixture_dir / case['logits'])
            with paddle.no_grad():
                logits = model(paddle.to_tensor(x)).numpy()
            diffs[filename][case['size']] = float(np.abs(logits - reference).max())
    return diffs


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('fixture_dir', type=Path)
    parser.add_argument('--model', required=True, help='registered model name, e.g. cvt_13_224x224')
    parser.add_argument('--tol', type=float, default=3e-5, help='largest accepted max |logit diff|')
    parser.add_argument('--threads', type=int, default=1, help='CPU threads (the machine is shared)')
    parser.add_argument('--debug', action='store_true', help='full tracebacks')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    os.environ['OMP_NUM_THREADS'] = str(args.threads)  # before paddle is imported
    diffs = max_logit_diffs(args.fixture_dir, args.model)
    for filename, per_size in diffs.items():
        for size, diff in per_size.items():
            print(f'{filename:20s} {size:>9s}  max |logit diff| {diff:.3e}')
    worst = max(d for per_size in diffs.values() for d in per_size.values())
    print(json.dumps(dict(model=args.model, fixture_dir=str(args.fixture_dir), max_abs_diff=diffs,
                          worst=worst, tol=args.tol, ok=worst <= args.tol)))
    return 0 if worst <= args.tol else 1


if __name__ == '__main__':
    run_main(main)

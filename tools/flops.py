"""Multiply-adds and parameters per variant, counted as the CvT paper counts FLOPs.

    python tools/flops.py                      # every registered variant at its own input size
    python tools/flops.py --model cvt_13_224x224 --input_size 288

One multiply-add is one "FLOP" (the paper's Table 2: 4.5G for CvT-13 at 224): the convolutions (token
embeddings and depthwise projections), every Linear, and the two attention products q k^T and attn v.
Norms, activations, softmax and additions are left out, as in the paper's count.
"""
import _bootstrap  # noqa: F401  (first: repo root on sys.path, then utils.env)

from typing import Dict, Optional, Sequence

import numpy as np
import paddle

from cli import run_main, script_parser
from models import count_parameters, create_model, list_models
from models.cvt import Attention

PAPER_GFLOPS = {'cvt_13_224x224': 4.5, 'cvt_13_384x384': 16.3, 'cvt_21_224x224': 7.1, 'cvt_21_384x384': 24.9,
                'cvt_w24_384x384': 193.2}


@paddle.no_grad()
def count_macs(model: paddle.nn.Layer, input_size: int) -> int:
    """Multiply-adds of one eval forward pass on a 3 x input_size x input_size image."""
    total = [0]
    hooks = []

    def conv(layer, inputs, out):
        _, in_per_group, kh, kw = layer.weight.shape
        total[0] += int(np.prod(out.shape)) * in_per_group * kh * kw

    def linear(layer, inputs, out):
        total[0] += int(np.prod(out.shape)) * layer.weight.shape[0]  # Paddle's weight is [in, out]

    def attention(layer):
        tokens = {}

        def remember(key):
            def hook(sub, inputs, out):
                tokens[key] = out.shape  # (B, T, C)
            return hook

        def products(sub, inputs, out):
            batch, queries, channels = tokens['q']
            total[0] += 2 * batch * queries * tokens['k'][1] * channels  # q k^T and attn v
        return [layer.proj_q.register_forward_post_hook(remember('q')),
                layer.proj_k.register_forward_post_hook(remember('k')),
                layer.register_forward_post_hook(products)]

    for layer in model.sublayers():
        if isinstance(layer, paddle.nn.Conv2D):
            hooks.append(layer.register_forward_post_hook(conv))
        elif isinstance(layer, paddle.nn.Linear):
            hooks.append(layer.register_forward_post_hook(linear))
        elif isinstance(layer, Attention):
            hooks.extend(attention(layer))
    model.eval()
    try:
        model(paddle.zeros([1, 3, input_size, input_size]))
    finally:
        for hook in hooks:
            hook.remove()
    return total[0]


def measure(name: str, input_size: Optional[int] = None) -> Dict[str, float]:
    model = create_model(name)
    size = input_size or model.default_cfg['input_size'][-1]
    return {'model': name, 'input_size': size, 'gflops': count_macs(model, size) / 1e9,
            'params_m': count_parameters(model) / 1e6,
            'paper_gflops': PAPER_GFLOPS.get(name) if input_size in (None, size) else None}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = script_parser('tools/flops.py', __doc__)
    parser.add_argument('--model', nargs='+', default=list(PAPER_GFLOPS), choices=list_models(), metavar='NAME',
                        help='registered model names (default: the five paper variants)')
    parser.add_argument('--input_size', type=int, help="square input side (default: each variant's own)")
    parser.add_argument('--debug', action='store_true', help='full traceback on errors')
    args = parser.parse_args(argv)
    print(f'{"model":<18} {"input":>5} {"GFLOPs":>8} {"paper":>6} {"params (M)":>10}')
    for name in args.model:
        row = measure(name, args.input_size)
        paper = f'{row["paper_gflops"]:.1f}' if row['paper_gflops'] else '-'
        print(f'{name:<18} {row["input_size"]:>5} {row["gflops"]:>8.2f} {paper:>6} {row["params_m"]:>10.2f}')
    return 0


if __name__ == '__main__':
    run_main(main)

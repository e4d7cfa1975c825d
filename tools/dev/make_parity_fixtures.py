"""Write PyTorch reference weights, inputs and logits for CvT parity checks (dev-only: needs torch + transformers).

The reference is transformers' `CvtForImageClassification` with every MLP activation swapped from exact
GELU to QuickGELU, which makes it compute what the official microsoft/CvT model computes. Its weights are
filled with seeded random, non-trivial values (BatchNorm statistics, norm scales, biases, cls token), and
are saved three ways: the official microsoft/CvT state-dict layout (`official.pth`, key names written out
below independently of models/cvt_weights.py) and the Hugging Face layout (`pytorch_model.bin`,
`model.safetensors`, `config.json`). Inputs and eval-mode fp32 logits go next to them as `.npy`.

Run it with a throwaway torch environment (not the repo venv), then check with the repo venv:

    python3 -m venv /tmp/torchref && /tmp/torchref/bin/pip install torch transformers safetensors numpy
    /tmp/torchref/bin/python tools/dev/make_parity_fixtures.py --spec tiny --size 64 --num_classes 10 \
        --extra_size 72x88 --out tests/fixtures/parity
    .venv/bin/python tools/dev/check_parity.py tests/fixtures/parity --model cvt_tiny
"""
import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

try:
    import numpy as np
    import torch
    import torch.nn as nn
    import transformers
    from safetensors.torch import save_file
    from transformers import CvtConfig, CvtForImageClassification
except ImportError as err:  # the repo venv has no torch on purpose
    sys.exit(f'make_parity_fixtures.py needs torch, transformers and safetensors ({err}); '
             'see the module docstring for the throwaway venv')

# What differs between the variants; the rest is shared by all official CvT models (see _config).
SPECS = {
    'tiny': dict(depth=(1, 1, 1), embed_dim=(16, 32, 64), num_heads=(1, 2, 4)),
    'cvt_13': dict(depth=(1, 2, 10), embed_dim=(64, 192, 384), num_heads=(1, 3, 6)),
    'cvt_21': dict(depth=(1, 4, 16), embed_dim=(64, 192, 384), num_heads=(1, 3, 6)),
    'cvt_w24': dict(depth=(2, 2, 20), embed_dim=(192, 768, 1024), num_heads=(3, 12, 16)),
}
FORMATS = ('official', 'bin', 'safetensors')

# Hugging Face module path -> official microsoft/CvT (lib/models/cls_cvt.py) module path, per block.
_BLOCK_RENAMES = {
    'layernorm_before': 'norm1',
    'layernorm_after': 'norm2',
    'attention.attention.projection_query': 'attn.proj_q',
    'attention.attention.projection_key': 'attn.proj_k',
    'attention.attention.projection_value': 'attn.proj_v',
    'attention.output.dense': 'attn.proj',
    'intermediate.dense': 'mlp.fc1',
    'output.dense': 'mlp.fc2',
}
for _hf, _ours in (('query', 'q'), ('key', 'k'), ('value', 'v')):
    _prefix = f'attention.attention.convolution_projection_{_hf}.convolution_projection'
    _BLOCK_RENAMES[f'{_prefix}.convolution'] = f'attn.conv_proj_{_ours}.conv'
    _BLOCK_RENAMES[f'{_prefix}.normalization'] = f'attn.conv_proj_{_ours}.bn'


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the official CvT MLP activation (transformers' CvT uses exact GELU)."""

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


def _config(spec: str, num_classes: int) -> CvtConfig:
    arch = SPECS[spec]
    # layer_norm_eps is not read by the CvT modules (they use torch's 1e-5, as the official code); set it anyway.
    return CvtConfig(num_labels=num_classes, patch_sizes=[7, 3, 3], patch_stride=[4, 2, 2], patch_padding=[2, 1, 1],
                     embed_dim=list(arch['embed_dim']), num_heads=list(arch['num_heads']), depth=list(arch['depth']),
                     mlp_ratio=[4.0] * 3, qkv_bias=[True] * 3, cls_token=[False, False, True],
                     kernel_qkv=[3] * 3, stride_kv=[2] * 3, stride_q=[1] * 3, padding_kv=[1] * 3, padding_q=[1] * 3,
                     drop_path_rate=[0.0, 0.0, 0.1], layer_norm_eps=1e-5)


def build_reference(spec: str, num_classes: int) -> nn.Module:
    """transformers CvT with QuickGELU in every MLP, i.e. the official model under other names."""
    config = _config(spec, num_classes)
    depth = list(config.depth)
    # transformers picks a block's drop-path rate by the stage index (harmless in eval), which fails when a
    # stage has fewer blocks than its index (tiny); build with enough blocks, then keep the first `depth`.
    config.depth = [max(d, i + 1) for i, d in enumerate(depth)]
    model = CvtForImageClassification(config)
    for stage, d in zip(model.cvt.encoder.stages, depth):
        stage.layers = stage.layers[:d]
    config.depth = depth
    swapped = 0
    for name, module in model.named_modules():
        if name.endswith('.intermediate'):
            module.activation = QuickGELU()
            swapped += 1
    assert swapped == sum(SPECS[spec]['depth']), f'swapped {swapped} MLP activations'
    assert not any(isinstance(m, nn.GELU) for m in model.modules()), 'an exact GELU is left'
    for m in model.modules():  # the official model uses torch's default eps everywhere
        if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)):
            assert m.eps == 1e-5, f'{m} has eps {m.eps}'
    return model.eval()


@torch.no_grad()
def randomize(model: nn.Module, seed: int) -> None:
    """Fill every parameter and BN buffer with seeded values that are far from any default init,
    scaled by fan-in so that deep variants keep O(1) activations and logits."""
    gen = torch.Generator().manual_seed(seed)

    def normal(t, std):
        t.copy_(torch.randn(t.shape, generator=gen) * std)

    def uniform(t, low, high):
        t.copy_(low + (high - low) * torch.rand(t.shape, generator=gen))

    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            normal(module.weight, module.weight[0].numel() ** -0.5)
            if module.bias is not None:
                normal(module.bias, 0.1)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm2d)):
            uniform(module.weight, 0.5, 1.5)
            normal(module.bias, 0.1)
            if isinstance(module, nn.BatchNorm2d):
                normal(module.running_mean, 0.1)
                uniform(module.running_var, 0.5, 1.5)
                module.num_batches_tracked.fill_(1234)
    for name, param in model.named_parameters():
        if name.endswith('cls_token'):
            normal(param, 1.0)


def official_key(hf_key: str) -> str:
    """Map one transformers CvT state-dict key to the official microsoft/CvT key."""
    if hf_key.startswith('layernorm.'):
        return 'norm.' + hf_key[len('layernorm.'):]
    if hf_key.startswith('classifier.'):
        return 'head.' + hf_key[len('classifier.'):]
    parts = hf_key.split('.')
    if parts[:3] != ['cvt', 'encoder', 'stages']:
        raise KeyError(f'{hf_key}: not a transformers CvT key')
    stage, rest = f'stage{parts[3]}', parts[4:]
    if rest == ['cls_token']:
        return f'{stage}.cls_token'
    if rest[:2] == ['embedding', 'convolution_embeddings']:
        module = {'projection': 'proj', 'normalization': 'norm'}[rest[2]]
        return f'{stage}.patch_embed.{module}.{rest[3]}'
    if rest[0] == 'layers':
        block, path, leaf = rest[1], '.'.join(rest[2:-1]), rest[-1]
        return f'{stage}.blocks.{block}.{_BLOCK_RENAMES[path]}.{leaf}'
    raise KeyError(f'{hf_key}: no official counterpart')


def official_state_dict(hf_state: dict) -> dict:
    """The same tensors under official names; checks the mapping is one-to-one and the count is right."""
    state = {official_key(k): v for k, v in hf_state.items()}
    assert len(state) == len(hf_state), 'two Hugging Face keys map to one official key'
    return state


def expected_official_count(spec: str) -> int:
    """Tensors in an official state dict: 34 per block, 4 per patch embed, cls token, final norm, head."""
    return 34 * sum(SPECS[spec]['depth']) + 4 * 3 + 1 + 2 + 2


def _atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + '.')
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; these are meant to be shared and committed
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _save_npy(path: Path, array: np.ndarray) -> None:
    def write(tmp):
        with open(tmp, 'wb') as f:  # a file object, so np.save does not append '.npy' to the temp name
            np.save(f, array)
    _atomic(path, write)


def _parse_size(text: str) -> tuple:
    """'64' -> (64, 64); '72x88' -> (72, 88) as (height, width)."""
    parts = text.lower().split('x')
    if len(parts) not in (1, 2) or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"size '{text}': expected N or HxW with positive integers")
    return (int(parts[0]), int(parts[-1]))


def _size_tag(hw: tuple) -> str:
    return f'{hw[0]}x{hw[1]}'


def write_fixtures(spec: str, sizes: list, num_classes: int, out: Path, seed: int, batch: int,
                   formats: tuple) -> dict:
    """Build, randomize and run the reference; write weights, inputs and logits; return the metadata."""
    model = build_reference(spec, num_classes)
    randomize(model, seed)
    hf_state = {k: v.contiguous() for k, v in model.state_dict().items()}
    official = official_state_dict(hf_state)
    assert len(official) == expected_official_count(spec), f'{len(official)} official tensors'
    out.mkdir(parents=True, exist_ok=True)
    if 'official' in formats:
        _atomic(out / 'official.pth', lambda p: torch.save(official, p))
    if 'bin' in formats:
        _atomic(out / 'pytorch_model.bin', lambda p: torch.save(hf_state, p))
    if 'safetensors' in formats:
        _atomic(out / 'model.safetensors', lambda p: save_file(hf_state, p, metadata={'format': 'pt'}))
    _atomic(out / 'config.json', lambda p: model.config.to_json_file(p))

    rng = np.random.RandomState(seed)
    cases = []
    for hw in sizes:
        x = rng.standard_normal((batch, 3) + hw).astype(np.float32)
        with torch.no_grad():
            logits = model(torch.from_numpy(x)).logits.numpy()
        tag = _size_tag(hw)
        _save_npy(out / f'input_{tag}.npy', x)
        _save_npy(out / f'logits_{tag}.npy', logits)
        cases.append(dict(size=tag, input=f'input_{tag}.npy', logits=f'logits_{tag}.npy',
                          logits_abs_max=float(np.abs(logits).max())))
    meta = dict(spec=spec, num_classes=num_classes, seed=seed, batch=batch, cases=cases,
                weights={f: n for f, n in (('official', 'official.pth'), ('bin', 'pytorch_model.bin'),
                                           ('safetensors', 'model.safetensors')) if f in formats},
                official_tensors=len(official), torch=torch.__version__,
                transformers=transformers.__version__)
    _atomic(out / 'meta.json', lambda p: Path(p).write_text(json.dumps(meta, indent=2) + '\n'))
    return meta


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--spec', choices=sorted(SPECS), required=True)
    parser.add_argument('--size', type=int, required=True, help='square input side, e.g. 224 or 384')
    parser.add_argument('--extra_size', default=None, help='a second input size HxW, e.g. 72x88')
    parser.add_argument('--num_classes', type=int, default=1000)
    parser.add_argument('--out', type=Path, required=True)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--batch', type=int, default=2)
    parser.add_argument('--formats', default=','.join(FORMATS), help=f'comma list of {", ".join(FORMATS)}')
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads (the machine is shared)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    formats = tuple(f for f in args.formats.split(',') if f)
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        sys.exit(f'--formats: unknown {unknown}, expected a subset of {list(FORMATS)}')
    try:
        sizes = [(args.size, args.size)] + ([_parse_size(args.extra_size)] if args.extra_size else [])
    except ValueError as err:
        sys.exit(f'--extra_size: {err}')
    torch.set_num_threads(args.threads)
    meta = write_fixtures(args.spec, sizes, args.num_classes, args.out, args.seed, args.batch, formats)
    print(json.dumps(dict(out=str(args.out), **meta)))
    return 0


if __name__ == '__main__':
    sys.exit(main())

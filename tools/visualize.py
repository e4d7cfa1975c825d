"""What a CvT looks at: per image, a PNG with the input, its attention rollout and its Grad-CAM, overlaid.

    python tools/visualize.py demo/ --model cvt_13_224x224 --pretrained cvt_13_224x224 --output vis/
    python tools/visualize.py img.png --model cvt_tiny --resume output/run/checkpoint-best.pd --class_id 3 --output vis/

The input panel is the image as the model sees it (the eval transform: resize, crop, then the normalisation
undone). Both maps are for the predicted class, or `--class_id`.

Attention rollout (Abnar & Zuidema 2020) follows the stage-3 class token back to the pixels. Each block
mixes tokens by 0.5 A + 0.5 I (A: its attention averaged over heads, I: the residual). CvT's keys and
values are strided (a 2x2-subsampled grid), so A maps queries to key positions: each key's weight is
spread evenly over the query positions nearest to it (query (y, x) -> key (y * kh // h, x * kw // w),
nearest upsampling that keeps the row's sum), which makes A square. Only the class token's row of the
product is needed, so it is carried backwards through the blocks as a vector. At the start of stage 3
the class token's own share is dropped (it enters as a learned parameter and carries no image); between
stages a token's weight is spread the same way over the tokens of the finer grid under it (the strided
conv embedding, read as nearest upsampling). What is left on the stage-1 grid (stride 4) is the map;
a model without a class token starts from the mean of its last stage's tokens.

Grad-CAM (Selvaraju et al. 2017) weighs the channels of the stage-3 token map by the mean gradient of the
class logit and keeps the positive part. The map used is the one entering the last block: the map the
stage outputs leaves that block beside the class token the head reads, so no gradient reaches it.
"""
import _bootstrap  # noqa: F401  (repo root on sys.path, CPU runtime set before paddle loads)

import argparse
import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import paddle
import paddle.nn.functional as F

from cli import IMAGES_HELP, add_image_args, add_weight_args, label_names_for, load_model, run_main, script_parser
from datasets.transforms import build_transform, resolve_data_cfg
from deploy.classify import find_images, preprocess
from models.cvt import Block
from utils.fileio import atomic_write


def build_parser() -> argparse.ArgumentParser:
    parser = script_parser('tools/visualize.py', __doc__)
    parser.add_argument('paths', nargs='*', metavar='IMAGES', help=IMAGES_HELP)
    add_weight_args(parser)
    group = parser.add_argument_group('output')
    add_image_args(group, required=False, help=f'{IMAGES_HELP} (as well as, or instead of, IMAGES)')
    group.add_argument('--output', required=True, metavar='DIR', help='folder for one <image name>.png per image')
    group.add_argument('--class_id', type=int, help='class whose maps are drawn (default: the predicted one)')
    group.add_argument('--label_list', metavar='FILE',
                       help="'id name' lines naming the classes (default: the ImageNet list for 1000 classes)")
    parser.add_argument('--debug', action='store_true', help='full traceback on errors')
    return parser


def _spread(values: np.ndarray, src: Tuple[int, int], dst: Tuple[int, int]) -> np.ndarray:
    """Weights on an (sh, sw) grid spread evenly over the (dh, dw) grid positions nearest to each, flattened."""
    (sh, sw), (dh, dw) = src, dst
    index = ((np.arange(dh) * sh // dh)[:, None] * sw + (np.arange(dw) * sw // dw)[None, :]).ravel()
    counts = np.bincount(index, minlength=sh * sw)
    return values[index] / counts[index]


def attention_rollout(attentions: Sequence[dict]) -> np.ndarray:
    """The class token's rollout on the first stage's grid (H/4, W/4), summing to 1, for one image.

    `attentions`: every block's `Attention.attention` of that image, in order, `probs` as a numpy
    (heads, queries, keys) array."""
    stages: List[List[dict]] = []  # consecutive blocks on one token grid
    for attention in attentions:
        if stages and stages[-1][0]['query_grid'] == attention['query_grid']:
            stages[-1].append(attention)
        else:
            stages.append([attention])
    grid = stages[-1][0]['query_grid']
    if stages[-1][0]['cls_token']:
        rollout = np.zeros(1 + grid[0] * grid[1])
        rollout[0] = 1.0
    else:
        rollout = np.full(grid[0] * grid[1], 1.0 / (grid[0] * grid[1]))
    for blocks in reversed(stages):
        if blocks[0]['query_grid'] != grid:  # onto the finer grid of the stage before
            rollout = _spread(rollout, grid, blocks[0]['query_grid'])
            grid = blocks[0]['query_grid']
        cls = int(blocks[0]['cls_token'])
        for attention in reversed(blocks):
            over_keys = rollout @ attention['probs'].mean(axis=0)  # heads averaged: (queries, keys)
            spread = _spread(over_keys[cls:], attention['key_grid'], grid)
            rollout = 0.5 * rollout + 0.5 * np.concatenate([over_keys[:cls], spread])
        rollout = rollout[cls:]  # the class token's own share: a learned parameter, no image in it
    rollout = rollout.reshape(grid)
    return rollout / rollout.sum()


def grad_cam(tokens: paddle.Tensor, grad: paddle.Tensor, grid: Tuple[int, int], cls_token: bool) -> np.ndarray:
    """Grad-CAM on the (1, T, C) token map `tokens` (a class token first when `cls_token`) from the class
    logit's gradient `grad` there: channels weighted by their mean gradient, summed, positive part; (h, w),
    max 1 (all 0 when nothing is positive)."""
    grad, values = grad[0, int(cls_token):].numpy(), tokens[0, int(cls_token):].numpy()  # (h*w, C)
    cam = np.maximum(values @ grad.mean(axis=0), 0.0).reshape(grid)
    return cam / cam.max() if cam.max() > 0 else cam


def explain(model, image: np.ndarray, class_id: Optional[int] = None) -> Dict:
    """Probabilities, the class explained, its attention rollout and Grad-CAM for one (3, H, W) image."""
    blocks = [layer for layer in model.sublayers() if isinstance(layer, Block)]
    attention_layers = [block.attn for block in blocks]
    captured = []  # the inputs (tokens, h, w) of the last block
    hook = blocks[-1].register_forward_pre_hook(lambda layer, inputs: captured.append(inputs))
    for layer in attention_layers:
        layer.keep_attention = True
    try:
        logits = model(paddle.to_tensor(image[None]))
    finally:
        hook.remove()
        for layer in attention_layers:
            layer.keep_attention = False
    attentions = [dict(layer.attention, probs=layer.attention['probs'][0].numpy()) for layer in attention_layers]
    for layer in attention_layers:
        layer.attention = None
    probs = F.softmax(logits, axis=-1)[0].numpy()
    target = int(np.argmax(probs)) if class_id is None else class_id
    tokens, h, w = captured[0]
    # backward() and a hook, not paddle.grad: the CPU Linear (a PyLayer) computes the weights' gradients too
    grads = []
    tokens.register_hook(grads.append)
    logits[0, target].backward()
    model.clear_gradients()
    return dict(probs=probs, class_id=target, rollout=attention_rollout(attentions),
                grad_cam=grad_cam(tokens, grads[0], (h, w), attention_layers[-1].with_cls_token))


def _overlay(axis, picture: np.ndarray, heatmap: np.ndarray, title: str) -> None:
    from PIL import Image
    h, w = picture.shape[:2]
    resized = np.asarray(Image.fromarray(heatmap.astype(np.float32), mode='F').resize((w, h), Image.BILINEAR))
    axis.imshow(picture)
    axis.imshow(resized, cmap='jet', alpha=0.5, vmin=0.0, vmax=max(float(resized.max()), 1e-12))
    axis.set_title(title, fontsize=9)
    axis.axis('off')


def draw(path: str, picture: np.ndarray, found: Dict, caption: str) -> None:
    """input | rollout | Grad-CAM, side by side, written atomically to `path` (PNG)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.4))
    axes[0].imshow(picture)
    axes[0].set_title('input (as the model sees it)', fontsize=9)
    axes[0].axis('off')
    _overlay(axes[1], picture, found['rollout'], 'attention rollout (class token)')
    evidence = found['grad_cam'].max() > 0  # else no channel speaks for the class: an empty map, said so
    _overlay(axes[2], picture, found['grad_cam'],
             'Grad-CAM (stage 3)' if evidence else 'Grad-CAM: no positive evidence')
    fig.suptitle(caption, fontsize=10)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format='png', dpi=100)
    plt.close(fig)


def _output_names(files: Sequence[str]) -> List[str]:
    """<image name>.png, numbered when two images share a name."""
    names, seen = [], {}
    for path in files:
        stem = os.path.splitext(os.path.basename(path))[0]
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f'{stem}.png' if seen[stem] == 1 else f'{stem}_{seen[stem]}.png')
    return names


def visualize_images(model, files: Sequence[str], output_dir: str, class_id: Optional[int] = None,
                     label_names: Optional[Sequence[str]] = None) -> List[dict]:
    """One PNG per image in `output_dir`, for any CvT (from load_model, create_model or paddle.hub), preprocessed
    with its default_cfg's eval transform; returns per image the file, the PNG, the class drawn and its score."""
    model.eval()
    data_cfg = resolve_data_cfg(model.default_cfg)
    transform = build_transform(is_train=False, **data_cfg)
    mean, std = np.asarray(data_cfg['mean']), np.asarray(data_cfg['std'])
    os.makedirs(output_dir, exist_ok=True)
    results = []
    for path, name in zip(files, _output_names(files)):
        image = preprocess([path], transform)[0]
        found = explain(model, image, class_id)
        target, score = found['class_id'], float(found['probs'][found['class_id']])
        label = label_names[target].split(',')[0].strip() if label_names else f'class {target}'
        picture = np.clip(image.transpose(1, 2, 0) * std + mean, 0.0, 1.0)
        out = os.path.join(output_dir, name)
        draw(out, picture, found, f'{os.path.basename(path)}: {label} (id {target}), p = {score:.3f}')
        results.append(dict(file=path, output=out, class_id=target, score=round(score, 5)))
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    inputs = list(args.paths) + list(args.images or [])
    if not inputs:
        raise ValueError('no images given: pass IMAGES (files, folders or globs) or --images PATH')
    files = find_images(inputs)
    model = load_model(args.model, args.resume, args.pretrained, args.use_ema, args.num_classes)
    if args.class_id is not None and not 0 <= args.class_id < model.num_classes:
        raise ValueError(f'--class_id must be in 0..{model.num_classes - 1} (the model\'s classes), '
                         f'got {args.class_id}')
    results = visualize_images(model, files, args.output, args.class_id,
                               label_names_for(model.num_classes, args.label_list))
    print(json.dumps(results, ensure_ascii=False))
    return 0


if __name__ == '__main__':
    run_main(main)

"""tools/visualize.py: attention maps returned without changing the forward, rollout over strided keys, and on a
model trained where the answer is known (the class sits in the top-left quadrant) both maps peak there."""
import json
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
import pytest
from PIL import Image

from cli import load_model
from datasets.transforms import build_transform, resolve_data_cfg
from deploy.classify import find_images, preprocess
from models import create_model
from models.cvt import Attention
from tests.scripts import one_line_error, script_main
from tools.visualize import _spread, attention_rollout, explain, grad_cam, visualize_images

ROOT = Path(__file__).resolve().parents[2]
SIZE = 64
RUN_ARGS = {'num_classes': 2, 'input_size': SIZE, 'crop_pct': 1.0, 'interpolation': 'bicubic'}


def _quadrant_image(rng, label: int) -> np.ndarray:
    """Grey noise; class 0 adds a red square somewhere in the top-left quadrant, class 1 nothing. The square
    is all the evidence there is, so a model that tells the classes apart must find it there."""
    image = rng.uniform(0.3, 0.7, (SIZE, SIZE, 1)).repeat(3, axis=2)
    if label == 0:
        top, left = rng.integers(2, SIZE // 4 - 2, size=2)
        image[top:top + SIZE // 4, left:left + SIZE // 4] = (0.9, 0.1, 0.1)
    return (image * 255).astype(np.uint8)


def _write_images(folder: Path, labels: list, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i, label in enumerate(labels):
        Image.fromarray(_quadrant_image(rng, label)).save(folder / f'img{i:02d}_class{label}.png')


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """(checkpoint, folder of 6 unseen class-0 images) of a cvt_tiny that learned to find the red square."""
    root = tmp_path_factory.mktemp('quadrant')
    labels = [i % 2 for i in range(32)]
    _write_images(root / 'train', labels, seed=0)
    _write_images(root / 'test', [0] * 6, seed=1)
    paddle.seed(0)
    model = create_model('cvt_tiny', num_classes=2)
    transform = build_transform(is_train=False, **resolve_data_cfg(model.default_cfg, input_size=SIZE, crop_pct=1.0))
    x, y = paddle.to_tensor(preprocess(find_images([str(root / 'train')]), transform)), paddle.to_tensor(labels)
    optimizer = paddle.optimizer.AdamW(learning_rate=3e-3, parameters=model.parameters())
    model.train()
    for step in range(150):
        batch = slice(step % 2 * 16, step % 2 * 16 + 16)
        F.cross_entropy(model(x[batch]), y[batch]).backward()
        optimizer.step()
        optimizer.clear_grad()
    ckpt = root / 'ckpt.pd'
    paddle.save({'model': model.state_dict(), 'args': RUN_ARGS}, str(ckpt))
    return ckpt, root / 'test'


def _quadrant_means(heatmap: np.ndarray) -> list:
    h, w = heatmap.shape[0] // 2, heatmap.shape[1] // 2
    return [heatmap[:h, :w].mean(), heatmap[:h, w:].mean(), heatmap[h:, :w].mean(), heatmap[h:, w:].mean()]


def _in_top_left(heatmap: np.ndarray) -> bool:
    """Both the map's maximum and its largest quadrant mean are in the top-left quadrant."""
    row, col = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    return row < heatmap.shape[0] // 2 and col < heatmap.shape[1] // 2 and np.argmax(_quadrant_means(heatmap)) == 0


@pytest.mark.slow
def test_both_maps_peak_in_the_quadrant_that_holds_the_evidence(trained):
    ckpt, images = trained
    model = load_model('cvt_tiny', resume=str(ckpt))
    transform = build_transform(is_train=False, **resolve_data_cfg(model.default_cfg))
    found = [explain(model, preprocess([path], transform)[0]) for path in find_images([str(images)])]
    assert [f['class_id'] for f in found] == [0] * 6
    for f in found:
        assert f['rollout'].shape == (16, 16) and abs(f['rollout'].sum() - 1) < 1e-6  # stride 4
        assert f['grad_cam'].shape == (4, 4) and f['grad_cam'].max() == 1.0  # stride 16
        assert _in_top_left(f['rollout']), f['rollout']
    # Grad-CAM on a 4 x 4 map of a model trained for 150 steps is coarse: most images, and their mean
    assert sum(_in_top_left(f['grad_cam']) for f in found) >= 4, [f['grad_cam'] for f in found]
    assert _in_top_left(np.mean([f['grad_cam'] for f in found], axis=0))


@pytest.mark.slow
def test_cli_writes_one_picture_per_image(trained, tmp_path, capsys):
    ckpt, images = trained
    files = find_images([str(images)])
    out = tmp_path / 'vis'
    assert script_main('tools/visualize.py')([files[0], '--images', str(images), '--model', 'cvt_tiny',
                                              '--resume', str(ckpt), '--output', str(out), '--class_id', '1']) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r['file'] for r in results] == files  # a file named twice is drawn once
    assert [r['class_id'] for r in results] == [1] * 6 and all(r['score'] < 0.5 for r in results)
    assert sorted(p.name for p in out.iterdir()) == sorted(Path(f).stem + '.png' for f in files)
    with Image.open(out / (Path(files[0]).stem + '.png')) as picture:
        assert picture.format == 'PNG' and picture.size[0] > 2 * picture.size[1]  # three panels side by side
    assert one_line_error('tools/visualize.py', [files[0], '--model', 'cvt_tiny', '--resume', str(ckpt),
                                                 '--output', str(out), '--class_id', '2'], capsys) == (
        "error: --class_id must be in 0..1 (the model's classes), got 2")
    assert one_line_error('tools/visualize.py', ['--model', 'cvt_tiny', '--resume', str(ckpt), '--output',
                                                 str(out)], capsys) == (
        'error: no images given: pass IMAGES (files, folders or globs) or --images PATH')


@pytest.mark.slow
def test_a_hub_model_is_drawn_the_same(trained, tmp_path):
    ckpt, images = trained
    weights = tmp_path / 'tiny.pdparams'
    paddle.save(paddle.load(str(ckpt))['model'], str(weights))
    model = paddle.hub.load(str(ROOT), 'cvt_tiny', source='local', pretrained=str(weights), num_classes=2)
    model.default_cfg.update(input_size=(3, SIZE, SIZE), crop_pct=1.0)  # the run's protocol, as the checkpoint has
    files = find_images([str(images)])[:2]
    results = visualize_images(model, files, str(tmp_path / 'hub'))
    assert [r['class_id'] for r in results] == [0, 0]
    assert [r['score'] for r in results] == [r['score'] for r in visualize_images(
        load_model('cvt_tiny', resume=str(ckpt)), files, str(tmp_path / 'ckpt'))]


def test_keeping_attention_leaves_the_forward_unchanged():
    paddle.seed(0)
    model = create_model('cvt_tiny', num_classes=3)
    model.eval()
    x = paddle.randn([2, 3, 64, 96])
    with paddle.no_grad():
        plain = model(x).numpy()
        layers = [layer for layer in model.sublayers() if isinstance(layer, Attention)]
        for layer in layers:
            layer.keep_attention = True
        kept = model(x).numpy()
    np.testing.assert_array_equal(kept, plain)
    last = layers[-1].attention
    assert (last['query_grid'], last['key_grid'], last['cls_token']) == ((4, 6), (2, 3), True)
    assert last['probs'].shape == [2, 4, 1 + 4 * 6, 1 + 2 * 3]  # (B, heads, cls + queries, cls + keys)
    np.testing.assert_allclose(last['probs'].sum(-1).numpy(), 1.0, atol=1e-5)
    assert layers[0].attention['key_grid'] == (8, 12) and not layers[0].attention['cls_token']


def test_rollout_maps_strided_keys_back_to_the_queries_under_them():
    # one stage with a class token, 4 x 4 queries, 2 x 2 keys; the class token attends only to key (0, 1)
    probs = np.full((1, 17, 5), 0.2)
    probs[0, 0] = [0, 0, 1, 0, 0]
    rollout = attention_rollout([dict(probs=probs, query_grid=(4, 4), key_grid=(2, 2), cls_token=True)])
    expected = np.zeros((4, 4))
    expected[:2, 2:] = 0.25  # key (0, 1) covers queries rows 0-1, columns 2-3; its weight is spread evenly
    np.testing.assert_allclose(rollout, expected)
    # the stage before (8 x 8 grid, its own keys 4 x 4): each token's weight goes to the 2 x 2 tokens under it
    uniform = dict(probs=np.full((1, 64, 16), 1 / 16), query_grid=(8, 8), key_grid=(4, 4), cls_token=False)
    spread = attention_rollout([uniform, dict(probs=probs, query_grid=(4, 4), key_grid=(2, 2), cls_token=True)])
    assert spread.shape == (8, 8) and abs(spread.sum() - 1) < 1e-9
    assert spread[:4, 4:].sum() == pytest.approx(0.5 + 0.5 * 16 / 64)  # the residual half stays, the rest spreads
    np.testing.assert_allclose(_spread(np.arange(4.0), (2, 2), (3, 3)).reshape(3, 3),
                               [[0, 0, 0.5], [0, 0, 0.5], [1, 1, 3]])  # odd grid: 4, 2 or 1 queries per key


def test_grad_cam_weighs_channels_by_their_mean_gradient_and_keeps_the_positive_part():
    tokens = paddle.to_tensor([[[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 0.0]]])  # class token first
    grad = paddle.to_tensor([[[5.0, 5.0], [1.0, -1.0], [1.0, -1.0], [1.0, -1.0], [1.0, -1.0]]])
    np.testing.assert_allclose(grad_cam(tokens, grad, (2, 2), cls_token=True), [[0.5, 0.0], [1.0, 0.0]])
    assert not grad_cam(tokens, -grad, (2, 2), cls_token=True)[1].any()  # channel 1 only: -1 * values

"""CvT as a backbone: forward_intermediates, features_only with feature_info, the head API, a features-only
export run by Paddle Inference, and a small FPN-style head that learns on the three maps."""
import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
import pytest
import yaml

from models import create_model, list_models
from models.cvt import CvTFeatures
from tests.scripts import one_line_error, script_main
from deploy.layout import find_model_files, read_inference_cfg


def _tiny(**overrides):
    paddle.seed(0)
    model = create_model('cvt_tiny', num_classes=5, **overrides)
    model.eval()
    return model


@pytest.mark.parametrize('name', list_models())
def test_feature_info_of_every_variant(name):
    with paddle.LazyGuard():
        model = create_model(name)
    dims = {'cvt_w24_384x384': [192, 768, 1024], 'cvt_tiny': [16, 32, 64]}.get(name, [64, 192, 384])
    assert model.feature_info == [dict(num_chs=c, reduction=r, module=f'stage{i}')
                                  for i, (c, r) in enumerate(zip(dims, [4, 8, 16]))]


@pytest.mark.parametrize('name', ['cvt_13_224x224', 'cvt_tiny'])
def test_intermediates_at_a_non_square_size_divisible_by_16(name):
    paddle.seed(0)
    model = create_model(name)
    model.eval()
    x = paddle.randn([1, 3, 256, 320])
    with paddle.no_grad():
        features, maps = model.forward_intermediates(x)
        logits = model(x)
    assert [m.shape for m in maps] == [[1, info['num_chs'], 256 // info['reduction'], 320 // info['reduction']]
                                       for info in model.feature_info]
    # one pass gives both: the head on forward_intermediates' features is the plain forward, bit for bit
    np.testing.assert_array_equal(model.forward_head(features).numpy(), logits.numpy())
    np.testing.assert_array_equal(model.forward_head(features, pre_logits=True).numpy(), features.numpy())


def test_the_last_map_is_what_the_head_reads():
    x = paddle.randn([2, 3, 64, 96])
    # mean-token pooling: the head's features are the normed mean of the last map's tokens
    pooled = _tiny(cls_tokens=(False, False, False))
    with paddle.no_grad():
        features, maps = pooled.forward_intermediates(x)
        tokens = maps[-1].flatten(2).transpose([0, 2, 1])  # (B, H*W, C)
        np.testing.assert_allclose(pooled.norm(tokens).mean(axis=1).numpy(), features.numpy(), atol=1e-6)
        np.testing.assert_array_equal(pooled.forward_features(x).numpy(), features.numpy())
    # cls token (every released variant): the map leaves stage 3 beside the token the head reads
    model = _tiny()
    with paddle.no_grad():
        features, maps = model.forward_intermediates(x)
        out, cls_token = x, None
        for i in range(3):
            out, cls_token = getattr(model, f'stage{i}')(out)
            np.testing.assert_array_equal(maps[i].numpy(), out.numpy())
        np.testing.assert_array_equal(model.norm(cls_token).squeeze(1).numpy(), features.numpy())


def test_indices_formats_norm_and_stopping_early(monkeypatch):
    model = _tiny()
    x = paddle.randn([2, 3, 64, 64])
    with paddle.no_grad():
        _, maps = model.forward_intermediates(x)
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        nhwc = model.forward_intermediates(x, indices=[-1, 0], output_fmt='NHWC', intermediates_only=True)
        normed = model.forward_intermediates(x, indices=[2], norm=True, intermediates_only=True)[0]
    np.testing.assert_array_equal(last_two[0].numpy(), maps[1].numpy())
    np.testing.assert_array_equal(nhwc[0].numpy(), maps[0].numpy().transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(nhwc[1].numpy(), maps[2].numpy().transpose(0, 2, 3, 1))
    expected = model.norm(paddle.to_tensor(maps[2].numpy().transpose(0, 2, 3, 1))).numpy().transpose(0, 3, 1, 2)
    np.testing.assert_allclose(normed.numpy(), expected, atol=1e-6)
    ran = []
    monkeypatch.setattr(model.stage2, 'forward', lambda x: ran.append(1))
    with paddle.no_grad():
        assert len(model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)) == 2
    assert not ran  # the stages after the last one asked for are not run
    for bad in ([3], [0, -3], [], 0, 4):
        with pytest.raises(ValueError, match=r'indices: expected'):
            model.forward_intermediates(x, indices=bad)
    with pytest.raises(ValueError, match="output_fmt: expected one of NCHW, NHWC, got 'NLC'"):
        model.forward_intermediates(x, output_fmt='NLC')


def test_features_only_model_keeps_the_classifiers_names_and_gives_its_maps(tmp_path):
    classifier = _tiny()
    weights = tmp_path / 'tiny.pdparams'
    paddle.save(classifier.state_dict(), str(weights))
    backbone = create_model('cvt_tiny', num_classes=5, pretrained=str(weights), features_only=True,
                            out_indices=(1, 2))
    backbone.eval()
    assert isinstance(backbone, CvTFeatures)
    assert backbone.feature_info == classifier.feature_info[1:]
    state, full = backbone.state_dict(), classifier.state_dict()
    assert set(state) == set(full) - {'norm.weight', 'norm.bias', 'head.weight', 'head.bias'}
    x = paddle.randn([1, 3, 80, 48])
    with paddle.no_grad():
        expected = classifier.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
        for got, want in zip(backbone(x), expected):
            np.testing.assert_array_equal(got.numpy(), want.numpy())
    shallow = create_model('cvt_tiny', features_only=True, out_indices=[0])
    assert not any(k.startswith(('stage1.', 'stage2.')) for k in shallow.state_dict())
    with pytest.raises(ValueError, match=r'out_indices: expected distinct stage indices in -3..2, got \[0, 0\]'):
        create_model('cvt_tiny', features_only=True, out_indices=[0, 0])


def test_reset_and_get_classifier():
    model = _tiny()
    model.reset_classifier(3)
    assert model.get_classifier() is model.head and model.head.weight.shape == [64, 3]
    assert model.num_classes == 3 and model.default_cfg['num_classes'] == 3
    assert float(model.head.bias.abs().sum()) == 0.0 and float(model.head.weight.std()) > 0
    assert model(paddle.randn([2, 3, 64, 64])).shape == [2, 3]
    model.reset_classifier(0)
    assert isinstance(model.get_classifier(), nn.Identity)
    np.testing.assert_array_equal(model(paddle.ones([1, 3, 64, 64])).numpy(),
                                  model.forward_features(paddle.ones([1, 3, 64, 64])).numpy())


def _paddle_inference_outputs(model_dir, batch):
    from paddle import inference
    config = inference.Config(*find_model_files(str(model_dir)))
    config.disable_gpu()
    config.disable_glog_info()
    predictor = inference.create_predictor(config)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(list(batch.shape))
    handle.copy_from_cpu(batch)
    predictor.run()
    return [predictor.get_output_handle(name).copy_to_cpu() for name in predictor.get_output_names()]


def test_features_only_export_runs_in_paddle_inference_like_dygraph(tmp_path, capsys):
    paddle.seed(0)
    classifier = create_model('cvt_tiny', num_classes=3)
    classifier.eval()
    # class names, as a train.py checkpoint records them: a backbone export names no classes
    paddle.save({'model': classifier.state_dict(), 'class_names': ['a', 'b', 'c']}, str(tmp_path / 'ckpt.pd'))
    out = tmp_path / 'backbone'
    assert script_main('export_model.py')(['--model', 'cvt_tiny', '--num_classes', '3', '--resume',
                                           str(tmp_path / 'ckpt.pd'), '--output', str(out), '--features_only',
                                           '--out_indices', '0', '2']) == 0
    cfg = yaml.safe_load((out / 'inference.yml').read_text())
    assert cfg['feature_info'] == [classifier.feature_info[0], classifier.feature_info[2]]
    assert cfg['label_names'] is None and cfg['class_names'] is None
    batch = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with paddle.no_grad():
        expected = classifier.forward_intermediates(paddle.to_tensor(batch), indices=[0, 2],
                                                    intermediates_only=True)
    got = _paddle_inference_outputs(out, batch)
    assert [g.shape for g in got] == [(2, 16, 16, 16), (2, 64, 4, 4)]  # the export's input_size, 64
    for g, want in zip(got, expected):
        np.testing.assert_allclose(g, want.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match='a features-only export .* feature maps, not class scores'):
        read_inference_cfg(str(out))
    capsys.readouterr()
    base = ['--model', 'cvt_tiny', '--num_classes', '3', '--resume', str(tmp_path / 'ckpt.pd'),
            '--output', str(tmp_path / 'other')]
    assert one_line_error('export_model.py', [*base, '--features_only', '--with_softmax'], capsys) == (
        'error: --with_softmax applies to a classifier export; drop it or drop --features_only')
    assert one_line_error('export_model.py', [*base, '--out_indices', '1'], capsys) == (
        'error: --out_indices is read only with --features_only')


class TinyFPN(nn.Layer):
    """Lateral 1x1 convs to one width, top-down nearest upsampling and sums, a per-pixel classifier at stride 4."""

    def __init__(self, feature_info, width=16, num_classes=2):
        super().__init__()
        self.lateral = nn.LayerList([nn.Conv2D(info['num_chs'], width, 1) for info in feature_info])
        self.classify = nn.Conv2D(width, num_classes, 3, padding=1)

    def forward(self, maps):
        x = self.lateral[-1](maps[-1])
        for lateral, skip in zip(self.lateral[-2::-1], maps[-2::-1]):
            x = F.interpolate(x, size=skip.shape[2:], mode='nearest') + lateral(skip)
        return self.classify(x)


def test_a_tiny_fpn_head_learns_segmentation_on_the_three_maps():
    paddle.seed(0)
    backbone = create_model('cvt_tiny', features_only=True)
    head = TinyFPN(backbone.feature_info)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((4, 3, 64, 64)).astype(np.float32)
    masks = np.zeros((4, 16, 16), dtype=np.int64)  # a bright square to segment, at stride 4
    for i, (top, left) in enumerate(rng.integers(0, 40, size=(4, 2))):
        images[i, :, top:top + 24, left:left + 24] += 2.0
        masks[i, top // 4:(top + 24) // 4, left // 4:(left + 24) // 4] = 1
    params = backbone.parameters() + head.parameters()
    optimizer = paddle.optimizer.AdamW(learning_rate=2e-3, parameters=params)
    x, y = paddle.to_tensor(images), paddle.to_tensor(masks)
    losses = []
    for _ in range(15):
        logits = head(backbone(x))  # (B, 2, 16, 16)
        loss = F.cross_entropy(logits.transpose([0, 2, 3, 1]), y.unsqueeze(-1))
        loss.backward()
        if not losses:  # every backbone parameter takes part: the stages it keeps are all used
            assert [p.name for p in params if not p.stop_gradient and p.grad is None] == []
        optimizer.step()
        optimizer.clear_grad()
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses

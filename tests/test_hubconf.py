"""paddle.hub.load(REPO, name, source='local') builds every variant and loads weights by path."""
from pathlib import Path

import numpy as np
import paddle

from models import create_model, list_models

ROOT = Path(__file__).resolve().parents[1]


def test_hub_lists_every_variant_and_loads_weights_from_a_path(tmp_path):
    assert set(list_models()) <= set(paddle.hub.list(str(ROOT), source='local'))
    reference = create_model('cvt_tiny', num_classes=3)
    weights = tmp_path / 'tiny.pdparams'
    paddle.save(reference.state_dict(), str(weights))
    model = paddle.hub.load(str(ROOT), 'cvt_tiny', source='local', pretrained=str(weights), num_classes=3)
    assert model.num_classes == 3 and model.default_cfg['input_size'] == (3, 64, 64)
    for name, value in reference.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[name].numpy(), value.numpy(), err_msg=name)
    untrained = paddle.hub.load(str(ROOT), 'cvt_tiny', source='local')
    assert untrained.num_classes == 1000


def test_hub_builds_a_backbone_with_features_only():
    paddle.seed(0)
    backbone = paddle.hub.load(str(ROOT), 'cvt_tiny', source='local', features_only=True, out_indices=[1, 2])
    assert [info['reduction'] for info in backbone.feature_info] == [8, 16]
    maps = backbone(paddle.randn([1, 3, 64, 64]))
    assert [m.shape for m in maps] == [[1, 32, 8, 8], [1, 64, 4, 4]]

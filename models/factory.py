"""create_model: a registered variant built, its pretrained weights loaded, optionally as a backbone.

Apart from models/registry.py, which cvt.py registers its variants into and the weight loader's hints read:
the registry imports neither, so there is no import circle.
"""
from typing import Optional, Sequence

from .cvt import CvTFeatures
from .cvt_weights import load_weights
from .registry import build_registered


def create_model(name: str, pretrained: Optional[str] = None, features_only: bool = False,
                 out_indices: Sequence[int] = (0, 1, 2), **overrides):
    """Build a registered model; `overrides` (num_classes, drop_path_rate, drop_rate, ...) go to
    the constructor, `pretrained` (path, URL or known tag) is loaded strictly. With `features_only`, the
    classifier (weights loaded first) becomes a backbone returning the maps of the stages in `out_indices`
    (models.cvt.CvTFeatures, with `feature_info`)."""
    model = build_registered(name, **overrides)
    if pretrained:
        load_weights(model, pretrained)
    if features_only:
        model = CvTFeatures(model, out_indices)
    return model

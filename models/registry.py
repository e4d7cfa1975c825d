"""Name -> constructor registry for the model zoo, with each variant's default cfg attached."""
import difflib
from typing import Callable, Dict, List, Optional, Sequence

from .cvt_weights import load_weights

_MODELS: Dict[str, Callable] = {}
_CFGS: Dict[str, dict] = {}


def register_model(default_cfg: dict) -> Callable:
    """Register the decorated constructor under its function name, with its default cfg
    (input_size, crop_pct, crop_mode, interpolation, mean, std, num_classes)."""
    def wrap(fn: Callable) -> Callable:
        _MODELS[fn.__name__] = fn
        _CFGS[fn.__name__] = dict(default_cfg, architecture=fn.__name__)
        return fn
    return wrap


def list_models() -> List[str]:
    return sorted(_MODELS)


def similar_models(name: str) -> List[str]:
    """Registered names `name` most likely meant: those it begins (`cvt_13` -> both cvt_13 sizes), else
    the closest spellings."""
    extending = [m for m in list_models() if m.startswith(name)]
    return extending or difflib.get_close_matches(name, _MODELS, n=2)


def _check_name(name: str) -> None:
    if name not in _MODELS:
        close = similar_models(name)
        hint = f" (did you mean {' or '.join(repr(m) for m in close)}?)" if close else ''
        raise ValueError(f"unknown model '{name}'{hint}; available: {', '.join(list_models())}")


def get_model_cfg(name: str) -> dict:
    """The variant's default cfg: preprocessing and evaluation protocol travel with the name."""
    _check_name(name)
    return dict(_CFGS[name])


def create_model(name: str, pretrained: Optional[str] = None, features_only: bool = False,
                 out_indices: Sequence[int] = (0, 1, 2), **overrides):
    """Build a registered model; `overrides` (num_classes, drop_path_rate, drop_rate, ...) go to
    the constructor, `pretrained` (path, URL or known tag) is loaded strictly. With `features_only`, the
    classifier (weights loaded first) becomes a backbone returning the maps of the stages in `out_indices`
    (models.cvt.CvTFeatures, with `feature_info`)."""
    _check_name(name)
    model = _MODELS[name](**overrides)
    model.default_cfg = dict(_CFGS[name], num_classes=model.num_classes)
    if pretrained:
        load_weights(model, pretrained)
    if features_only:
        from .cvt import CvTFeatures  # registry is imported by cvt.py: import here, not at the top
        model = CvTFeatures(model, out_indices)
    return model

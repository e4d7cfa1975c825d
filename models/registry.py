"""Name -> constructor registry for the model zoo, with each variant's default cfg attached (models/factory.py
builds from it)."""
import difflib
from typing import Callable, Dict, List

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


def build_registered(name: str, **overrides):
    """The registered constructor of `name` called with `overrides`, its default cfg attached (num_classes
    as built); models.create_model adds weights and the backbone form."""
    _check_name(name)
    model = _MODELS[name](**overrides)
    model.default_cfg = dict(_CFGS[name], num_classes=model.num_classes)
    return model

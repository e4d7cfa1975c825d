"""CvT model zoo: `create_model(name, pretrained=None, **overrides)` and `list_models()`."""
import utils.env  # noqa: F401  (first: CPU threads before paddle loads)

from . import cvt  # noqa: F401  (registers the variants)
from .cvt_weights import load_weights, resolve_source
from .layers import count_parameters
from .factory import create_model
from .registry import get_model_cfg, list_models

__all__ = ['create_model', 'list_models', 'get_model_cfg', 'load_weights', 'resolve_source', 'count_parameters']

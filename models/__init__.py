"""CvT model zoo: `create_model(name, pretrained=None, **overrides)` and `list_models()`."""
from utils.env import configure_cpu_runtime

configure_cpu_runtime()

from .registry import create_model, list_models, get_model_cfg  # noqa: E402
from . import cvt  # noqa: E402,F401  (registers the variants)

__all__ = ['create_model', 'list_models', 'get_model_cfg']

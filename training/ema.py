"""Exponential moving average of model weights, with timm ModelEmaV2 semantics.

Every floating-point state-dict entry, parameters AND buffers (BatchNorm running mean/variance),
is averaged: ema = decay * ema + (1 - decay) * model; non-float entries are copied. The copy lives
in fp32 and eval mode and never takes gradients. (The official CvT recipe trains without EMA; this
is DeiT's `--model-ema`, decay 0.99996.)
"""
import copy
from typing import Dict

import paddle
import paddle.nn as nn

from utils.distributed import unwrap_model


def _is_float(tensor: paddle.Tensor) -> bool:
    return tensor.dtype in (paddle.float16, paddle.bfloat16, paddle.float32, paddle.float64)


class ModelEma:
    """EMA copy of a model; evaluate `ema.module`, checkpoint `ema.state_dict()`.

    Build it from the bare model or a `paddle.DataParallel` wrapper (unwrapped here), after the weights
    are loaded, and call `update(state_dict)` after every optimizer step. `decay` is fixed at construction.
    """

    def __init__(self, model: nn.Layer, decay: float = 0.99996):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f'ModelEma: decay must be in [0, 1], got {decay}')
        self.decay = decay
        # lerp_ turns a Python float weight into a new host-to-device copy at every call (one per tensor per
        # update); this tensor holds the same float32 value once, so updates copy nothing from the host.
        self._weight = paddle.full([1], 1.0 - decay, dtype='float32')
        self.module = copy.deepcopy(unwrap_model(model))
        self.module.eval()
        # fp32 master copy: averaging in half precision would round away (1 - decay) * model
        self.module.to(dtype='float32')
        for param in self.module.parameters():
            param.stop_gradient = True

    @paddle.no_grad()
    def update(self, model_state: Dict[str, paddle.Tensor]) -> None:
        """ema = decay * ema + (1 - decay) * model over every float entry; copy the rest.

        `model_state` is the training model's state dict (under O2, `training.amp.fp32_state_dict`, so the
        average follows the fp32 master weights rather than their low-precision copies).
        """
        for name, ema_value in self.module.state_dict().items():
            if name not in model_state:
                raise KeyError(f"ModelEma: model has no '{name}'; was the EMA built from a different model?")
            new = model_state[name].detach()
            if _is_float(ema_value):
                ema_value.lerp_(new if new.dtype == paddle.float32 else new.astype('float32'), self._weight)
            else:
                ema_value.set_value(new)

    def state_dict(self) -> Dict[str, paddle.Tensor]:
        return self.module.state_dict()

    def set_state_dict(self, state: Dict[str, paddle.Tensor]) -> None:
        """Load EMA weights strictly: missing or unexpected keys and shape mismatches raise."""
        own = self.module.state_dict()
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        if missing or unexpected:
            raise KeyError(f'ModelEma.set_state_dict: missing keys {missing[:5]}, unexpected keys {unexpected[:5]}')
        for name, value in state.items():
            if list(value.shape) != list(own[name].shape):
                raise ValueError(f"ModelEma.set_state_dict: '{name}' has shape {list(value.shape)}, "
                                 f'expected {list(own[name].shape)}')
            value = paddle.to_tensor(value) if not isinstance(value, paddle.Tensor) else value
            own[name].set_value(value.astype(own[name].dtype))

"""Mixed precision for training and evaluation: the autocast settings, the fp16 loss scaler, O2 set-up
and the fp32 view of O2 weights.

On a CPU Paddle turns autocast and the loss scaler off; these code paths are given GPU semantics in
tests/gpu_semantics.py.
"""
import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Set

import paddle

# On a CPU build Paddle warns at every autocast and scaler construction that AMP has no effect there;
# train.py says so once instead (`AmpConfig.cpu_note`).
warnings.filterwarnings('ignore', message=r'(AmpScaler|amp_guard) can only be enabled on CUDAPlace')


@dataclass
class AmpConfig:
    enable: bool = False
    dtype: str = 'float16'
    level: str = 'O1'

    def autocast(self):
        # softmax and layer_norm stay fp32: attention logits and norm statistics overflow fp16 first.
        return paddle.amp.auto_cast(enable=self.enable, dtype=self.dtype, level=self.level,
                                    custom_white_list=self.low_precision_ops,
                                    custom_black_list={'softmax', 'layer_norm'})

    @property
    def low_precision_ops(self) -> Set[str]:
        """Ops run in the low dtype beyond Paddle's white list.

        `depthwise_conv2d` (every conv projection of CvT on a GPU) is on no Paddle AMP list, so under O1 it
        ran in fp32 between fp16 layers, with two casts each. Its GPU kernels are registered for float16
        forward and backward (paddle/phi/kernels/gpu/depthwise_conv_kernel.cu and
        depthwise_conv_grad_kernel.cu, PD_REGISTER_KERNEL(depthwise_conv2d[_grad], GPU, ...)); the backward
        has no bfloat16 kernel, so a bf16 run keeps it in fp32.
        """
        return {'depthwise_conv2d'} if self.dtype == 'float16' else set()

    def cpu_note(self) -> Optional[str]:
        """One line for a run that asks for AMP where Paddle cannot give it, else None."""
        if self.enable and not paddle.is_compiled_with_cuda():
            return (f'--amp ({self.dtype} {self.level}) has no effect on this CPU build of Paddle: autocast and '
                    f'loss scaling need a GPU, so this run computes in fp32')
        return None

    @property
    def needs_loss_scaling(self) -> bool:
        return self.enable and self.dtype == 'float16'  # bf16 has fp32's range


class GradScaler(paddle.amp.GradScaler):
    """paddle.amp.GradScaler with `_update` free of `float()` on its shape-[1] scale tensor.

    Paddle 2.6 and 3.3 print the scale with `float(self._scale)` whenever they lower it, which numpy >= 2.4
    rejects (only 0-d arrays convert to Python scalars): the first fp16 overflow would end the run. The
    update rule below is Paddle's own, unchanged.
    """

    @property
    def _found_inf_cache(self) -> str:
        """The attribute where Paddle's `step` leaves whether it skipped (Paddle 2.6 spells it `_cache_founf_inf`)."""
        return '_cache_found_inf' if hasattr(self, '_cache_found_inf') else '_cache_founf_inf'

    def _update(self):
        if not self._enable:
            return
        found_inf = getattr(self, self._found_inf_cache, None)
        if found_inf:
            self._incr_count = 0
            self._decr_count += 1
            if self._decr_count == self._decr_every_n_nan_or_inf:
                self._scale = self._scale * self._decr_ratio
                self._decr_count = 0
        else:
            self._decr_count = 0
            self._incr_count += 1
            if self._incr_count == self._incr_every_n_steps:
                self._scale = self._scale * self._incr_ratio
                self._incr_count = 0

    def loss_scale(self) -> float:
        return float(self._scale.reshape([])) if self._enable else 1.0

    def step_and_update(self, optimizer) -> bool:
        """Unscale, step unless a gradient is inf/NaN, adapt the scale; True if the update was applied.

        Gradients are all-reduced before this, so every rank sees the same overflow and decides alike. The
        overflow flag crosses to the host once per update.
        """
        self.step(optimizer)
        # Paddle's optimizer step has read the overflow flag to the host already (it skips the update on
        # it) and left that bool in the cache; a tensor there (other Paddle versions) is read here, once.
        found_inf = getattr(self, self._found_inf_cache, None)
        applied = not (self._enable and bool(self._found_inf if found_inf is None else found_inf))
        setattr(self, self._found_inf_cache, not applied)  # `_update` then needs no read of its own
        self.update()
        return applied


def build_grad_scaler(amp: AmpConfig, init_loss_scaling: float = 2.0 ** 16) -> Optional[GradScaler]:
    return GradScaler(init_loss_scaling=init_loss_scaling) if amp.needs_loss_scaling else None


def decorate_o2(model: paddle.nn.Layer, optimizer: paddle.optimizer.Optimizer, dtype: str):
    """Low-precision parameters with fp32 master weights in the optimizer (norm layers kept fp32)."""
    model, optimizer = paddle.amp.decorate(models=model, optimizers=optimizer, level='O2', dtype=dtype,
                                           master_weight=True,
                                           excluded_layers=[paddle.nn.LayerNorm, paddle.nn.BatchNorm2D])
    # ClipGradByGlobalNorm would otherwise sum squared fp16 gradients in fp16: a norm above ~256 becomes
    # inf, the clip factor 0, and the update vanishes exactly when clipping should act.
    paddle.nn.clip._clip_by_global_norm_using_mp_type(True)
    return model, optimizer


def fp32_state_dict(model: paddle.nn.Layer, optimizer: paddle.optimizer.Optimizer) -> Dict[str, paddle.Tensor]:
    """The model's state dict with each O2 low-precision parameter replaced by its fp32 master weight.

    Under O2 the weights that train are the optimizer's masters; EMA and checkpoints take those, not the
    rounded fp16/bf16 copies the forward pass uses. Without master weights this is the plain state dict.
    """
    masters = getattr(optimizer, '_master_weights', None) or {}
    state = model.state_dict()
    if not masters:
        return state
    by_tensor_name = {p.name: n for n, p in model.named_parameters()}
    for tensor_name, master in masters.items():
        name = by_tensor_name.get(tensor_name)
        if name is not None and name in state:
            state[name] = master
    return state

"""Model EMA: an exponential moving average of the weights during training, used for evaluation
and written as the checkpoints' ``"model"`` (``MODEL_EMA.*``).

After every optimizer step the averaged copy moves towards the trained weights:

    d_n   = DECAY * (1 - exp(-n / WARMUP))        (d_n = DECAY when WARMUP = 0)
    ema_n = d_n * ema_{n-1} + (1 - d_n) * weights_n

where n = 1, 2, ... counts the updates. The warm-up ramp is Ultralytics' ``ModelEMA``
(``decay * (1 - exp(-updates / tau))``, tau = 2000) and equals MMDetection's ``ExpMomentumEMA``
of RTMDet (momentum ``(1 - m) * exp(-(1 + steps) / gamma) + m``, ``m = 1 - DECAY``, gamma = 2000,
with ``steps = n - 1``): early, when the weights change fast, the average follows them closely;
after a few ``WARMUP`` iterations it averages over about ``1 / (1 - DECAY)`` iterations.

Every floating-point entry of the state dict is averaged, BatchNorm's running mean and variance
included (as Ultralytics, timm's ``ModelEmaV3`` by default and RTMDet's ``update_buffers=True``):
the statistics then belong to the same average of the trajectory as the weights they normalize,
whereas the trained model's statistics belong to its latest weights. Integer buffers
(``num_batches_tracked``) are copied. Frozen BatchNorm has constant buffers, so there both rules
agree.

Implemented here rather than with timm's ``ModelEmaV3``: timm is an optional extra of this
package, its warm-up is a power law (``1 - (1 + step / gamma) ** -power``), not the exponential
ramp of the detectors above, and the update is a few lines.
"""
import copy
import logging
import math
import numbers

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.engine import HookBase

from .hooks import unwrap_model

__all__ = ["ModelEMA", "ModelEMAHook", "check_model_ema_config", "ema_decay"]

logger = logging.getLogger(__name__)


def ema_decay(updates: int, decay: float, warmup: float) -> float:
    """The decay of update number ``updates``: ``decay * (1 - exp(-updates / warmup))``, or
    ``decay`` when ``warmup`` is 0 (Ultralytics ``ModelEMA``; RTMDet's ``ExpMomentumEMA``).

    Args:
        updates: >= 1, the update being made (1 for the first one).
        decay: in (0, 1), the decay after the warm-up (``MODEL_EMA.DECAY``).
        warmup: >= 0, the ramp's time constant tau in updates (``MODEL_EMA.WARMUP``); 0 = no ramp.

    Returns:
        float in [0, decay): the weight of the previous average.
    """
    if warmup == 0:
        return decay
    return decay * -math.expm1(-updates / warmup)


def _check(decay, warmup, decay_key: str = "decay", warmup_key: str = "warmup") -> None:
    if isinstance(decay, bool) or not isinstance(decay, numbers.Real) or not 0.0 < decay < 1.0:
        raise ValueError(f"{decay_key} = {decay!r}: must be a number in (0, 1), e.g. 0.9998 (the average spans "
                         "about 1 / (1 - decay) iterations)")
    if isinstance(warmup, bool) or not isinstance(warmup, numbers.Real) or not (0.0 <= warmup < math.inf):
        raise ValueError(f"{warmup_key} = {warmup!r}: must be a finite number >= 0 (iterations; 0 = no warm-up)")


class ModelEMA:
    """The exponential moving average of a model's weights (formula: module docstring).

    ``module`` is a copy of the (unwrapped: DDP's ``.module``) model in eval mode, without
    gradients, on the model's device; it is what evaluation runs and what the checkpoints store
    as ``"model"``. ``updates`` counts the updates made; :meth:`state_dict` holds it (the averaged
    weights themselves are checkpointed by ``AnchorFreeCheckpointer``, as ``"model"``).

    Args:
        model: the trained model (``nn.Module``, possibly wrapped in DDP); copied once.
        decay: in (0, 1) (``MODEL_EMA.DECAY``).
        warmup: >= 0, the warm-up ramp's time constant in updates (``MODEL_EMA.WARMUP``); 0: none.

    Raises:
        ValueError: ``decay`` outside (0, 1) or ``warmup`` < 0 (naming the value).
    """

    @configurable
    def __init__(self, model: nn.Module, *, decay: float, warmup: float = 0.0):
        _check(decay, warmup)
        self.decay = float(decay)
        self.warmup = float(warmup)
        self.module = copy.deepcopy(unwrap_model(model)).eval().requires_grad_(False)
        self.updates = 0

    @classmethod
    def from_config(cls, cfg, model):
        return {"model": model, "decay": cfg.MODEL_EMA.DECAY, "warmup": cfg.MODEL_EMA.WARMUP}

    def _pairs(self, model):
        """(averaged tensor, model tensor) for every state-dict entry, matched by name."""
        source = unwrap_model(model).state_dict()
        target = self.module.state_dict()
        if source.keys() != target.keys():
            differ = sorted(source.keys() ^ target.keys())[:8]
            raise ValueError(f"the model's state dict differs from the EMA's: {differ}")
        return [(target[k], source[k]) for k in target]

    @torch.no_grad()
    def update(self, model) -> float:
        """One update from ``model``'s current weights (after an optimizer step).

        Returns:
            float: the decay used, ``ema_decay(updates, decay, warmup)``.
        """
        self.updates += 1
        d = ema_decay(self.updates, self.decay, self.warmup)
        for averaged, current in self._pairs(model):
            if averaged.is_floating_point():
                averaged.mul_(d).add_(current.detach(), alpha=1.0 - d)
            else:
                averaged.copy_(current)
        return d

    @torch.no_grad()
    def reset(self, model) -> None:
        """Start the average at ``model``'s weights: copy them, ``updates`` = 0."""
        for averaged, current in self._pairs(model):
            averaged.copy_(current)
        self.updates = 0

    def load_weights(self, state_dict: dict) -> None:
        """Set the averaged weights (a checkpoint's ``"model"``); every entry must match (strict).

        Raises:
            RuntimeError: missing or unexpected keys, or a shape mismatch (``load_state_dict``).
        """
        self.module.load_state_dict(state_dict, strict=True)

    def state_dict(self) -> dict:
        """``{"updates", "decay", "warmup"}``: the update count, and the settings for reference."""
        return {"updates": self.updates, "decay": self.decay, "warmup": self.warmup}

    def load_state_dict(self, state: dict) -> None:
        """Restore the update count (the decay and warm-up stay those of the config; a change is logged)."""
        self.updates = int(state["updates"])
        if (state.get("decay"), state.get("warmup")) != (self.decay, self.warmup):
            logger.warning("Model EMA: the checkpoint was trained with decay %s, warm-up %s; going on with %s, %s",
                           state.get("decay"), state.get("warmup"), self.decay, self.warmup)


class ModelEMAHook(HookBase):
    """Update a :class:`ModelEMA` from the trainer's model after every step.

    Placed before the checkpointing and evaluation hooks, so that a checkpoint or an evaluation
    after iteration i holds the average including step i. ``before_train`` starts the average at
    the weights training starts from (after ``MODEL.WEIGHTS`` were loaded) unless it was restored
    from a checkpoint (``updates`` > 0). Writes ``ema_decay`` to the event storage.
    With DDP each process averages its own unwrapped model; the weights are the same on every
    process after each step, and so are the averages.
    """

    def __init__(self, ema: ModelEMA):
        self._ema = ema

    def before_train(self):
        if self._ema.updates == 0:
            self._ema.reset(self.trainer.model)
            logger.info("Model EMA: decay %s, warm-up %s iterations, starting at iteration %d; evaluation and "
                        "the checkpoints' \"model\" use the averaged weights", self._ema.decay, self._ema.warmup,
                        self.trainer.iter)
        else:
            logger.info("Model EMA: resumed after %d updates", self._ema.updates)

    def after_step(self):
        decay = self._ema.update(self.trainer.model)
        self.trainer.storage.put_scalar("ema_decay", decay, smoothing_hint=False)


def check_model_ema_config(cfg) -> None:
    """Reject ``MODEL_EMA`` values that cannot work, naming the key and its value: ``ENABLED`` not
    a bool; ``DECAY`` outside (0, 1); ``WARMUP`` negative or not finite; ``ENABLED`` together with
    ``TEST.PRECISE_BN.ENABLED`` (PreciseBN recomputes the trained model's BatchNorm statistics, not
    those of the averaged model that is evaluated).

    Raises:
        ValueError: naming the first offending key and its value.
    """
    ema = cfg.MODEL_EMA
    if not isinstance(ema.ENABLED, bool):
        raise ValueError(f"MODEL_EMA.ENABLED = {ema.ENABLED!r}: must be True or False")
    _check(ema.DECAY, ema.WARMUP, "MODEL_EMA.DECAY", "MODEL_EMA.WARMUP")
    if ema.ENABLED and cfg.TEST.PRECISE_BN.ENABLED:
        raise ValueError("MODEL_EMA.ENABLED = True with TEST.PRECISE_BN.ENABLED = True: PreciseBN would recompute "
                         "the trained model's BatchNorm statistics, but evaluation uses the averaged model; "
                         "turn one of them off")

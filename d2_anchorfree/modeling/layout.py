"""Memory layout of a model's weights (``MODEL.CHANNELS_LAST``), for any meta-architecture.

torch's ``channels_last`` memory format stores a 4-D tensor [N, C, H, W] with the channels
innermost (NHWC strides); the shape does not change. A convolution whose weight is channels-last
returns a channels-last output, and the norms and activations after it keep that layout, so storing
the weights that way is enough for the whole network to compute in it: oneDNN's faster layout on
CPUs. The values computed are the default layout's within float rounding.
"""
import torch
from torch import nn

__all__ = ["to_channels_last"]


def to_channels_last(model: nn.Module, enabled: bool) -> nn.Module:
    """Store every 4-D parameter and buffer of ``model`` channels-last when ``enabled``, in place.

    Used by :class:`~d2_anchorfree.modeling.AnchorFreeDetector` for its own weights, and by the
    trainer and the predictor for the models that do not go through it (detectron2's
    ``RetinaNet``), so that ``MODEL.CHANNELS_LAST`` means the same for every meta-architecture.
    Idempotent; loading a state dict afterwards keeps the layout (``copy_`` writes into the
    existing tensors).

    Args:
        model: any module; its 4-D tensors ([C_out, C_in, kH, kW] weights) change strides only.
        enabled: ``MODEL.CHANNELS_LAST``; False leaves the model as it is.

    Returns:
        nn.Module: ``model`` itself.

    Raises:
        ValueError: ``enabled`` is not a bool (e.g. 1 or "True" from a hand-edited config), naming
            ``MODEL.CHANNELS_LAST``.
    """
    if not isinstance(enabled, bool):
        raise ValueError(f"MODEL.CHANNELS_LAST must be True or False, got {enabled!r}")
    if enabled:
        model.to(memory_format=torch.channels_last)
    return model

"""Pieces shared by the dense heads: conv towers, initialisation, input checks, ltrb decoding."""
import math
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import ShapeSpec, get_norm

# exp() inputs are clamped to at most this: exp(20) ~ 5e8 pixels is far beyond any image, and the
# clamp keeps the distances finite early in training.
MAX_EXP_INPUT = 20.0


def conv_tower(in_channels: int, num_convs: int, norm: str) -> nn.Sequential:
    """``num_convs`` x (3x3 conv, norm, ReLU), keeping ``in_channels`` channels.

    Args:
        norm: "GN" (32 groups), "BN", "SyncBN" or "" (none); see detectron2's ``get_norm``.

    Raises:
        ValueError: "GN" with a channel count not divisible by 32.
    """
    if norm == "GN" and in_channels % 32 != 0:
        raise ValueError(f"NORM 'GN' uses 32 groups; head channels {in_channels} not divisible by 32")
    layers: List[nn.Module] = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=not norm))
        if norm:
            layers.append(get_norm(norm, in_channels))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def init_conv_normal(module: nn.Module, std: float = 0.01):
    """Normal(0, std) weights and zero bias for every Conv2d in ``module`` (FCOS/RetinaNet init)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=std)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)


def prior_bias(prior_prob: float) -> float:
    """Classification bias so that sigmoid(bias) = prior_prob (RetinaNet, Lin et al. 2017, Sec. 4.1).

    Raises:
        ValueError: prior_prob outside (0, 1).
    """
    if not 0.0 < prior_prob < 1.0:
        raise ValueError(f"PRIOR_PROB must be in (0, 1), got {prior_prob}")
    return -math.log((1 - prior_prob) / prior_prob)


def check_head_inputs(input_shape: List[ShapeSpec], num_classes: int, head: str = "dense") -> int:
    """Validate the constructor inputs every dense head shares.

    Args:
        input_shape: per level ShapeSpec (the head's convs are shared across levels).
        num_classes: K.
        head: name used in the error message (e.g. "FCOS").

    Returns:
        int: the channel count C of every level.

    Raises:
        ValueError: no level, levels with different channel counts, or K < 1.
    """
    channels = {s.channels for s in input_shape}
    if len(channels) != 1:
        raise ValueError(f"{head} head needs equal channels on all levels (at least one), got {channels}")
    if num_classes < 1:
        raise ValueError(f"NUM_CLASSES must be >= 1, got {num_classes}")
    return channels.pop()


def check_num_levels(features: Sequence[torch.Tensor], strides: List[int]) -> None:
    """Raise ValueError unless there is one feature map per stride (a head's forward would
    otherwise silently drop levels when zipping them with its per-level Scales)."""
    if len(features) != len(strides):
        raise ValueError(f"got {len(features)} feature levels for strides {strides}")


def decode_ltrb(reg: torch.Tensor, stride: int, norm_reg_targets: bool) -> torch.Tensor:
    """Distances (l, t, r, b) in pixels from the scaled regression output of one level.

    Args:
        reg: [N, 4, H, W] = Scale_i(conv output), any range.
        stride: the level's stride in pixels.
        norm_reg_targets: True: relu(reg) * stride (distances learnt in stride units, the FCOS
            authors' "imprv" code); False: exp(min(reg, 20)) (FCOS paper, Sec. 3.1: exp(s_i x);
            the clamp avoids inf early in training).

    Returns:
        Tensor [N, 4, H, W] in pixels, >= 0.
    """
    if norm_reg_targets:
        return F.relu(reg) * stride
    return torch.exp(reg.clamp(max=MAX_EXP_INPUT))

"""Conv towers shared by the dense heads, and their initialisation."""
import math
from typing import List

from torch import nn

from detectron2.layers import get_norm


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

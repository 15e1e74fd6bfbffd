"""Pieces shared by the dense heads: conv towers, initialisation, input checks, ltrb decoding."""
import math
from typing import List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import ShapeSpec

from ...layers.deform_conv import ModulatedDeformConvWithOffsets
from ...layers.level_norm import PerLevelNorm, level_norm

# exp() inputs are clamped to at most this: exp(20) ~ 5e8 pixels is far beyond any image, and the
# clamp keeps the distances finite early in training.
MAX_EXP_INPUT = 20.0


TOWER_CONV_BIAS = ("auto", "always")


class ConvTower(nn.Sequential):
    """``num_convs`` x (3x3 conv, norm, ReLU) shared by the FPN levels; a batch-statistics norm is
    per level (:class:`PerLevelNorm`), so ``forward`` takes the level. Same module indices (and
    state-dict keys) as the ``nn.Sequential`` of (conv, norm, ReLU) it replaces."""

    def forward(self, x: torch.Tensor, level: int = 0) -> torch.Tensor:
        """x: [N, C, H, W] of level ``level`` (0 = the finest; ignored without per-level norms)
        -> [N, C, H, W]."""
        for layer in self:
            x = layer(x, level) if isinstance(layer, PerLevelNorm) else layer(x)
        return x


def conv_tower(in_channels: int, num_convs: int, norm: str, conv_bias: str = "auto",
               dcn_on_last: bool = False, num_levels: int = 1) -> ConvTower:
    """``num_convs`` x (3x3 conv, norm, ReLU), keeping ``in_channels`` channels.

    Args:
        norm: "GN" (32 groups), "BN", "SyncBN" or "" (none); see detectron2's ``get_norm``.
            A batch-statistics norm ("BN", "SyncBN", ...) gets one layer per level when
            ``num_levels`` > 1 (:class:`PerLevelNorm`); "GN" is shared.
        conv_bias: "auto" (a conv bias only without a norm) or "always"
            (``MODEL.DENSE.TOWER_CONV_BIAS``; the FCOS authors' towers have one before GN).
        dcn_on_last: the last conv is a DCNv2 predicting its own offsets
            (:class:`~d2_anchorfree.layers.deform_conv.ModulatedDeformConvWithOffsets`;
            ``MODEL.DENSE.DCN_ON_LAST_CONV``, MMDetection's ``dcn_on_last_conv``).
        num_levels: how many FPN levels share the tower (the head's strides).

    Raises:
        ValueError: "GN" with a channel count not divisible by 32, or an unknown ``conv_bias``.
    """
    if norm == "GN" and in_channels % 32 != 0:
        raise ValueError(f"NORM 'GN' uses 32 groups; head channels {in_channels} not divisible by 32")
    if conv_bias not in TOWER_CONV_BIAS:
        raise ValueError(f"MODEL.DENSE.TOWER_CONV_BIAS must be one of {TOWER_CONV_BIAS}, got {conv_bias!r}")
    layers: List[nn.Module] = []
    bias = conv_bias == "always" or not norm
    for i in range(num_convs):
        if dcn_on_last and i == num_convs - 1:
            layers.append(ModulatedDeformConvWithOffsets(in_channels, in_channels, 3, padding=1, bias=bias))
        else:
            layers.append(nn.Conv2d(in_channels, in_channels, 3, padding=1, bias=bias))
        if norm:
            layers.append(level_norm(norm, in_channels, num_levels))
        layers.append(nn.ReLU())
    return ConvTower(*layers)


def init_conv_normal(module: nn.Module, std: float = 0.01):
    """Normal(0, std) weights and zero bias for every Conv2d and tower DCN in ``module``
    (FCOS/RetinaNet init); a DCN's own offset conv stays at zero (it starts as a regular conv)."""
    offset_convs = {id(m.conv_offset) for m in module.modules() if isinstance(m, ModulatedDeformConvWithOffsets)}
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, ModulatedDeformConvWithOffsets)) and id(m) not in offset_convs:
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


# MMDetection's DeltaXYWHBBoxCoder as configured for ATSS: target_stds, and the largest |log| of
# a width/height ratio (wh_ratio_clip = 16 / 1000), mmdet/models/task_modules/coders/
# delta_xywh_bbox_coder.py.
DELTA_STDS = (0.1, 0.1, 0.2, 0.2)
DELTA_MAX_LOG_RATIO = abs(math.log(16 / 1000))


def anchor_deltas_to_ltrb(deltas: torch.Tensor, anchor_side: float) -> torch.Tensor:
    """Distances (l, t, r, b) from a point to the box that (dx, dy, dw, dh) make of the square
    anchor of side ``anchor_side`` centred on that point (the anchor-based ATSS of MMDetection:
    one anchor per location, ``octave_base_scale`` 8, ``center_offset`` 0).

    With (d'x, d'y, d'w, d'h) = deltas * (0.1, 0.1, 0.2, 0.2) and d'w, d'h clamped to
    +-|log(16 / 1000)|, the box has centre point + a (d'x, d'y) and size a (exp d'w, exp d'h)
    (a = ``anchor_side``; the box parametrization of R-CNN, Girshick et al., CVPR 2014,
    Appendix C; MMDetection ``delta2bbox``). So l = a exp(d'w) / 2 - a d'x, r = a exp(d'w) / 2 + a d'x,
    t and b likewise; a side may be negative (a box that does not contain its point).

    Args:
        deltas: [N, 4, H, W] (dx, dy, dw, dh) of one level, after its Scale.
        anchor_side: a > 0 in pixels (``MODEL.ATSS.ANCHOR_SCALE`` x stride).

    Returns:
        Tensor [N, 4, H, W] float32 distances in pixels.
    """
    stds = deltas.new_tensor(DELTA_STDS, dtype=torch.float32).view(1, 4, 1, 1)
    d = deltas.float() * stds
    dx, dy = d[:, 0] * anchor_side, d[:, 1] * anchor_side
    half_w = anchor_side * torch.exp(d[:, 2].clamp(-DELTA_MAX_LOG_RATIO, DELTA_MAX_LOG_RATIO)) / 2
    half_h = anchor_side * torch.exp(d[:, 3].clamp(-DELTA_MAX_LOG_RATIO, DELTA_MAX_LOG_RATIO)) / 2
    return torch.stack([half_w - dx, half_h - dy, half_w + dx, half_h + dy], dim=1)

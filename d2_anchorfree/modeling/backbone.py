"""ResNet-FPN backbone with extra top levels (P6, P7) taken from P5 or C5."""
from typing import List

import torch.nn.functional as F
from torch import nn

import fvcore.nn.weight_init as weight_init
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN
from detectron2.modeling.backbone.resnet import build_resnet_backbone


class LastLevelsFromFeature(nn.Module):
    """Extra FPN levels above P5: P6 = conv3x3/2(x), P7 = conv3x3/2(relu(P6)), ...

    ``x`` is P5 (FCOS paper, Sec. 3.2) or C5 (RetinaNet). Shapes: [N, C_in, H, W] ->
    ``num_levels`` maps [N, C_out, ceil(H / 2^k), ceil(W / 2^k)], k = 1..num_levels.
    """

    def __init__(self, in_channels: int, out_channels: int, num_levels: int, in_feature: str):
        super().__init__()
        self.num_levels = num_levels
        self.in_feature = in_feature
        self.convs = nn.ModuleList()
        for i in range(num_levels):
            conv = nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, 2, 1)
            weight_init.c2_xavier_fill(conv)
            self.convs.append(conv)

    def forward(self, x) -> List:
        outs = []
        for i, conv in enumerate(self.convs):
            x = conv(x if i == 0 else F.relu(x))
            outs.append(x)
        return outs


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """ResNet + FPN (P3-P5 from ``MODEL.FPN.IN_FEATURES``) + ``MODEL.FPN.TOP_LEVELS`` extra
    levels from ``MODEL.FPN.TOP_LEVELS_IN_FEATURE`` ("p5" or "res5").

    Raises:
        ValueError: unknown ``TOP_LEVELS_IN_FEATURE`` or a negative ``TOP_LEVELS``.
    """
    bottom_up = build_resnet_backbone(cfg, input_shape)
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    source = cfg.MODEL.FPN.TOP_LEVELS_IN_FEATURE
    num_top = cfg.MODEL.FPN.TOP_LEVELS
    if num_top < 0:
        raise ValueError(f"MODEL.FPN.TOP_LEVELS must be >= 0, got {num_top}")
    top_block = None
    if num_top > 0:
        if source == "p5":
            in_channels = out_channels
        elif source == "res5":
            in_channels = bottom_up.output_shape()["res5"].channels
        else:
            raise ValueError(f"MODEL.FPN.TOP_LEVELS_IN_FEATURE must be 'p5' or 'res5', got {source!r}")
        top_block = LastLevelsFromFeature(in_channels, out_channels, num_top, source)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )

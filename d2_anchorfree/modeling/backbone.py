"""ResNet-FPN backbone with extra top levels (P6, P7) taken from P5 or C5."""
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

import fvcore.nn.weight_init as weight_init
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.resnet import build_resnet_backbone


class LastLevelsFromFeature(nn.Module):
    """Extra FPN levels above P5: P6 = conv3x3/2(x), P7 = conv3x3/2(relu(P6)), ...

    ``x`` is P5 (FCOS paper, Sec. 3.2) or C5 (RetinaNet). Shapes: [N, C_in, H, W] ->
    ``num_levels`` maps [N, C_out, ceil(H / 2^k), ceil(W / 2^k)], k = 1..num_levels.
    Without ``relu_between``, P7 = conv3x3/2(P6) (MMDetection's FPN with
    ``relu_before_extra_convs=False``, as in its ATSS, GFL, VFNet and TOOD configs).
    """

    def __init__(self, in_channels: int, out_channels: int, num_levels: int, in_feature: str,
                 relu_between: bool = True):
        """
        Args:
            in_channels: channels of ``x``. out_channels: of every extra level.
            num_levels: how many extra levels (>= 1). in_feature: "p5" or "res5" (for FPN).
            relu_between: ReLU before every extra conv but the first (``MODEL.FPN.TOP_LEVELS_RELU``).
        """
        super().__init__()
        self.num_levels = num_levels
        self.in_feature = in_feature
        self.relu_between = relu_between
        self.convs = nn.ModuleList()
        for i in range(num_levels):
            conv = nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, 2, 1)
            weight_init.c2_xavier_fill(conv)
            self.convs.append(conv)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """
        Args:
            x: [N, C_in, H, W], the feature named ``in_feature`` (FPN passes it as top-block input).

        Returns:
            ``num_levels`` maps [N, C_out, ceil(H / 2^k), ceil(W / 2^k)], k = 1..num_levels
            (e.g. P6, P7): the first conv takes ``x``, each later one (relu of) the previous output.
        """
        outs = []
        for i, conv in enumerate(self.convs):
            x = conv(F.relu(x) if i > 0 and self.relu_between else x)
            outs.append(x)
        return outs


def fpn_with_top_levels(cfg, bottom_up: Backbone) -> FPN:
    """detectron2's ``FPN`` on ``bottom_up`` (levels of ``MODEL.FPN.IN_FEATURES``, e.g. P3-P5)
    plus ``MODEL.FPN.TOP_LEVELS`` extra levels (e.g. P6, P7) from ``MODEL.FPN.TOP_LEVELS_IN_FEATURE``:
    "p5" (FCOS paper, Sec. 3.2) or "res5" (RetinaNet), with a ReLU between them unless
    ``MODEL.FPN.TOP_LEVELS_RELU`` is False. Other keys: ``MODEL.FPN.OUT_CHANNELS``, ``NORM``,
    ``FUSE_TYPE``.

    Raises:
        ValueError: unknown ``TOP_LEVELS_IN_FEATURE`` or a negative ``TOP_LEVELS``.
    """
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
        top_block = LastLevelsFromFeature(in_channels, out_channels, num_top, source,
                                          relu_between=cfg.MODEL.FPN.TOP_LEVELS_RELU)
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """ResNet (detectron2's ``build_resnet_backbone``) + :func:`fpn_with_top_levels`.

    Raises:
        ValueError: see :func:`fpn_with_top_levels`.
    """
    return fpn_with_top_levels(cfg, build_resnet_backbone(cfg, input_shape))

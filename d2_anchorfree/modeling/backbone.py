"""ResNet-FPN backbone with extra top levels (P6, P7) taken from P5 or C5, and PANet's optional
bottom-up path."""
import math
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

import fvcore.nn.weight_init as weight_init
from detectron2.layers import Conv2d, ShapeSpec, get_norm
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


class PathAggregationFPN(FPN):
    """detectron2's ``FPN`` (lateral 1x1 convs, top-down sum, 3x3 output convs) followed by PANet's
    bottom-up path augmentation, then the extra levels from the last aggregated level:

        N_first = P_first;  N_(i+1) = conv3x3(P_(i+1) + conv3x3/2(N_i));  P6, P7 = top_block(N5)

    Source: Liu et al., "Path Aggregation Network for Instance Segmentation", CVPR 2018, Sec. 3.1
    and Fig. 2 (there with a ReLU after each conv); MMDetection's ``PAFPN`` (``mmdet/models/necks/
    pafpn.py``: plain ``ConvModule`` s, norm as the FPN's, no activation), which this follows. The
    path gives the coarse levels, which detect the large objects, a short route from the fine
    ones; YOLO's PAN neck has the same role.

    Output names, strides and channels are those of the plain FPN with the same ``top_block``
    (e.g. p3-p7 at strides 8-128, ``out_channels`` each), so every head works unchanged. Shapes:
    with inputs padded to ``size_divisibility`` (the bottom-up's last stride, as detectron2's FPN),
    N_i has P_i's shape.
    """

    def __init__(self, *, bottom_up: Backbone, in_features: List[str], out_channels: int, norm: str = "",
                 top_block: Optional[nn.Module] = None, fuse_type: str = "sum"):
        """
        Args:
            bottom_up, in_features, out_channels, norm, fuse_type: as detectron2's ``FPN``; ``norm``
                also normalizes the bottom-up path's convs ("" = none, with bias).
            top_block: extra levels taken from the last aggregated level (``in_feature`` "p5"), e.g.
                :class:`LastLevelsFromFeature`, or None.

        Raises:
            ValueError: a ``top_block`` that reads another feature than the FPN's last level.
        """
        super().__init__(bottom_up=bottom_up, in_features=in_features, out_channels=out_channels, norm=norm,
                         top_block=None, fuse_type=fuse_type)
        self.path_levels = list(self._out_features)  # e.g. ["p3", "p4", "p5"]
        if top_block is not None and top_block.in_feature != self.path_levels[-1]:
            raise ValueError(f"MODEL.FPN.BOTTOM_UP_PATH takes the extra levels from the aggregated "
                             f"{self.path_levels[-1]}; MODEL.FPN.TOP_LEVELS_IN_FEATURE must be "
                             f"{self.path_levels[-1]!r}, got {top_block.in_feature!r}")
        self.path_downsample = nn.ModuleList()
        self.path_output = nn.ModuleList()
        for _ in self.path_levels[1:]:
            for convs, stride in ((self.path_downsample, 2), (self.path_output, 1)):
                conv = Conv2d(out_channels, out_channels, 3, stride=stride, padding=1, bias=not norm,
                              norm=get_norm(norm, out_channels))
                weight_init.c2_xavier_fill(conv)
                convs.append(conv)
        self.path_top_block = top_block
        # The FPN's own lists stay P3-P5 (its forward checks them); the outputs add the extra levels.
        self._path_strides = dict(self._out_feature_strides)
        if top_block is not None:
            last = int(math.log2(self._path_strides[self.path_levels[-1]]))
            for level in range(last + 1, last + 1 + top_block.num_levels):
                self._path_strides[f"p{level}"] = 2 ** level
        self._path_channels = out_channels

    def output_shape(self) -> Dict[str, ShapeSpec]:
        """{name: ShapeSpec(channels=out_channels, stride)} of every output level (e.g. p3-p7)."""
        return {name: ShapeSpec(channels=self._path_channels, stride=stride)
                for name, stride in self._path_strides.items()}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """
        Args:
            x: [N, C, H, W] images, H and W multiples of ``size_divisibility``.

        Returns:
            {name: [N, out_channels, H / stride, W / stride]} for every output level (p3-p7).
        """
        top_down = super().forward(x)  # P3-P5 (no top block on the plain FPN)
        aggregated = [top_down[self.path_levels[0]]]
        for name, down, out in zip(self.path_levels[1:], self.path_downsample, self.path_output):
            aggregated.append(out(top_down[name] + down(aggregated[-1])))
        if self.path_top_block is not None:
            aggregated.extend(self.path_top_block(aggregated[-1]))
        return dict(zip(self._path_strides, aggregated))


def fpn_with_top_levels(cfg, bottom_up: Backbone) -> FPN:
    """detectron2's ``FPN`` on ``bottom_up`` (levels of ``MODEL.FPN.IN_FEATURES``, e.g. P3-P5)
    plus ``MODEL.FPN.TOP_LEVELS`` extra levels (e.g. P6, P7) from ``MODEL.FPN.TOP_LEVELS_IN_FEATURE``:
    "p5" (FCOS paper, Sec. 3.2) or "res5" (RetinaNet), with a ReLU between them unless
    ``MODEL.FPN.TOP_LEVELS_RELU`` is False. Other keys: ``MODEL.FPN.OUT_CHANNELS``, ``NORM``,
    ``FUSE_TYPE``; with ``MODEL.FPN.BOTTOM_UP_PATH`` the :class:`PathAggregationFPN`.

    Raises:
        ValueError: unknown ``TOP_LEVELS_IN_FEATURE`` or a negative ``TOP_LEVELS``; the bottom-up
            path with the extra levels from "res5".
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
    return (PathAggregationFPN if cfg.MODEL.FPN.BOTTOM_UP_PATH else FPN)(
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

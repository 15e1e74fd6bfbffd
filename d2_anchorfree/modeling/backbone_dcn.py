"""ResNet-FPN backbone with deformable 3x3 convolutions in chosen ResNet stages (the "DCN" rows of
the VarifocalNet paper's comparison with the state of the art, Zhang et al., CVPR 2021: DCN in
stages res3-res5), without
detectron2's compiled ops.

The block mirrors detectron2's ``DeformBottleneckBlock`` (same module names ``conv1``,
``conv2_offset``, ``conv2``, ``conv3``, ``shortcut``, so detectron2 DCN checkpoints load) but runs
:class:`~d2_anchorfree.layers.deform_conv.DeformConv` / ``ModulatedDeformConv`` on
``torchvision.ops.deform_conv2d``.
"""
import torch
import torch.nn.functional as F
from torch import nn

import fvcore.nn.weight_init as weight_init
from detectron2.layers import CNNBlockBase, Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, BottleneckBlock, ResNet

from ..layers.deform_conv import DeformConv, ModulatedDeformConv
from .backbone import fpn_with_top_levels

NUM_BLOCKS_PER_STAGE = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3],
                        152: [3, 8, 36, 3]}


class DeformBottleneckBlock(CNNBlockBase):
    """ResNet bottleneck (1x1, 3x3, 1x1 + shortcut) whose 3x3 conv is deformable.

    DCNv1 (Dai et al., ICCV 2017) or, with ``deform_modulated``, DCNv2 (Zhu et al., CVPR 2019).
    The offsets (and masks) come from a plain 3x3 conv ``conv2_offset`` on the block's 1x1 output,
    zero-initialised, so a fresh block starts as the regular bottleneck (DCNv2: with every sample
    weighted by sigmoid(0) = 0.5). ``conv2_offset`` output channels: 18 * dg (offsets, layout of
    :mod:`d2_anchorfree.layers.deform_conv`) and, modulated, 9 * dg more (mask logits).

    Shapes: [N, in_channels, H, W] -> [N, out_channels, ceil(H / stride), ceil(W / stride)].
    """

    def __init__(self, in_channels: int, out_channels: int, *, bottleneck_channels: int, stride: int = 1,
                 num_groups: int = 1, norm="BN", stride_in_1x1: bool = False, dilation: int = 1,
                 deform_modulated: bool = False, deform_num_groups: int = 1):
        """
        Args:
            in_channels, out_channels, bottleneck_channels, stride, num_groups, norm,
            stride_in_1x1, dilation: as detectron2's ``BottleneckBlock``.
            deform_modulated: DCNv2 (True) or DCNv1 (False).
            deform_num_groups: deformable groups of the 3x3 conv (``MODEL.RESNETS.DEFORM_NUM_GROUPS``).
        """
        super().__init__(in_channels, out_channels, stride)
        self.deform_modulated = deform_modulated
        self.shortcut = None
        if in_channels != out_channels:
            self.shortcut = Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False,
                                   norm=get_norm(norm, out_channels))
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(in_channels, bottleneck_channels, kernel_size=1, stride=stride_1x1,
                            bias=False, norm=get_norm(norm, bottleneck_channels))
        self.num_offset_channels = 18 * deform_num_groups
        offset_channels = (27 if deform_modulated else 18) * deform_num_groups
        self.conv2_offset = Conv2d(bottleneck_channels, offset_channels, kernel_size=3, stride=stride_3x3,
                                   padding=dilation, dilation=dilation)
        conv_cls = ModulatedDeformConv if deform_modulated else DeformConv
        self.conv2 = conv_cls(bottleneck_channels, bottleneck_channels, kernel_size=3, stride=stride_3x3,
                              padding=dilation, dilation=dilation, groups=num_groups,
                              deformable_groups=deform_num_groups, bias=False,
                              norm=get_norm(norm, bottleneck_channels))
        self.conv3 = Conv2d(bottleneck_channels, out_channels, kernel_size=1, bias=False,
                            norm=get_norm(norm, out_channels))
        for layer in (self.conv1, self.conv2, self.conv3, self.shortcut):
            if layer is not None:
                weight_init.c2_msra_fill(layer)
        nn.init.constant_(self.conv2_offset.weight, 0)
        nn.init.constant_(self.conv2_offset.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        offset = self.conv2_offset(out)
        if self.deform_modulated:
            offset, mask = offset[:, :self.num_offset_channels], offset[:, self.num_offset_channels:]
            out = self.conv2(out, offset, mask.sigmoid())
        else:
            out = self.conv2(out, offset)
        out = self.conv3(F.relu_(out))
        out = out + (x if self.shortcut is None else self.shortcut(x))
        return F.relu_(out)


def build_resnet_dcn(cfg, input_shape: ShapeSpec) -> ResNet:
    """detectron2's ``build_resnet_backbone`` with :class:`DeformBottleneckBlock` in the stages
    flagged by ``MODEL.RESNETS.DEFORM_ON_PER_STAGE`` (res2..res5), using
    ``DEFORM_MODULATED`` and ``DEFORM_NUM_GROUPS``. All other keys as in detectron2.

    Raises:
        ValueError: unknown depth; deformable stages, RES5_DILATION != 1 or NUM_GROUPS != 1 on
            R-18/R-34 (basic blocks); RES2_OUT_CHANNELS != 64 on R-18/R-34; RES5_DILATION not
            1 or 2; DEFORM_ON_PER_STAGE without 4 entries.
    """
    r = cfg.MODEL.RESNETS
    depth = r.DEPTH
    if depth not in NUM_BLOCKS_PER_STAGE:
        raise ValueError(f"MODEL.RESNETS.DEPTH must be one of {sorted(NUM_BLOCKS_PER_STAGE)}, got {depth}")
    deform_on = list(r.DEFORM_ON_PER_STAGE)
    if len(deform_on) != 4:
        raise ValueError(f"MODEL.RESNETS.DEFORM_ON_PER_STAGE needs 4 entries (res2..res5), got {deform_on}")
    if r.RES5_DILATION not in (1, 2):
        raise ValueError(f"MODEL.RESNETS.RES5_DILATION must be 1 or 2, got {r.RES5_DILATION}")
    if depth in (18, 34):
        if any(deform_on):
            raise ValueError(f"MODEL.RESNETS.DEFORM_ON_PER_STAGE {deform_on} needs bottleneck blocks "
                             f"(DEPTH >= 50), got DEPTH {depth}")
        if r.RES2_OUT_CHANNELS != 64 or r.RES5_DILATION != 1 or r.NUM_GROUPS != 1:
            raise ValueError("R-18/R-34 need RES2_OUT_CHANNELS 64, RES5_DILATION 1 and NUM_GROUPS 1, got "
                             f"{r.RES2_OUT_CHANNELS}, {r.RES5_DILATION}, {r.NUM_GROUPS}")
    stem = BasicStem(in_channels=input_shape.channels, out_channels=r.STEM_OUT_CHANNELS, norm=r.NORM)
    in_channels, out_channels = r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS
    bottleneck_channels = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    stages = []
    for idx, num_blocks in enumerate(NUM_BLOCKS_PER_STAGE[depth]):
        dilation = r.RES5_DILATION if idx == 3 else 1
        first_stride = 1 if idx == 0 or (idx == 3 and dilation == 2) else 2
        kwargs = {"num_blocks": num_blocks, "stride_per_block": [first_stride] + [1] * (num_blocks - 1),
                  "in_channels": in_channels, "out_channels": out_channels, "norm": r.NORM}
        if depth in (18, 34):
            kwargs["block_class"] = BasicBlock
        else:
            kwargs.update(bottleneck_channels=bottleneck_channels, stride_in_1x1=r.STRIDE_IN_1X1,
                          dilation=dilation, num_groups=r.NUM_GROUPS)
            if deform_on[idx]:
                kwargs.update(block_class=DeformBottleneckBlock, deform_modulated=r.DEFORM_MODULATED,
                              deform_num_groups=r.DEFORM_NUM_GROUPS)
            else:
                kwargs["block_class"] = BottleneckBlock
        stages.append(ResNet.make_stage(**kwargs))
        in_channels = out_channels
        out_channels, bottleneck_channels = out_channels * 2, bottleneck_channels * 2
    return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_fcos_resnet_fpn_dcn_backbone(cfg, input_shape: ShapeSpec):
    """:func:`build_resnet_dcn` + :func:`~d2_anchorfree.modeling.backbone.fpn_with_top_levels`
    (FPN + ``MODEL.FPN.TOP_LEVELS`` extra levels), as
    :func:`d2_anchorfree.modeling.backbone.build_fcos_resnet_fpn_backbone`.

    Raises:
        ValueError: see :func:`build_resnet_dcn` and :func:`fpn_with_top_levels`.
    """
    return fpn_with_top_levels(cfg, build_resnet_dcn(cfg, input_shape))

"""The FCOS head: shared cls/box towers, per-level Scale, centerness branch."""
from typing import List, Tuple

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec

from ...layers import Scale
from .towers import check_head_inputs, check_num_levels, conv_tower, decode_ltrb, init_conv_normal, prior_bias


class FCOSHead(nn.Module):
    """FCOS head (Tian et al., ICCV 2019, Fig. 2), shared across FPN levels.

    Outputs per level i (stride s_i):
      * logits [N, K, H_i, W_i]: class logits (sigmoid per class);
      * ltrb [N, 4, H_i, W_i]: distances (l, t, r, b) in **pixels**, >= 0. Paper:
        exp(scale_i * x); with ``norm_reg_targets``: relu(scale_i * x) * s_i (the distances
        are learnt in stride units; IoU losses are scale-invariant, so pixels come out);
      * centerness [N, 1, H_i, W_i]: logits of the centerness branch.
    """

    @configurable
    def __init__(self, *, input_shape: List[ShapeSpec], num_classes: int, num_convs: int = 4,
                 norm: str = "GN", prior_prob: float = 0.01, norm_reg_targets: bool = False,
                 centerness_on_reg: bool = False):
        """
        Args:
            input_shape: per level ShapeSpec; all levels must have the same channel count.
            num_classes: K >= 1. num_convs: tower depth >= 0. norm: "GN", "BN" or "".
            prior_prob: initial foreground probability of the classifier.
            norm_reg_targets: see class docstring. centerness_on_reg: centerness branch on the
                box tower (True) or the cls tower (False, paper).

        Raises:
            ValueError: levels with different channels, or bad sizes.
        """
        super().__init__()
        in_channels = check_head_inputs(input_shape, num_classes, "FCOS")
        self.num_classes = num_classes
        self.strides = [s.stride for s in input_shape]
        self.norm_reg_targets = norm_reg_targets
        self.centerness_on_reg = centerness_on_reg
        self.cls_tower = conv_tower(in_channels, num_convs, norm)
        self.box_tower = conv_tower(in_channels, num_convs, norm)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.box_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(in_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in self.strides])
        init_conv_normal(self)
        nn.init.constant_(self.cls_logits.bias, prior_bias(prior_prob))

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        c = cfg.MODEL.FCOS
        return {
            "input_shape": input_shape, "num_classes": c.NUM_CLASSES, "num_convs": c.NUM_CONVS,
            "norm": c.NORM, "prior_prob": c.PRIOR_PROB, "norm_reg_targets": c.NORM_REG_TARGETS,
            "centerness_on_reg": c.CENTERNESS_ON_REG,
        }

    def forward(self, features: List[torch.Tensor]) -> Tuple[List[torch.Tensor], ...]:
        """
        Args:
            features: per level [N, C, H_i, W_i], one per stride of ``input_shape``.

        Returns:
            (logits, ltrb, centerness): three lists over levels, shapes as in the class docstring.

        Raises:
            ValueError: if the number of levels differs from the number of strides.
        """
        check_num_levels(features, self.strides)
        logits, ltrb, centerness = [], [], []
        for feature, scale, stride in zip(features, self.scales, self.strides):
            cls_feat = self.cls_tower(feature)
            box_feat = self.box_tower(feature)
            logits.append(self.cls_logits(cls_feat))
            ltrb.append(decode_ltrb(scale(self.box_pred(box_feat)), stride, self.norm_reg_targets))
            centerness.append(self.centerness(box_feat if self.centerness_on_reg else cls_feat))
        return logits, ltrb, centerness

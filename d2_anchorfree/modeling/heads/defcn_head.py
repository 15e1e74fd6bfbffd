"""The DeFCN head: FCOS-style towers, a 3D-Max-Filtering "filter" branch, an auxiliary classifier."""
from typing import List, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec

from ...layers import Scale
from ...layers.max_filter import MaxFiltering3D
from .towers import check_head_inputs, check_num_levels, conv_tower, decode_ltrb, init_conv_normal, prior_bias


class DeFCNOutputs(NamedTuple):
    """Per-level outputs of :class:`DeFCNHead` (lists over levels, level i of stride s_i).

    logits: [N, K, H_i, W_i] class logits. ltrb: [N, 4, H_i, W_i] distances in pixels (>= 0).
    filters: [N, 1, H_i, W_i] filter logits (3DMF branch), or [] when 3DMF is off.
    aux_logits: [N, K, H_i, W_i] auxiliary class logits, or [] when the aux loss is off or in
    eval mode.
    """

    logits: List[torch.Tensor]
    ltrb: List[torch.Tensor]
    filters: List[torch.Tensor]
    aux_logits: List[torch.Tensor]


def joint_logits(cls_logits: torch.Tensor, filter_logits: torch.Tensor) -> torch.Tensor:
    """The logit of DeFCN's final score sigmoid(cls) * sigmoid(filter) (Sec. 3.3, Fig. 3).

    ``sigmoid(joint_logits(a, b)) == sigmoid(a) * sigmoid(b)``, computed in float32 from
    log-sigmoids: log p = logsigmoid(a) + logsigmoid(b), logit = log p - log(1 - p), so that a
    logit-based focal loss (``losses.focal_loss_with_labels``) trains the product directly.

    Args:
        cls_logits: [..., K]. filter_logits: broadcastable to it (e.g. [..., 1]).

    Returns:
        Tensor [..., K] float32 logits; finite (1 - p is clamped to the smallest normal float).
    """
    log_p = F.logsigmoid(cls_logits.float()) + F.logsigmoid(filter_logits.float())
    one_minus_p = (-torch.expm1(log_p)).clamp(min=torch.finfo(torch.float32).tiny)
    return log_p - torch.log(one_minus_p)


class DeFCNHead(nn.Module):
    """DeFCN head (Wang et al., CVPR 2021, Fig. 3), shared across FPN levels.

    * cls tower -> 3x3 conv -> K class logits; with the aux loss also a separate 3x3 conv ->
      K auxiliary logits (training only, supervised one-to-many; Sec. 3.4);
    * box tower -> 3x3 conv -> per-level Scale -> ltrb in pixels: exp(s_i x) or, with
      ``norm_reg_targets``, relu(s_i x) * stride_i (as :class:`FCOSHead`);
    * with 3DMF: box-tower features of all levels -> :class:`MaxFiltering3D` -> 3x3 conv -> one
      filter logit per location (the authors' code puts 3DMF on the box tower).
    Final score: sigmoid(cls) * sigmoid(filter), or sigmoid(cls) without 3DMF.
    """

    @configurable
    def __init__(self, *, input_shape: List[ShapeSpec], num_classes: int, num_convs: int = 4,
                 norm: str = "GN", prior_prob: float = 0.01, norm_reg_targets: bool = True,
                 use_3dmf: bool = True, max_filter_kernel: int = 3, max_filter_tau: int = 2,
                 use_aux: bool = True):
        """
        Args:
            input_shape: per level ShapeSpec, equal channels on every level.
            num_classes: K >= 1. num_convs: tower depth >= 0. norm: "GN", "BN" or "" (towers
                and 3DMF). prior_prob: initial foreground probability of both classifiers.
            norm_reg_targets: see class docstring.
            use_3dmf, max_filter_kernel, max_filter_tau: the filter branch (see
                :func:`~d2_anchorfree.layers.max_filter.max_filter_3d`).
            use_aux: build the auxiliary classifier.

        Raises:
            ValueError: unequal channels, K < 1, or bad 3DMF window sizes.
        """
        super().__init__()
        in_channels = check_head_inputs(input_shape, num_classes, "DeFCN")
        self.num_classes = num_classes
        self.strides = [s.stride for s in input_shape]
        self.norm_reg_targets = norm_reg_targets
        self.cls_tower = conv_tower(in_channels, num_convs, norm)
        self.box_tower = conv_tower(in_channels, num_convs, norm)
        self.cls_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1)
        self.box_pred = nn.Conv2d(in_channels, 4, 3, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in self.strides])
        self.max_filter = None
        self.filter = None
        if use_3dmf:
            self.max_filter = MaxFiltering3D(in_channels, max_filter_kernel, max_filter_tau, norm)
            self.filter = nn.Conv2d(in_channels, 1, 3, padding=1)
        self.aux_logits = nn.Conv2d(in_channels, num_classes, 3, padding=1) if use_aux else None
        init_conv_normal(self)
        nn.init.constant_(self.cls_logits.bias, prior_bias(prior_prob))
        if self.aux_logits is not None:
            nn.init.constant_(self.aux_logits.bias, prior_bias(prior_prob))

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        c, d = cfg.MODEL.FCOS, cfg.MODEL.DEFCN
        return {
            "input_shape": input_shape, "num_classes": c.NUM_CLASSES, "num_convs": c.NUM_CONVS,
            "norm": c.NORM, "prior_prob": c.PRIOR_PROB, "norm_reg_targets": c.NORM_REG_TARGETS,
            "use_3dmf": d.USE_3DMF, "max_filter_kernel": d.MAX_FILTER_KERNEL,
            "max_filter_tau": d.MAX_FILTER_TAU, "use_aux": d.USE_AUX_LOSS,
        }

    @property
    def use_3dmf(self) -> bool:
        return self.filter is not None

    def forward(self, features: List[torch.Tensor]) -> DeFCNOutputs:
        """
        Args:
            features: per level [N, C, H_i, W_i], finest first.

        Returns:
            :class:`DeFCNOutputs` (shapes in its docstring).

        Raises:
            ValueError: if the number of levels differs from the number of strides.
        """
        check_num_levels(features, self.strides)
        logits, ltrb, aux_logits, box_feats = [], [], [], []
        compute_aux = self.aux_logits is not None and self.training
        for feature, scale, stride in zip(features, self.scales, self.strides):
            cls_feat = self.cls_tower(feature)
            box_feat = self.box_tower(feature)
            logits.append(self.cls_logits(cls_feat))
            if compute_aux:
                aux_logits.append(self.aux_logits(cls_feat))
            ltrb.append(decode_ltrb(scale(self.box_pred(box_feat)), stride, self.norm_reg_targets))
            box_feats.append(box_feat)
        filters = []
        if self.use_3dmf:
            filters = [self.filter(x) for x in self.max_filter(box_feats)]
        return DeFCNOutputs(logits, ltrb, filters, aux_logits)

"""The DeFCN head: FCOS-style towers and ltrb regression without centerness; with DeFCN's
add-ons (3D Max Filtering, auxiliary classifier, see :class:`DenseHead`) it is the head of the
paper."""
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec

from ...layers import Scale
from .base import HEAD_REGISTRY, DenseHead
from .towers import decode_ltrb


@HEAD_REGISTRY.register()
class DeFCNHead(DenseHead):
    """DeFCN head (Wang et al., CVPR 2021, Fig. 3), shared across FPN levels.

    * cls tower -> 3x3 conv -> K class logits ("logits");
    * box tower -> 3x3 conv -> per-level Scale -> "ltrb" in pixels: exp(s_l x) or, with
      ``norm_reg_targets`` (default, the authors' code), relu(s_l x) * stride_l;
    * with ``MODEL.MAX_FILTER.ENABLED`` the 3DMF filter branch and with an auxiliary assigner the
      auxiliary classifier (:class:`DenseHead`). Score: sigmoid(cls) * sigmoid(filter), or
      sigmoid(cls) without 3DMF.
    """

    @configurable
    def __init__(self, *, input_shape: List[ShapeSpec], num_classes: int, num_convs: int = 4,
                 norm: str = "GN", tower_conv_bias: str = "auto", dcn_on_last_conv: bool = False,
                 prior_prob: float = 0.01, norm_reg_targets: bool = True,
                 max_filter: Optional[Tuple[int, int]] = (3, 2), aux_classifier: bool = True):
        """
        Args:
            input_shape: per level ShapeSpec, equal channels on every level.
            num_classes: K >= 1. num_convs: tower depth >= 0. norm: "GN", "BN" or "" (towers
                and 3DMF). prior_prob: initial foreground probability of both classifiers.
            norm_reg_targets: see class docstring.
            max_filter: (kernel, tau) of 3DMF, or None. aux_classifier: build the auxiliary
                classifier. tower_conv_bias, dcn_on_last_conv: as :class:`DenseHead`.

        Raises:
            ValueError: unequal channels, K < 1, or bad 3DMF window sizes.
        """
        super().__init__(input_shape=input_shape, num_classes=num_classes, num_convs=num_convs,
                         norm=norm, name="DeFCN", tower_conv_bias=tower_conv_bias,
                         dcn_on_last_conv=dcn_on_last_conv)
        self.norm_reg_targets = norm_reg_targets
        self.cls_logits = nn.Conv2d(self.in_channels, num_classes, 3, padding=1)
        self.box_pred = nn.Conv2d(self.in_channels, 4, 3, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in self.strides])
        self.finish(prior_prob, max_filter, aux_classifier)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        return {**cls.base_config(cfg, input_shape), "norm_reg_targets": cfg.MODEL.DEFCN_HEAD.NORM_REG_TARGETS}

    @property
    def use_3dmf(self) -> bool:
        return self.filter is not None

    def predict_level(self, feats, level: int) -> Dict[str, torch.Tensor]:
        """"logits" [N, K, H, W] and "ltrb" [N, 4, H, W] pixels."""
        cls_feat, box_feat = feats["cls"], feats["box"]
        reg = self.scales[level](self.box_pred(box_feat))
        return {"logits": self.cls_logits(cls_feat),
                "ltrb": decode_ltrb(reg, self.strides[level], self.norm_reg_targets)}

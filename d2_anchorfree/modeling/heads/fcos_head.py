"""The FCOS head: shared cls/box towers, per-level Scale, centerness branch."""
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec

from ...layers import Scale
from .base import HEAD_REGISTRY, DenseHead, DenseOutputs
from .towers import anchor_deltas_to_ltrb, decode_ltrb

BOX_CODERS = ("ltrb", "anchor_delta")


@HEAD_REGISTRY.register()
class FCOSHead(DenseHead):
    """FCOS head (Tian et al., ICCV 2019, Fig. 2), shared across FPN levels.

    Outputs per level l (stride s_l):
      * "logits" [N, K, H_l, W_l]: class logits (sigmoid per class);
      * "ltrb" [N, 4, H_l, W_l]: distances (l, t, r, b) in **pixels**, >= 0. Paper:
        exp(scale_l * x); with ``norm_reg_targets``: relu(scale_l * x) * s_l (the distances
        are learnt in stride units; IoU losses are scale-invariant, so pixels come out). With
        ``box_coder="anchor_delta"`` the 4 outputs are MMDetection's anchor-based ATSS deltas
        of a square anchor of side ``anchor_scale`` * s_l (:func:`towers.anchor_deltas_to_ltrb`;
        a side may then be negative);
      * "centerness" [N, 1, H_l, W_l]: logits of the centerness branch.
    Scoring rule (paper Sec. 3.1 "Inference" and Sec. 3.3): candidates are the (point, class)
    pairs with p_cls above the threshold (the authors' ``pre_nms_thresh``), ranked by
    (p_cls * sigmoid(centerness)) ** ``score_exponent``.
    """

    EXTRAS = ("centerness",)

    @configurable
    def __init__(self, *, input_shape: List[ShapeSpec], num_classes: int, num_convs: int = 4,
                 norm: str = "GN", tower_conv_bias: str = "auto", dcn_on_last_conv: bool = False,
                 prior_prob: float = 0.01, norm_reg_targets: bool = False,
                 centerness_on_reg: bool = False, score_exponent: float = 0.5,
                 box_coder: str = "ltrb", anchor_scale: float = 8.0,
                 max_filter: Optional[Tuple[int, int]] = None, aux_classifier: bool = False):
        """
        Args:
            input_shape: per level ShapeSpec; all levels must have the same channel count.
            num_classes: K >= 1. num_convs: tower depth >= 0. norm: "GN", "BN" or "".
            prior_prob: initial foreground probability of the classifier.
            norm_reg_targets: see class docstring. centerness_on_reg: centerness branch on the
                box tower (True) or the cls tower (False, paper).
            score_exponent: in (0, 1], see class docstring (``MODEL.FCOS_HEAD.SCORE_EXPONENT``).
            box_coder: "ltrb" or "anchor_delta" (``MODEL.FCOS_HEAD.BOX_CODER``), see the class
                docstring. anchor_scale: anchor side in strides for "anchor_delta"
                (``MODEL.ATSS.ANCHOR_SCALE``), > 0.
            tower_conv_bias, dcn_on_last_conv, max_filter, aux_classifier: as :class:`DenseHead`.

        Raises:
            ValueError: levels with different channels, bad sizes, ``score_exponent``,
                ``box_coder`` or ``anchor_scale``.
        """
        super().__init__(input_shape=input_shape, num_classes=num_classes, num_convs=num_convs,
                         norm=norm, name="FCOS", tower_conv_bias=tower_conv_bias,
                         dcn_on_last_conv=dcn_on_last_conv)
        if not 0.0 < score_exponent <= 1.0:
            raise ValueError(f"MODEL.FCOS_HEAD.SCORE_EXPONENT must be in (0, 1], got {score_exponent}")
        if box_coder not in BOX_CODERS:
            raise ValueError(f"MODEL.FCOS_HEAD.BOX_CODER must be one of {BOX_CODERS}, got {box_coder!r}")
        if anchor_scale <= 0:
            raise ValueError(f"MODEL.ATSS.ANCHOR_SCALE must be > 0, got {anchor_scale}")
        self.norm_reg_targets = norm_reg_targets
        self.box_coder = box_coder
        self.anchor_scale = float(anchor_scale)
        self.centerness_on_reg = centerness_on_reg
        self.score_exponent = score_exponent
        self.cls_logits = nn.Conv2d(self.in_channels, num_classes, 3, padding=1)
        self.box_pred = nn.Conv2d(self.in_channels, 4, 3, padding=1)
        self.centerness = nn.Conv2d(self.in_channels, 1, 3, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in self.strides])
        self.finish(prior_prob, max_filter, aux_classifier)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        h = cfg.MODEL.FCOS_HEAD
        return {**cls.base_config(cfg, input_shape), "norm_reg_targets": h.NORM_REG_TARGETS,
                "centerness_on_reg": h.CENTERNESS_ON_REG, "score_exponent": h.SCORE_EXPONENT,
                "box_coder": h.BOX_CODER,
                # the anchor of the delta coder only (the unused-key check sees what is read)
                **({"anchor_scale": cfg.MODEL.ATSS.ANCHOR_SCALE} if h.BOX_CODER == "anchor_delta" else {})}

    def predict_level(self, feats, level: int) -> Dict[str, torch.Tensor]:
        """"logits" [N, K, H, W], "ltrb" [N, 4, H, W] pixels, "centerness" [N, 1, H, W] logits."""
        cls_feat, box_feat = feats["cls"], feats["box"]
        reg = self.scales[level](self.box_pred(box_feat))
        stride = self.strides[level]
        if self.box_coder == "anchor_delta":
            ltrb = anchor_deltas_to_ltrb(reg, self.anchor_scale * stride)
        else:
            ltrb = decode_ltrb(reg, stride, self.norm_reg_targets)
        return {
            "logits": self.cls_logits(cls_feat),
            "ltrb": ltrb,
            "centerness": self.centerness(box_feat if self.centerness_on_reg else cls_feat),
        }

    def inference_scores(self, out: DenseOutputs):
        """(p_cls * sigmoid(centerness)) ** score_exponent as the ranking score and p_cls (times
        the 3DMF filter when on) as the candidate score, both [N, R, K]."""
        probs = self.class_probabilities(out)
        scores = (probs * torch.sigmoid(out.extras["centerness"])) ** self.score_exponent
        return scores, probs

"""FCOS meta-architecture (Tian et al., ICCV 2019) composed of head + assigner + losses."""
from typing import Dict, List

import torch
import torch.nn.functional as F

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Instances

from ..assigners import build_assigner, centerness_targets
from ..box_coder import boxes_to_ltrb
from ..heads.fcos_head import FCOSHead
from ..losses import (
    check_focal_parameters, check_iou_loss_type, focal_loss_with_labels, iou_loss, ltrb_as_boxes,
)
from .base import (
    AnchorFreeDetector, check_gt_instances, flatten_levels, gather_positive_targets, loss_normalizer, permute,
)

# MODEL.FCOS.ASSIGNER value -> registered assigner class name
ASSIGNER_NAMES = {"FCOS": "FCOSAssigner", "ATSS": "ATSSAssigner"}


def assigner_name(value: str) -> str:
    """Map ``MODEL.FCOS.ASSIGNER`` ("FCOS", "ATSS" or a registered class name) to a registry name."""
    return ASSIGNER_NAMES.get(value, value)


@META_ARCH_REGISTRY.register()
class FCOS(AnchorFreeDetector):
    """FCOS: per-location classification (focal loss), ltrb regression (IoU loss weighted by
    centerness targets) and centerness (BCE). Inference: candidates are the (point, class) pairs
    with p_cls > SCORE_THRESH_TEST (paper Sec. 3.1), ranked by (p_cls * centerness) **
    SCORE_EXPONENT, then class-aware NMS.

    Loss normalization (the authors' code): cls and centerness by the number of positives,
    box by the sum of centerness targets, both averaged over workers.
    """

    @configurable
    def __init__(self, *, assigner, box_loss_type: str = "iou", focal_alpha: float = 0.25,
                 focal_gamma: float = 2.0, loss_weights=(1.0, 1.0, 1.0), score_exponent: float = 0.5,
                 **kwargs):
        """
        Args:
            assigner: callable(shifts, gt_instances) -> matched_idxs [R] (see assigners).
            box_loss_type: "iou", "linear_iou" or "giou".
            focal_alpha, focal_gamma: focal loss parameters (alpha in [0, 1] or < 0 to disable,
                gamma >= 0).
            loss_weights: (cls, box, centerness) multipliers.
            score_exponent: inference score = (p * centerness) ** score_exponent, in (0, 1].
            **kwargs: see :class:`AnchorFreeDetector`.

        Raises:
            ValueError: ``score_exponent`` or a focal parameter out of range, naming the config
                key (and see :class:`AnchorFreeDetector`).
        """
        super().__init__(**kwargs)
        if not 0.0 < score_exponent <= 1.0:
            raise ValueError(f"MODEL.FCOS.SCORE_EXPONENT must be in (0, 1], got {score_exponent}")
        check_focal_parameters(focal_alpha, focal_gamma, "MODEL.FCOS.FOCAL_LOSS_ALPHA",
                               "MODEL.FCOS.FOCAL_LOSS_GAMMA")
        self.assigner = assigner
        self.box_loss_type = check_iou_loss_type(box_loss_type, "MODEL.FCOS.BOX_LOSS_TYPE")
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.loss_weights = tuple(loss_weights)
        self.score_exponent = score_exponent

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.FCOS
        args, shapes, strides = cls.common_config(cfg)
        args.update(
            head=FCOSHead(cfg, shapes),
            assigner=build_assigner(assigner_name(c.ASSIGNER), cfg, strides),
            box_loss_type=c.BOX_LOSS_TYPE,
            focal_alpha=c.FOCAL_LOSS_ALPHA,
            focal_gamma=c.FOCAL_LOSS_GAMMA,
            loss_weights=(c.LOSS_WEIGHT_CLS, c.LOSS_WEIGHT_BOX, c.LOSS_WEIGHT_CENTERNESS),
            score_exponent=c.SCORE_EXPONENT,
        )
        return args

    def forward_training(self, images, features, predictions,
                         gt_instances: List[Instances]) -> Dict[str, torch.Tensor]:
        """Assign targets (``self.assigner`` per image) and compute the FCOS losses.

        Args:
            predictions: (logits, ltrb, centerness) of :class:`FCOSHead`, per level
                [N, K, H_l, W_l] logits, [N, 4, H_l, W_l] distances in pixels, [N, 1, H_l, W_l] logits.

        Returns:
            dict of scalar losses "loss_fcos_cls", "loss_fcos_box", "loss_fcos_ctr" (see :meth:`losses`).

        Other arguments and errors: :meth:`AnchorFreeDetector.forward_training`.
        """
        check_gt_instances(gt_instances, self.num_classes)
        logits, ltrb, centerness = predictions
        shifts = self.shift_generator(features)
        matched = self.assign_batch(self.assigner, shifts, gt_instances)  # [N, R]
        return self.losses(
            shifts, gt_instances, matched,
            flatten_levels(logits, self.num_classes), flatten_levels(ltrb, 4),
            flatten_levels(centerness, 1).squeeze(2),
        )

    def losses(self, shifts, gt_instances, matched, logits, ltrb, centerness) -> Dict[str, torch.Tensor]:
        """
        Args:
            shifts: per level [R_i, 2]. gt_instances: N Instances. matched: [N, R] long.
            logits: [N, R, K]. ltrb: [N, R, 4] pixels. centerness: [N, R] logits.

        Returns:
            dict with "loss_fcos_cls", "loss_fcos_box", "loss_fcos_ctr" (scalars).
        """
        targets = gather_positive_targets(gt_instances, matched, self.num_classes)
        pos = targets.pos
        gt_ltrb = boxes_to_ltrb(torch.cat(shifts)[targets.pos_point], targets.gt_boxes)  # [P, 4] pixels
        num_pos = loss_normalizer(pos.sum().float(), 1.0)
        loss_cls = focal_loss_with_labels(
            logits.flatten(0, 1), targets.labels.flatten(), targets.valid.flatten(),
            self.focal_alpha, self.focal_gamma,
        ) / num_pos
        ctr_targets = centerness_targets(gt_ltrb)
        ctr_norm = loss_normalizer(ctr_targets.sum(), 1e-6)
        loss_box = iou_loss(
            ltrb_as_boxes(ltrb[pos]), ltrb_as_boxes(gt_ltrb), self.box_loss_type, weight=ctr_targets
        ) / ctr_norm
        loss_ctr = F.binary_cross_entropy_with_logits(centerness[pos], ctr_targets, reduction="sum") / num_pos
        # Keep every output in the graph when there is no positive (e.g. images with no objects).
        loss_box = loss_box + 0.0 * ltrb.sum()
        loss_ctr = loss_ctr + 0.0 * centerness.sum()
        w_cls, w_box, w_ctr = self.loss_weights
        return {"loss_fcos_cls": w_cls * loss_cls, "loss_fcos_box": w_box * loss_box,
                "loss_fcos_ctr": w_ctr * loss_ctr}

    def per_image_scores_and_ltrb(self, predictions, i: int):
        """FCOS inference scores of image ``i`` (paper Sec. 3.1 "Inference" and Sec. 3.3).

        Args:
            predictions: (logits, ltrb, centerness) of :class:`FCOSHead`, per level
                [N, K, H_l, W_l], [N, 4, H_l, W_l] pixels, [N, 1, H_l, W_l].
            i: image index.

        Returns:
            per level: ranking scores (p_cls * sigmoid(centerness)) ** SCORE_EXPONENT [R_l, K],
            ltrb [R_l, 4] pixels, and candidate scores p_cls [R_l, K]: the class probability is
            what SCORE_THRESH_TEST thresholds (as in the authors' code, ``pre_nms_thresh``).
        """
        logits, ltrb, centerness = predictions
        probs = [torch.sigmoid(permute(l[i], self.num_classes)) for l in logits]
        scores = [
            (p * torch.sigmoid(permute(c[i], 1))) ** self.score_exponent
            for p, c in zip(probs, centerness)
        ]
        return scores, [permute(d[i], 4) for d in ltrb], probs

"""VarifocalNet meta-architecture (Zhang et al., "VarifocalNet: An IoU-aware Dense Object Detector",
CVPR 2021): VFNet head + assigner (ATSS) + Varifocal Loss + GIoU losses on the initial and the
refined boxes."""
from typing import Dict, List

import torch

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Instances

from ..assigners import build_assigner
from ..box_coder import boxes_to_ltrb, ltrb_to_boxes
from ..heads.vfnet_head import VFNetHead
from ..losses import check_focal_parameters, iou_loss, ltrb_as_boxes, paired_iou
from ..losses.varifocal import varifocal_loss
from .base import (
    AnchorFreeDetector, check_gt_instances, flatten_levels, gather_positive_targets, loss_normalizer, permute,
)
from .fcos import assigner_name

# Positive IACS targets are clamped to at least this so that a positive whose refined box misses
# its GT (IoU 0) is still a positive of the Varifocal Loss (q > 0); authors' code: 1e-6.
MIN_IOU_TARGET = 1e-6


@META_ARCH_REGISTRY.register()
class VFNet(AnchorFreeDetector):
    """VarifocalNet.

    Training (paper Sec. 3-4 and the authors' code, mmdet ``VFNetHead.loss``):
      * assignment: ATSS (``MODEL.VFNET.USE_ATSS``, paper default) or, with it off, the assigner of
        ``MODEL.FCOS.ASSIGNER`` ("FCOS" by default); IGNORE locations are left out of all losses;
      * IACS target q = IoU(refined predicted box (detached), GT box), clamped to >= 1e-6, at the
        GT class of positives, 0 elsewhere; Varifocal Loss (Eq. 2) on it, divided by the number of
        positives averaged over workers (at least 1);
      * GIoU loss on the initial boxes (``LOSS_WEIGHT_BOX_INIT``, 1.5) and on the refined boxes
        (``LOSS_WEIGHT_BOX_REFINE``, 2.0); each positive is weighted by the detached IoU of *that*
        box with its GT (clamped to >= 1e-6), and each loss is divided by the sum of its weights
        averaged over workers (at least 1), as in the authors' code;
      * ``LOSS_WEIGHT_VFL`` (1.0) multiplies the Varifocal Loss.
    Inference: score = sigmoid(IACS logits) (no centerness), boxes = refined ltrb, then per-level
    top-k and class-aware NMS (``dense_inference``).
    """

    @configurable
    def __init__(self, *, assigner, alpha: float = 0.75, gamma: float = 2.0, iou_weighted: bool = True,
                 loss_weights=(1.0, 1.5, 2.0), **kwargs):
        """
        Args:
            assigner: callable(shifts, gt, pred_logits=[R, K], pred_boxes=[R, 4] XYXY pixels)
                -> matched_idxs [R] (see assigners; the predictions are detached).
            alpha, gamma: Varifocal Loss parameters (paper: 0.75, 2); alpha in [0, 1], gamma >= 0.
            iou_weighted: weight VFL positives by their IoU target (paper) or by 1.
            loss_weights: (VFL, initial-box GIoU, refined-box GIoU) multipliers.
            **kwargs: see :class:`AnchorFreeDetector` (``head`` must be a :class:`VFNetHead`).

        Raises:
            ValueError: alpha or gamma out of range, naming the config key (and see
                :class:`AnchorFreeDetector`).
        """
        super().__init__(**kwargs)
        check_focal_parameters(alpha, gamma, "MODEL.VFNET.ALPHA", "MODEL.VFNET.GAMMA",
                               negative_alpha_disables=False)
        self.assigner = assigner
        self.alpha = alpha
        self.gamma = gamma
        self.iou_weighted = iou_weighted
        self.loss_weights = tuple(loss_weights)

    @classmethod
    def from_config(cls, cfg):
        c, v = cfg.MODEL.FCOS, cfg.MODEL.VFNET
        args, shapes, strides = cls.common_config(cfg)
        name = "ATSSAssigner" if v.USE_ATSS else assigner_name(c.ASSIGNER)
        args.update(
            head=VFNetHead(cfg, shapes),
            assigner=build_assigner(name, cfg, strides),
            alpha=v.ALPHA,
            gamma=v.GAMMA,
            iou_weighted=v.IOU_WEIGHTED,
            loss_weights=(v.LOSS_WEIGHT_VFL, v.LOSS_WEIGHT_BOX_INIT, v.LOSS_WEIGHT_BOX_REFINE),
        )
        return args

    def forward_training(self, images, features, predictions,
                         gt_instances: List[Instances]) -> Dict[str, torch.Tensor]:
        """Assign targets (``self.assigner`` per image, with the detached refined boxes for
        prediction-aware assigners) and compute the VFNet losses.

        Args:
            predictions: (logits, ltrb_init, ltrb_refine) of :class:`VFNetHead`, per level
                [N, K, H_l, W_l] IACS logits, [N, 4, H_l, W_l] and [N, 4, H_l, W_l] distances in pixels.

        Returns:
            dict of scalar losses "loss_vfnet_cls", "loss_vfnet_box_init", "loss_vfnet_box_refine"
            (see :meth:`losses`).

        Other arguments and errors: :meth:`AnchorFreeDetector.forward_training`.
        """
        check_gt_instances(gt_instances, self.num_classes)
        logits, ltrb_init, ltrb_refine = predictions
        shifts = self.shift_generator(features)
        logits = flatten_levels(logits, self.num_classes)
        ltrb_init, ltrb_refine = flatten_levels(ltrb_init, 4), flatten_levels(ltrb_refine, 4)
        # Predictions for prediction-aware assigners (e.g. POTO); ATSS and FCOS ignore them.
        with torch.no_grad():
            pred_boxes = ltrb_to_boxes(torch.cat(shifts), ltrb_refine)  # [N, R, 4] pixels
        matched = self.assign_batch(self.assigner, shifts, gt_instances, logits, pred_boxes)
        return self.losses(shifts, gt_instances, matched, logits, ltrb_init, ltrb_refine)

    def losses(self, shifts, gt_instances, matched, logits, ltrb_init,
               ltrb_refine) -> Dict[str, torch.Tensor]:
        """
        Args:
            shifts: per level [R_i, 2] points (x, y) pixels. gt_instances: N Instances.
            matched: [N, R] long (GT index, BACKGROUND -1, IGNORE -2).
            logits: [N, R, K] IACS logits. ltrb_init, ltrb_refine: [N, R, 4] pixels.

        Returns:
            dict with "loss_vfnet_cls", "loss_vfnet_box_init", "loss_vfnet_box_refine" (scalars).
        """
        points = torch.cat(shifts)
        targets = gather_positive_targets(gt_instances, matched, self.num_classes)
        pos, pos_img, pos_point = targets.pos, targets.pos_img, targets.pos_point

        target_boxes = ltrb_as_boxes(boxes_to_ltrb(points[pos_point], targets.gt_boxes))
        init_boxes, refine_boxes = ltrb_as_boxes(ltrb_init[pos]), ltrb_as_boxes(ltrb_refine[pos])
        iou_init = paired_iou(init_boxes.detach(), target_boxes).clamp(min=MIN_IOU_TARGET)
        iou_refine = paired_iou(refine_boxes.detach(), target_boxes).clamp(min=MIN_IOU_TARGET)

        # Varifocal Loss on the IoU-aware classification score (Eq. 2).
        cls_targets = torch.zeros_like(logits)
        cls_targets[pos_img, pos_point, targets.gt_classes] = iou_refine.to(logits.dtype)
        valid = targets.valid  # IGNORE (-2) stays out of the classification loss
        num_pos = loss_normalizer(pos.sum().float(), 1.0)
        loss_cls = varifocal_loss(
            logits[valid], cls_targets[valid], self.alpha, self.gamma, self.iou_weighted) / num_pos

        # GIoU on the initial and refined boxes, each weighted by its own detached IoU.
        norm_init = loss_normalizer(iou_init.sum(), 1.0)
        norm_refine = loss_normalizer(iou_refine.sum(), 1.0)
        loss_init = iou_loss(init_boxes, target_boxes, "giou", weight=iou_init) / norm_init
        loss_refine = iou_loss(refine_boxes, target_boxes, "giou", weight=iou_refine) / norm_refine
        # Keep every output in the graph when there is no positive (e.g. images with no objects).
        loss_init = loss_init + 0.0 * ltrb_init.sum()
        loss_refine = loss_refine + 0.0 * ltrb_refine.sum()
        w_cls, w_init, w_refine = self.loss_weights
        return {"loss_vfnet_cls": w_cls * loss_cls, "loss_vfnet_box_init": w_init * loss_init,
                "loss_vfnet_box_refine": w_refine * loss_refine}

    def per_image_scores_and_ltrb(self, predictions, i: int):
        """VFNet scores and boxes of image ``i`` (paper Sec. 4: the IACS ranks the detections).

        Args:
            predictions: (logits, ltrb_init, ltrb_refine) of :class:`VFNetHead`, per level
                [N, K, H_l, W_l], [N, 4, H_l, W_l] pixels, [N, 4, H_l, W_l] pixels.
            i: image index.

        Returns:
            per level scores sigmoid(IACS logits) [R_l, K] (no centerness; also what
            SCORE_THRESH_TEST thresholds), the refined ltrb [R_l, 4] pixels, and ``None``.
        """
        logits, _, ltrb_refine = predictions
        scores = [torch.sigmoid(permute(x[i], self.num_classes)) for x in logits]
        return scores, [permute(d[i], 4) for d in ltrb_refine], None

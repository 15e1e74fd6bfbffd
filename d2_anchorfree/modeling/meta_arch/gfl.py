"""GFL meta-architecture (Li et al., "Generalized Focal Loss", NeurIPS 2020; GFLv2's DGQP,
Li et al., CVPR 2021): GFL head + assigner (ATSS) + QFL / DFL / GIoU losses."""
from typing import Dict, List

import torch

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Instances

from ..assigners import build_assigner
from ..assigners.base import cat_points
from ..box_coder import boxes_to_ltrb, ltrb_to_boxes
from ..heads.gfl_head import GFLHead, distribution_to_distance
from ..losses import distribution_focal_loss, iou_loss, ltrb_as_boxes, paired_iou, quality_focal_loss
from .base import (
    AnchorFreeDetector, check_gt_instances, flatten_levels, gather_positive_targets, loss_normalizer, permute,
)
from .fcos import assigner_name


@META_ARCH_REGISTRY.register()
class GFL(AnchorFreeDetector):
    """Generalized Focal Loss detector.

    Training (GFL paper Sec. 3 and the authors' code, mmdet ``GFLHead.loss``):
      * QFL (Eq. 5) on the joint score against y = IoU(decoded predicted box (detached), GT box)
        at the GT class of positives, 0 elsewhere; IGNORE locations are left out; divided by the
        number of positives averaged over workers (at least 1);
      * GIoU loss between decoded and GT boxes, and DFL (Eq. 7) on the four side distributions
        with targets = GT distances in stride units clamped to [0, REG_MAX] (averaged over the 4
        sides); both weighted per positive by its highest predicted class score (detached) and
        divided by the sum of those weights averaged over workers (at least 1, as in the code).
      * Loss weights ``MODEL.GFL.LOSS_WEIGHT_QFL / _BOX / _DFL`` (paper: 1, 2, 0.25).
    Inference: score = sigmoid(logits) (times the DGQP quality with ``MODEL.GFL.DGQP``), boxes
    = integral of the distributions (Eq. 6) times the stride, then class-aware NMS.
    """

    @configurable
    def __init__(self, *, assigner, reg_max: int = 16, qfl_beta: float = 2.0,
                 loss_weights=(1.0, 2.0, 0.25), **kwargs):
        """
        Args:
            assigner: callable(shifts, gt, pred_logits=[R, K], pred_boxes=[R, 4] XYXY pixels)
                -> matched_idxs [R] (see assigners; the predictions are detached).
            reg_max: n of the head's distributions (bins 0..n, stride units).
            qfl_beta: QFL modulating exponent.
            loss_weights: (QFL, GIoU, DFL) multipliers.
            **kwargs: see :class:`AnchorFreeDetector` (``head`` must be a :class:`GFLHead`).
        """
        super().__init__(**kwargs)
        self.assigner = assigner
        self.reg_max = reg_max
        self.qfl_beta = qfl_beta
        self.loss_weights = tuple(loss_weights)

    @classmethod
    def from_config(cls, cfg):
        g = cfg.MODEL.GFL
        args, shapes, strides = cls.common_config(cfg)
        args.update(
            head=GFLHead(cfg, shapes),
            assigner=build_assigner(assigner_name(g.ASSIGNER), cfg, strides),
            reg_max=g.REG_MAX,
            qfl_beta=g.QFL_BETA,
            loss_weights=(g.LOSS_WEIGHT_QFL, g.LOSS_WEIGHT_BOX, g.LOSS_WEIGHT_DFL),
        )
        return args

    def forward_training(self, images, features, predictions,
                         gt_instances: List[Instances]) -> Dict[str, torch.Tensor]:
        """Assign targets (``self.assigner`` per image, with the detached decoded predictions for
        prediction-aware assigners) and compute the GFL losses.

        Args:
            predictions: (logits, box_logits, quality) of :class:`GFLHead`, per level
                [N, K, H_l, W_l] joint logits, [N, 4 (REG_MAX + 1), H_l, W_l] bin logits (stride
                units), and [N, 1, H_l, W_l] DGQP quality in (0, 1) or ``None``.

        Returns:
            dict of scalar losses "loss_gfl_qfl", "loss_gfl_box", "loss_gfl_dfl" (see :meth:`losses`).

        Other arguments and errors: :meth:`AnchorFreeDetector.forward_training`.
        """
        check_gt_instances(gt_instances, self.num_classes)
        logits, box_logits, quality = predictions
        shifts = self.shift_generator(features)
        scores = flatten_levels(logits, self.num_classes)
        if quality is not None:
            scores = torch.sigmoid(scores) * flatten_levels(quality, 1)
        box_logits = flatten_levels(box_logits, 4 * (self.reg_max + 1))
        # Predictions for prediction-aware assigners (e.g. POTO); ATSS and FCOS ignore them.
        with torch.no_grad():
            points, point_strides = cat_points(shifts, self.strides)
            pred_ltrb = distribution_to_distance(box_logits, self.reg_max) * point_strides[:, None]
            pred_boxes = ltrb_to_boxes(points, pred_ltrb)  # [N, R, 4] pixels
            pred_logits = scores if quality is None else torch.logit(scores, eps=1e-6)
        matched = self.assign_batch(self.assigner, shifts, gt_instances, pred_logits, pred_boxes)
        return self.losses(shifts, gt_instances, matched, scores, box_logits, activated=quality is not None)

    def losses(self, shifts, gt_instances, matched, scores, box_logits,
               activated: bool) -> Dict[str, torch.Tensor]:
        """
        Args:
            shifts: per level [R_i, 2]. gt_instances: N Instances. matched: [N, R] long.
            scores: [N, R, K] joint logits, or probabilities when ``activated`` (DGQP).
            box_logits: [N, R, 4 * (REG_MAX + 1)].

        Returns:
            dict with "loss_gfl_qfl", "loss_gfl_box", "loss_gfl_dfl" (scalars).
        """
        points, point_strides = cat_points(shifts, self.strides)
        targets = gather_positive_targets(gt_instances, matched, self.num_classes)
        pos, pos_img, pos_point = targets.pos, targets.pos_img, targets.pos_point
        pos_strides = point_strides[pos_point][:, None]  # [P, 1] pixels

        pos_box_logits = box_logits[pos]  # [P, 4 (n + 1)]
        pred_ltrb = distribution_to_distance(pos_box_logits, self.reg_max) * pos_strides  # pixels
        gt_ltrb = boxes_to_ltrb(points[pos_point], targets.gt_boxes)  # pixels
        pred_boxes, target_boxes = ltrb_as_boxes(pred_ltrb), ltrb_as_boxes(gt_ltrb)

        # QFL: soft targets y = IoU(pred box, GT box) at the GT class (Eq. 5).
        qfl_targets = torch.zeros_like(scores)
        qfl_targets[pos_img, pos_point, targets.gt_classes] = paired_iou(pred_boxes.detach(), target_boxes)
        valid = targets.valid  # IGNORE (-2) stays out of the classification loss
        num_pos = loss_normalizer(pos.sum().float(), 1.0)
        loss_qfl = quality_focal_loss(scores[valid], qfl_targets[valid], self.qfl_beta, activated) / num_pos

        # GIoU and DFL, weighted by the highest predicted class score (detached).
        pos_scores = scores[pos].detach()
        weights = (pos_scores if activated else torch.sigmoid(pos_scores)).max(dim=1).values
        weight_norm = loss_normalizer(weights.sum(), 1.0)
        loss_box = iou_loss(pred_boxes, target_boxes, "giou", weight=weights) / weight_norm
        dfl_targets = (gt_ltrb / pos_strides).clamp(min=0, max=self.reg_max)  # stride units
        loss_dfl = distribution_focal_loss(
            pos_box_logits.reshape(-1, self.reg_max + 1), dfl_targets.reshape(-1))
        loss_dfl = (loss_dfl * weights.repeat_interleave(4)).sum() / 4.0 / weight_norm
        # Keep every output in the graph when there is no positive (e.g. images with no objects).
        loss_box = loss_box + 0.0 * box_logits.sum()
        loss_dfl = loss_dfl + 0.0 * box_logits.sum()
        w_qfl, w_box, w_dfl = self.loss_weights
        return {"loss_gfl_qfl": w_qfl * loss_qfl, "loss_gfl_box": w_box * loss_box,
                "loss_gfl_dfl": w_dfl * loss_dfl}

    def per_image_scores_and_ltrb(self, predictions, i: int):
        """GFL scores and boxes of image ``i``.

        Args:
            predictions: (logits, box_logits, quality) of :class:`GFLHead`, per level
                [N, K, H_l, W_l], [N, 4 (REG_MAX + 1), H_l, W_l], [N, 1, H_l, W_l] or ``None``.
            i: image index.

        Returns:
            per level scores sigmoid(logits) [R_l, K] (times the DGQP quality, GFLv2 Eq. 4;
            also what SCORE_THRESH_TEST thresholds), ltrb [R_l, 4] pixels = integral of the
            distributions (GFL Eq. 6) times the stride, and ``None`` for the candidate scores.
        """
        logits, box_logits, quality = predictions
        bins = 4 * (self.reg_max + 1)
        scores = [torch.sigmoid(permute(x[i], self.num_classes)) for x in logits]
        if quality is not None:
            scores = [s * permute(q[i], 1) for s, q in zip(scores, quality)]
        ltrb = [distribution_to_distance(permute(b[i], bins), self.reg_max) * stride
                for b, stride in zip(box_logits, self.strides)]
        return scores, ltrb, None

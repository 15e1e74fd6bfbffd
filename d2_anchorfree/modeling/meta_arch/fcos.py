"""FCOS meta-architecture (Tian et al., ICCV 2019) composed of head + assigner + losses."""
from typing import Dict, List

import torch
import torch.nn.functional as F

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.structures import Instances

from ..assigners import build_assigner, centerness_targets
from ..box_coder import boxes_to_ltrb
from ..heads.fcos_head import FCOSHead
from ..losses import focal_loss_with_labels, iou_loss, ltrb_as_boxes
from ..postprocessing import dense_inference
from .base import AnchorFreeDetector, check_gt_instances, flatten_levels, loss_normalizer

# MODEL.FCOS.ASSIGNER value -> registered assigner class name
ASSIGNER_NAMES = {"FCOS": "FCOSAssigner", "ATSS": "ATSSAssigner"}


def assigner_name(value: str) -> str:
    """Map ``MODEL.FCOS.ASSIGNER`` ("FCOS", "ATSS" or a registered class name) to a registry name."""
    return ASSIGNER_NAMES.get(value, value)


@META_ARCH_REGISTRY.register()
class FCOS(AnchorFreeDetector):
    """FCOS: per-location classification (focal loss), ltrb regression (IoU loss weighted by
    centerness targets) and centerness (BCE); score = (p_cls * centerness) ** SCORE_EXPONENT,
    then class-aware NMS.

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
            focal_alpha, focal_gamma: focal loss parameters.
            loss_weights: (cls, box, centerness) multipliers.
            score_exponent: inference score = (p * centerness) ** score_exponent, in (0, 1].
            **kwargs: see :class:`AnchorFreeDetector`.
        """
        super().__init__(**kwargs)
        self.assigner = assigner
        self.box_loss_type = box_loss_type
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.loss_weights = tuple(loss_weights)
        self.score_exponent = score_exponent

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.FCOS
        backbone = build_backbone(cfg)
        args = cls.common_config(cfg, backbone, c.IN_FEATURES)
        shapes = [backbone.output_shape()[f] for f in c.IN_FEATURES]
        strides = [s.stride for s in shapes]
        if c.BOX_LOSS_TYPE not in ("iou", "linear_iou", "giou"):
            raise ValueError(f"MODEL.FCOS.BOX_LOSS_TYPE must be iou/linear_iou/giou, got {c.BOX_LOSS_TYPE!r}")
        args.update(
            head=FCOSHead(cfg, shapes),
            assigner=build_assigner(assigner_name(c.ASSIGNER), cfg, strides),
            num_classes=c.NUM_CLASSES,
            box_loss_type=c.BOX_LOSS_TYPE,
            focal_alpha=c.FOCAL_LOSS_ALPHA,
            focal_gamma=c.FOCAL_LOSS_GAMMA,
            loss_weights=(c.LOSS_WEIGHT_CLS, c.LOSS_WEIGHT_BOX, c.LOSS_WEIGHT_CENTERNESS),
            score_exponent=c.SCORE_EXPONENT,
            test_score_thresh=c.SCORE_THRESH_TEST,
            test_topk_candidates=c.TOPK_CANDIDATES_TEST,
            test_nms_thresh=c.NMS_THRESH_TEST,
        )
        return args

    def forward_training(self, images, features, predictions, gt_instances: List[Instances]):
        check_gt_instances(gt_instances, self.num_classes)
        logits, ltrb, centerness = predictions
        shifts = self.shift_generator(features)
        matched = torch.stack([self.assigner(shifts, gt) for gt in gt_instances])  # [N, R]
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
        points = torch.cat(shifts)
        pos = matched >= 0
        labels = torch.full_like(matched, self.num_classes)
        gt_ltrb = torch.zeros_like(ltrb)
        for i, gt in enumerate(gt_instances):
            idx = matched[i][pos[i]]
            labels[i][pos[i]] = gt.gt_classes[idx]
            gt_ltrb[i][pos[i]] = boxes_to_ltrb(points[pos[i]], gt.gt_boxes.tensor[idx])
        num_pos = loss_normalizer(pos.sum().float(), 1.0)
        loss_cls = focal_loss_with_labels(
            logits.flatten(0, 1), labels.flatten(), (matched >= -1).flatten(),
            self.focal_alpha, self.focal_gamma,
        ) / num_pos
        ctr_targets = centerness_targets(gt_ltrb[pos])
        ctr_norm = loss_normalizer(ctr_targets.sum(), 1e-6)
        loss_box = iou_loss(
            ltrb_as_boxes(ltrb[pos]), ltrb_as_boxes(gt_ltrb[pos]), self.box_loss_type, weight=ctr_targets
        ) / ctr_norm
        loss_ctr = F.binary_cross_entropy_with_logits(centerness[pos], ctr_targets, reduction="sum") / num_pos
        # Keep every output in the graph when there is no positive (e.g. images with no objects).
        loss_box = loss_box + 0.0 * ltrb.sum()
        loss_ctr = loss_ctr + 0.0 * centerness.sum()
        w_cls, w_box, w_ctr = self.loss_weights
        return {"loss_fcos_cls": w_cls * loss_cls, "loss_fcos_box": w_box * loss_box,
                "loss_fcos_ctr": w_ctr * loss_ctr}

    def forward_inference(self, images, features, predictions):
        logits, ltrb, centerness = predictions
        shifts = self.shift_generator(features)
        results = []
        for i, image_size in enumerate(images.image_sizes):
            scores = [
                (torch.sigmoid(permute(l[i], self.num_classes)) * torch.sigmoid(permute(c[i], 1)))
                ** self.score_exponent
                for l, c in zip(logits, centerness)
            ]
            boxes = [permute(d[i], 4) for d in ltrb]
            results.append(dense_inference(
                scores, boxes, shifts, image_size, self.test_score_thresh,
                self.test_topk_candidates, self.test_nms_thresh, self.max_detections_per_image))
        return results


def permute(x: torch.Tensor, dim: int) -> torch.Tensor:
    """[dim, H, W] (one image of one level) -> [H * W, dim]."""
    return x.reshape(dim, -1).t()

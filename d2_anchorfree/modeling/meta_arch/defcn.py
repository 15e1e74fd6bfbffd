"""DeFCN meta-architecture (Wang et al., CVPR 2021): POTO + 3DMF + auxiliary loss, NMS-free."""
from typing import Dict, List, Optional

import torch

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage

from ..assigners import build_assigner
from ..box_coder import boxes_to_ltrb, ltrb_to_boxes
from ..heads.defcn_head import DeFCNHead, DeFCNOutputs, joint_logits
from ..losses import (
    check_focal_parameters, check_iou_loss_type, focal_loss_with_labels, iou_loss, ltrb_as_boxes,
)
from .base import (
    AnchorFreeDetector, check_gt_instances, flatten_levels, gather_positive_targets, loss_normalizer, permute,
)


def put_scalar(name: str, value: float):
    """Log to the current detectron2 EventStorage, if any (training outside a trainer has none)."""
    try:
        storage = get_event_storage()
    except AssertionError:
        return
    storage.put_scalar(name, value)


@META_ARCH_REGISTRY.register()
class DeFCN(AnchorFreeDetector):
    """DeFCN: FCOS-style dense detector trained with one-to-one POTO labels, NMS-free.

    Training (per batch):
      * final class logits z = logit(sigmoid(cls) * sigmoid(filter)) (3DMF on) or cls (off);
      * POTO (Sec. 3.2) assigns each GT at most one point from the detached z and the decoded
        boxes; focal loss on z against those labels (the authors' code also applies the focal
        loss to the product of the two sigmoids), normalized by the number of positives
        averaged over workers;
      * GIoU (``MODEL.FCOS.BOX_LOSS_TYPE``) box loss on the POTO positives, same normalizer;
      * auxiliary (Sec. 3.4, optional): one-to-many :class:`POTOAuxAssigner` labels from the same
        predictions supervise the head's separate auxiliary classifier with a focal loss
        normalized by its own number of positives, weighted by ``MODEL.POTO.AUX_LOSS_WEIGHT``.
        (The authors' code applies this loss to the main cls logits instead; here the branch
        is separate and discarded at inference.)
    Inference: score = sigmoid(cls) * sigmoid(filter) (or sigmoid(cls)); per image the top
    ``TEST.DETECTIONS_PER_IMAGE`` over all levels and classes, no NMS (``MODEL.DEFCN.NMS_FREE``;
    False -> class-aware NMS at ``MODEL.FCOS.NMS_THRESH_TEST``).
    """

    @configurable
    def __init__(self, *, assigner, aux_assigner=None, box_loss_type: str = "giou",
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, loss_weights=(1.0, 2.0, 1.0),
                 nms_free: bool = True, **kwargs):
        """
        Args:
            assigner: one-to-one assigner, callable(shifts, gt, pred_logits=, pred_boxes=) -> [R].
            aux_assigner: one-to-many assigner for the auxiliary loss, or None (no aux loss;
                then the head must have no auxiliary classifier).
            box_loss_type: "iou", "linear_iou" or "giou" (paper: GIoU).
            focal_alpha, focal_gamma: focal loss parameters (main and auxiliary).
            loss_weights: (cls, box, aux) multipliers (authors' code: 1, 2, 1).
            nms_free: True -> no NMS at inference.
            **kwargs: see :class:`AnchorFreeDetector`.

        Raises:
            ValueError: an aux assigner without an auxiliary classifier in the head, or the reverse;
                a focal parameter out of range (and see :class:`AnchorFreeDetector`).
        """
        super().__init__(**kwargs)
        check_focal_parameters(focal_alpha, focal_gamma, "MODEL.FCOS.FOCAL_LOSS_ALPHA",
                               "MODEL.FCOS.FOCAL_LOSS_GAMMA")
        has_aux_branch = getattr(self.head, "aux_logits", None) is not None
        if has_aux_branch != (aux_assigner is not None):
            raise ValueError(
                f"DeFCN: the head's auxiliary classifier (present: {has_aux_branch}) and the "
                f"auxiliary assigner (present: {aux_assigner is not None}) must come together "
                "(MODEL.DEFCN.USE_AUX_LOSS)"
            )
        self.assigner = assigner
        self.aux_assigner = aux_assigner
        self.box_loss_type = check_iou_loss_type(box_loss_type, "MODEL.FCOS.BOX_LOSS_TYPE")
        self.focal_alpha = focal_alpha
        self.focal_gamma = focal_gamma
        self.loss_weights = tuple(loss_weights)
        self.nms_free = nms_free

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.FCOS
        args, shapes, strides = cls.common_config(cfg)
        use_aux = cfg.MODEL.DEFCN.USE_AUX_LOSS
        args.update(
            head=DeFCNHead(cfg, shapes),
            assigner=build_assigner("POTOAssigner", cfg, strides),
            aux_assigner=build_assigner("POTOAuxAssigner", cfg, strides) if use_aux else None,
            box_loss_type=c.BOX_LOSS_TYPE,
            focal_alpha=c.FOCAL_LOSS_ALPHA,
            focal_gamma=c.FOCAL_LOSS_GAMMA,
            loss_weights=(c.LOSS_WEIGHT_CLS, c.LOSS_WEIGHT_BOX, cfg.MODEL.POTO.AUX_LOSS_WEIGHT),
            nms_free=cfg.MODEL.DEFCN.NMS_FREE,
        )
        return args

    def final_logits(self, predictions: DeFCNOutputs) -> torch.Tensor:
        """[N, R, K] logits of the final score (see :func:`joint_logits`), all levels."""
        logits = flatten_levels(predictions.logits, self.num_classes)
        if not predictions.filters:
            return logits
        return joint_logits(logits, flatten_levels(predictions.filters, 1))

    def forward_training(self, images, features, predictions: DeFCNOutputs,
                         gt_instances: List[Instances]) -> Dict[str, torch.Tensor]:
        """POTO assignment from the detached final scores and decoded boxes, then the DeFCN losses
        (and the auxiliary one-to-many loss when enabled).

        Args:
            predictions: :class:`DeFCNOutputs`, per level logits [N, K, H_l, W_l], ltrb
                [N, 4, H_l, W_l] pixels, filters [N, 1, H_l, W_l] (or none), aux_logits
                [N, K, H_l, W_l] (or none).

        Returns:
            dict of scalar losses "loss_defcn_cls", "loss_defcn_box" (see :meth:`losses`) and, with
            the auxiliary loss, "loss_defcn_aux" (see :meth:`aux_loss`).

        Other arguments and errors: :meth:`AnchorFreeDetector.forward_training`.
        """
        check_gt_instances(gt_instances, self.num_classes)
        shifts = self.shift_generator(features)
        points = torch.cat(shifts)
        logits = self.final_logits(predictions)  # [N, R, K]
        ltrb = flatten_levels(predictions.ltrb, 4)  # [N, R, 4] pixels
        pred_boxes = ltrb_to_boxes(points[None], ltrb.detach())
        matched = self.assign_batch(self.assigner, shifts, gt_instances, logits, pred_boxes)
        losses = self.losses(points, gt_instances, matched, logits, ltrb)
        if self.aux_assigner is not None:
            aux_matched = self.assign_batch(self.aux_assigner, shifts, gt_instances, logits, pred_boxes)
            aux_logits = flatten_levels(predictions.aux_logits, self.num_classes)
            losses["loss_defcn_aux"] = self.loss_weights[2] * self.aux_loss(gt_instances, aux_matched, aux_logits)
        return losses

    def losses(self, points, gt_instances, matched, logits, ltrb) -> Dict[str, torch.Tensor]:
        """
        Args:
            points: [R, 2] pixels. gt_instances: N Instances. matched: [N, R] long (POTO).
            logits: [N, R, K] final-score logits. ltrb: [N, R, 4] pixels.

        Returns:
            dict with "loss_defcn_cls" (focal, Lin et al. 2017 Eq. 5) and "loss_defcn_box"
            (IoU-family loss), both divided by max(1, positives averaged over workers).
        """
        targets = gather_positive_targets(gt_instances, matched, self.num_classes)
        pos = targets.pos
        gt_ltrb = boxes_to_ltrb(points[targets.pos_point], targets.gt_boxes)  # [P, 4] pixels
        num_pos_local = pos.sum().item()
        num_pos = loss_normalizer(pos.sum().float(), 1.0)
        put_scalar("defcn/num_pos_per_gt", num_pos_local / max(1, sum(len(g) for g in gt_instances)))
        loss_cls = focal_loss_with_labels(
            logits.flatten(0, 1), targets.labels.flatten(), targets.valid.flatten(),
            self.focal_alpha, self.focal_gamma,
        ) / num_pos
        loss_box = iou_loss(ltrb_as_boxes(ltrb[pos]), ltrb_as_boxes(gt_ltrb), self.box_loss_type) / num_pos
        # Keep the box branch in the graph when there is no positive (e.g. images with no objects).
        loss_box = loss_box + 0.0 * ltrb.sum()
        w_cls, w_box, _ = self.loss_weights
        return {"loss_defcn_cls": w_cls * loss_cls, "loss_defcn_box": w_box * loss_box}

    def aux_loss(self, gt_instances, aux_matched, aux_logits) -> torch.Tensor:
        """Auxiliary focal loss (DeFCN Sec. 3.4) on one-to-many labels.

        Args:
            aux_matched: [N, R] long. aux_logits: [N, R, K].

        Returns:
            scalar: summed focal loss / max(1, aux positives averaged over workers).
        """
        targets = gather_positive_targets(gt_instances, aux_matched, self.num_classes)
        num_pos = loss_normalizer(targets.pos.sum().float(), 1.0)
        put_scalar("defcn/num_aux_pos_per_gt",
                   targets.pos.sum().item() / max(1, sum(len(g) for g in gt_instances)))
        return focal_loss_with_labels(
            aux_logits.flatten(0, 1), targets.labels.flatten(), targets.valid.flatten(),
            self.focal_alpha, self.focal_gamma,
        ) / num_pos

    @property
    def inference_nms_thresh(self) -> Optional[float]:
        """``None`` (NMS-free: top ``TEST.DETECTIONS_PER_IMAGE`` over all levels and classes,
        DeFCN Sec. 3) when ``nms_free``, else ``MODEL.FCOS.NMS_THRESH_TEST``."""
        return None if self.nms_free else self.test_nms_thresh

    def per_image_scores_and_ltrb(self, predictions: DeFCNOutputs, i: int):
        """DeFCN scores of image ``i``: sigmoid(cls) * sigmoid(filter) (Sec. 3.3), or sigmoid(cls)
        without 3DMF.

        Args:
            predictions: :class:`DeFCNOutputs`, per level logits [N, K, H_l, W_l], ltrb
                [N, 4, H_l, W_l] pixels, filters [N, 1, H_l, W_l] (or none).
            i: image index.

        Returns:
            per level scores [R_l, K] in [0, 1] (also what SCORE_THRESH_TEST thresholds),
            ltrb [R_l, 4] pixels, and ``None`` for the candidate scores.
        """
        scores = [torch.sigmoid(permute(l[i], self.num_classes)) for l in predictions.logits]
        if predictions.filters:
            scores = [s * torch.sigmoid(permute(f[i], 1)) for s, f in zip(scores, predictions.filters)]
        return scores, [permute(d[i], 4) for d in predictions.ltrb], None

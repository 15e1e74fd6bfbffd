"""The IoU-family box regression losses (IoU itself is ``geometry.paired_iou``)."""
from typing import Optional

import torch
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss

from ..geometry import paired_intersection_union, paired_iou
from .reduction import reduce_loss

IOU_LOSS_TYPES = ("iou", "linear_iou", "giou", "diou", "ciou")


def check_iou_loss_type(loss_type: str, key: str = "BOX_LOSS_TYPE") -> str:
    """Return ``loss_type`` if it is one of :data:`IOU_LOSS_TYPES` (see :func:`iou_loss`).

    Raises:
        ValueError: another value, naming the config ``key``.
    """
    if loss_type not in IOU_LOSS_TYPES:
        raise ValueError(f"{key} must be one of {'/'.join(IOU_LOSS_TYPES)}, got {loss_type!r}")
    return loss_type


def iou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    loss_type: str = "iou",
    weight: Optional[torch.Tensor] = None,
    reduction: str = "sum",
) -> torch.Tensor:
    """IoU-family loss between paired boxes.

    ``loss_type``:
      * "iou": -log((I + 1) / (U + 1)), I and U the intersection and union areas in pixels^2:
        the IoU loss of UnitBox (Yu et al. 2016) as the FCOS authors compute it
        (tianzhi0549/FCOS ``fcos_core/layers/iou_loss.py`` lines 36-39; AdelaiDet
        ``adet/utils/comm.py`` ``compute_ious`` line 100 with ``adet/layers/iou_loss.py``).
        The +1 keeps the loss finite and its gradient non-zero at IoU = 0 (e.g. disjoint boxes,
        where it shrinks the union), where -log(max(IoU, eps)) (MMDetection's ``IoULoss``,
        ``mmdet/models/losses/iou_loss.py``) has none. The +1 is an area in pixels^2 here
        (``BoxLoss`` always passes pixels): the authors' loss for the FCOS paper config, which
        regresses pixels. With normalized targets (``NORM_REG_TARGETS``, AdelaiDet's and the FCOS
        "imprv" code) the authors divide the distances by the stride first, so their +1 is in
        stride^2 units: not reproduced (our imprv configs use GIoU).
        Intersections are clamped at 0 (the authors' ltrb formula never needs it: their boxes
        share a point inside both).
      * "linear_iou": 1 - IoU; "giou": 1 - GIoU (Rezatofighi et al., CVPR 2019), IoU and GIoU
        from ``geometry.paired_iou`` (no +1).
      * "diou": 1 - IoU + d^2 / c^2 (d the distance between the centres, c the diagonal of the
        smallest enclosing box); "ciou": DIoU + alpha * v, v = 4 / pi^2 (atan(w_gt / h_gt) -
        atan(w / h))^2, alpha = v / (1 - IoU + v) without gradient (Zheng et al., AAAI 2020,
        Eq. 6-11; the box loss of YOLOv8 and YOLO11). Computed by torchvision's
        ``distance_box_iou_loss`` / ``complete_box_iou_loss`` (eps 1e-7).

    Args:
        pred, target: [R, 4] boxes (x0, y0, x1, y1) in pixels, or (l, t, r, b) distances (pixels)
            from the same point passed through ``geometry.ltrb_as_boxes`` (IoU, I and U are the
            same either way).
        loss_type: "iou", "linear_iou", "giou", "diou" or "ciou" (above).
        weight: optional [R] per-box weights (e.g. centerness targets in FCOS).
        reduction: "sum", "mean" or "none".

    Returns:
        Tensor float32: scalar (sum/mean) or [R] ("none"); >= 0.

    Raises:
        ValueError: unknown ``loss_type`` or ``reduction``, or shapes that differ.
    """
    if loss_type == "iou":
        inter, union = paired_intersection_union(pred, target)
        loss = -torch.log((inter + 1.0) / (union + 1.0))
    elif loss_type == "linear_iou":
        loss = 1.0 - paired_iou(pred, target)
    elif loss_type == "giou":
        loss = 1.0 - paired_iou(pred, target, giou=True)
    elif loss_type in ("diou", "ciou"):
        if pred.shape != target.shape:
            raise ValueError(f"iou_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} must be the same shape")
        torchvision_loss = complete_box_iou_loss if loss_type == "ciou" else distance_box_iou_loss
        loss = torchvision_loss(pred.float(), target.float(), reduction="none")
    else:
        check_iou_loss_type(loss_type)  # raises
    if weight is not None:
        loss = loss * weight
    return reduce_loss(loss, reduction)

"""The IoU-family box regression losses (IoU itself is ``geometry.paired_iou``)."""
from typing import Optional

import torch

from ..geometry import IOU_EPS, paired_iou
from .reduction import reduce_loss

IOU_LOSS_TYPES = ("iou", "linear_iou", "giou")


def check_iou_loss_type(loss_type: str, key: str = "BOX_LOSS_TYPE") -> str:
    """Return ``loss_type`` if it is one of :data:`IOU_LOSS_TYPES` (see :func:`iou_loss`).

    Raises:
        ValueError: another value, naming the config ``key``.
    """
    if loss_type not in IOU_LOSS_TYPES:
        raise ValueError(f"{key} must be iou/linear_iou/giou, got {loss_type!r}")
    return loss_type


def iou_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    loss_type: str = "iou",
    weight: Optional[torch.Tensor] = None,
    reduction: str = "sum",
) -> torch.Tensor:
    """IoU-family loss between paired boxes.

    Args:
        pred, target: [R, 4] boxes (x0, y0, x1, y1), or (l, t, r, b) distances from the same
            point passed through ``geometry.ltrb_as_boxes`` (IoU is the same either way).
        loss_type: "iou" = -log(IoU) (UnitBox, Yu et al. 2016, used by the FCOS paper),
            "linear_iou" = 1 - IoU, "giou" = 1 - GIoU (Rezatofighi et al., CVPR 2019).
        weight: optional [R] per-box weights (e.g. centerness targets in FCOS).
        reduction: "sum", "mean" or "none".

    Returns:
        Tensor: scalar (sum/mean) or [R] ("none").

    Raises:
        ValueError: unknown ``loss_type`` or ``reduction``.
    """
    if loss_type == "iou":
        loss = -torch.log(paired_iou(pred, target).clamp(min=IOU_EPS))
    elif loss_type == "linear_iou":
        loss = 1.0 - paired_iou(pred, target)
    elif loss_type == "giou":
        loss = 1.0 - paired_iou(pred, target, giou=True)
    else:
        check_iou_loss_type(loss_type)  # raises
    if weight is not None:
        loss = loss * weight
    return reduce_loss(loss, reduction)

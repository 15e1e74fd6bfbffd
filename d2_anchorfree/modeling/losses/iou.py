"""Paired IoU / GIoU between boxes and the IoU-family box regression losses."""
from typing import Optional

import torch

from .reduction import reduce_loss

_EPS = 1e-7
IOU_LOSS_TYPES = ("iou", "linear_iou", "giou")


def check_iou_loss_type(loss_type: str, key: str = "BOX_LOSS_TYPE") -> str:
    """Return ``loss_type`` if it is one of :data:`IOU_LOSS_TYPES` (see :func:`iou_loss`).

    Raises:
        ValueError: another value, naming the config ``key``.
    """
    if loss_type not in IOU_LOSS_TYPES:
        raise ValueError(f"{key} must be iou/linear_iou/giou, got {loss_type!r}")
    return loss_type


def paired_iou(boxes1: torch.Tensor, boxes2: torch.Tensor, giou: bool = False) -> torch.Tensor:
    """IoU (or GIoU) of ``boxes1[i]`` with ``boxes2[i]``.

    Args:
        boxes1, boxes2: [..., 4] boxes (x0, y0, x1, y1) in pixels, same shape.
        giou: return the generalized IoU (Rezatofighi et al., CVPR 2019, Alg. 1) instead.

    Returns:
        Tensor [...] float32: IoU in [0, 1], or GIoU in [-1, 1]. Degenerate (zero-area) pairs give
        0 IoU (an epsilon keeps the division finite and the gradient defined). Computed in float32
        whatever the input dtype: areas overflow float16 above 65504 px^2 (under AMP).

    Raises:
        ValueError: if the two inputs have different shapes (no silent broadcasting).
    """
    if boxes1.shape != boxes2.shape:
        raise ValueError(f"paired_iou needs equal shapes, got {tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
    boxes1, boxes2 = boxes1.float(), boxes2.float()
    lt = torch.max(boxes1[..., :2], boxes2[..., :2])
    rb = torch.min(boxes1[..., 2:], boxes2[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=-1)
    area1 = (boxes1[..., 2:] - boxes1[..., :2]).clamp(min=0).prod(dim=-1)
    area2 = (boxes2[..., 2:] - boxes2[..., :2]).clamp(min=0).prod(dim=-1)
    union = area1 + area2 - inter
    iou = inter / (union + _EPS)
    if not giou:
        return iou
    enclose = (torch.max(boxes1[..., 2:], boxes2[..., 2:]) - torch.min(boxes1[..., :2], boxes2[..., :2]))
    enclose_area = enclose.clamp(min=0).prod(dim=-1)
    return iou - (enclose_area - union) / (enclose_area + _EPS)


def ltrb_as_boxes(ltrb: torch.Tensor) -> torch.Tensor:
    """(l, t, r, b) distances -> the box (-l, -t, r, b) around the origin; IoU is unchanged."""
    return torch.cat([-ltrb[..., :2], ltrb[..., 2:]], dim=-1)


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
            point passed through :func:`ltrb_as_boxes` (IoU is the same either way).
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
        loss = -torch.log(paired_iou(pred, target).clamp(min=_EPS))
    elif loss_type == "linear_iou":
        loss = 1.0 - paired_iou(pred, target)
    elif loss_type == "giou":
        loss = 1.0 - paired_iou(pred, target, giou=True)
    else:
        check_iou_loss_type(loss_type)  # raises
    if weight is not None:
        loss = loss * weight
    return reduce_loss(loss, reduction)

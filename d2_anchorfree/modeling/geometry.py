"""Point and box geometry of the dense detectors, in one place: used by the shift generator's
consumers, the assigners, the losses and inference alike.

Conventions (pixels of the network input throughout):
  * points [R, 2] (x, y); boxes XYXY (x0, y0, x1, y1);
  * ltrb: distances (l, t, r, b) from a point to the four sides of a box (FCOS paper, Eq. 1),
    positive iff the point lies strictly inside the box;
  * point-versus-box tests return [R, g] tensors computed per coordinate, never an [R, g, 4]
    copy (the assigners' memory bound); "inside" is strict, as in FCOS (min(l, t, r, b) > 0).
"""
from typing import List, NamedTuple, Tuple

import torch

from detectron2.layers.wrappers import shapes_to_tensor

# Keeps IoU divisions finite for degenerate boxes.
IOU_EPS = 1e-7


def cat_points(shifts: List[torch.Tensor], strides: List[int], per_level_values=None):
    """Concatenate per-level points and broadcast per-level scalars to per-point vectors.

    Args:
        shifts: per level [R_i, 2] points (x, y) in pixels.
        strides: per level stride in pixels.
        per_level_values: optional list of per-level tuples of floats to broadcast as well.

    Returns:
        points [R, 2], strides [R] (float), and one [R] tensor per element of the tuples.
    """
    points = torch.cat(shifts, dim=0)
    counts = [len(s) for s in shifts]
    device = points.device
    stride_vec = torch.repeat_interleave(
        torch.tensor(strides, dtype=points.dtype, device=device), torch.tensor(counts, device=device)
    )
    extra = []
    if per_level_values is not None:
        for column in zip(*per_level_values):
            extra.append(
                torch.repeat_interleave(
                    torch.tensor(column, dtype=points.dtype, device=device),
                    torch.tensor(counts, device=device),
                )
            )
    return (points, stride_vec, *extra)


class Points(NamedTuple):
    """The points (shifts) of a training step, computed once from the features and passed as one
    structure to the criterion: per level and concatenated.

    per_level: per level l [R_l, 2] (x, y) pixels of the network input, finest level first
        (the shift generator's output; assigners take this list).
    strides: per level stride in pixels (e.g. [8, 16, 32, 64, 128]).
    points: [R, 2] pixels, the levels concatenated (R = sum_l R_l, the order of the head's
        flattened outputs).
    point_strides: [R] float, the stride in pixels of each point.
    """

    per_level: List[torch.Tensor]
    strides: List[int]
    points: torch.Tensor
    point_strides: torch.Tensor

    @classmethod
    def from_levels(cls, per_level: List[torch.Tensor], strides: List[int]) -> "Points":
        """Concatenate ``per_level`` ([R_l, 2] pixels) with one stride per level (:func:`cat_points`)."""
        points, point_strides = cat_points(per_level, strides)
        return cls(list(per_level), list(strides), points, point_strides)

    @property
    def level_sizes(self) -> List[int]:
        """R_l, the number of points of each level."""
        return [len(p) for p in self.per_level]


def boxes_to_ltrb(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Distances from points to the four sides of boxes.

    Args:
        points: [R, 2] (x, y) in pixels.
        boxes: [R, 4] (x0, y0, x1, y1) in pixels, paired row by row with ``points``.

    Returns:
        Tensor [R, 4]: (l, t, r, b) = (x - x0, y - y0, x1 - x, y1 - y) in pixels; all positive
        iff the point is strictly inside its box. (FCOS paper, Eq. 1.)
    """
    return torch.cat([points - boxes[:, :2], boxes[:, 2:] - points], dim=1)


def ltrb_to_boxes(points: torch.Tensor, ltrb: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`boxes_to_ltrb`.

    Args:
        points: [R, 2] (x, y) pixels (broadcastable to ``ltrb[..., :2]``).
        ltrb: [R, 4] distances in pixels (non-negative for a valid box).

    Returns:
        Tensor [R, 4]: (x - l, y - t, x + r, y + b) in pixels.
    """
    return torch.cat([points - ltrb[..., :2], points + ltrb[..., 2:]], dim=-1)


def clip_boxes_to_image(boxes: torch.Tensor, image_size: Tuple) -> torch.Tensor:
    """Clip XYXY boxes to the image: x to [0, width], y to [0, height] (detectron2's
    ``Boxes.clip``, without its data-dependent finiteness assert, so that it traces for any
    input size; a NaN coordinate stays NaN and :func:`nonempty_boxes` drops the box).

    Args:
        boxes: [D, 4] (x0, y0, x1, y1) in pixels.
        image_size: (height, width) in pixels: ints eagerly, 0-dim tensors (traced sizes) while
            tracing (``shapes_to_tensor`` refuses ints then).

    Returns:
        Tensor [D, 4], a new tensor.
    """
    height, width = image_size[0], image_size[1]  # indexing, not unpacking: traces for a tensor
    limits = shapes_to_tensor([width, height, width, height], device=boxes.device).to(boxes.dtype)
    return torch.minimum(boxes.clamp(min=0), limits)


def nonempty_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """[D] bool: width > 0 and height > 0 (detectron2's ``Boxes.nonempty`` with threshold 0).

    Args:
        boxes: [D, 4] (x0, y0, x1, y1) in pixels.
    """
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def ltrb_as_boxes(ltrb: torch.Tensor) -> torch.Tensor:
    """(l, t, r, b) distances -> the box (-l, -t, r, b) around the origin; IoU is unchanged."""
    return torch.cat([-ltrb[..., :2], ltrb[..., 2:]], dim=-1)


def paired_intersection_union(boxes1: torch.Tensor, boxes2: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Intersection and union areas of ``boxes1[i]`` and ``boxes2[i]``.

    Args:
        boxes1, boxes2: [..., 4] boxes (x0, y0, x1, y1) in pixels, same shape.

    Returns:
        (intersection [...], union [...]) float32, pixels^2, >= 0 (a degenerate box has area 0).
        Computed in float32 whatever the input dtype: areas overflow float16 above 65504 px^2.

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
    return inter, area1 + area2 - inter


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
    inter, union = paired_intersection_union(boxes1, boxes2)
    boxes1, boxes2 = boxes1.float(), boxes2.float()
    iou = inter / (union + IOU_EPS)
    if not giou:
        return iou
    enclose = (torch.max(boxes1[..., 2:], boxes2[..., 2:]) - torch.min(boxes1[..., :2], boxes2[..., :2]))
    enclose_area = enclose.clamp(min=0).prod(dim=-1)
    return iou - (enclose_area - union) / (enclose_area + IOU_EPS)


def inside_boxes(points: torch.Tensor, boxes: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """[R, g] bool: point strictly inside box by more than ``margin`` pixels on every side,
    i.e. ``point_box_distances(points, boxes).min(-1) > margin``.

    Args:
        points: [R, 2] (x, y) pixels. boxes: [g, 4] XYXY pixels.
        margin: pixels; 0 (default) is the FCOS rule min(l, t, r, b) > 0 (Sec. 3.1), 0.01 the
            ATSS authors' code (``atss_loss.py``: ``is_in_gts = ... .min(dim=1)[0] > 0.01``).
    """
    x, y = points[:, 0:1], points[:, 1:2]
    if margin == 0:
        return (x > boxes[:, 0]) & (x < boxes[:, 2]) & (y > boxes[:, 1]) & (y < boxes[:, 3])
    return ((x - boxes[:, 0] > margin) & (y - boxes[:, 1] > margin)
            & (boxes[:, 2] - x > margin) & (boxes[:, 3] - y > margin))


def max_distance(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """[R, g] max(l, t, r, b) in pixels (FCOS Sec. 3.2 regress-range test; sides outside the box
    count as negative distances, as in ``point_box_distances``)."""
    x, y = points[:, 0:1], points[:, 1:2]
    return torch.max(torch.max(x - boxes[:, 0], y - boxes[:, 1]), torch.max(boxes[:, 2] - x, boxes[:, 3] - y))


def inside_center_regions(points: torch.Tensor, point_strides: torch.Tensor, boxes: torch.Tensor,
                          radius: float) -> torch.Tensor:
    """[R, g] bool: point strictly inside ``center_region(boxes, point_strides, radius)``,
    computed per coordinate without the [R, g, 4] region tensor."""
    x, y = points[:, 0:1], points[:, 1:2]
    half = (point_strides * radius)[:, None]  # [R, 1]
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    cy = (boxes[:, 1] + boxes[:, 3]) / 2
    return ((x > torch.max(cx - half, boxes[:, 0])) & (x < torch.min(cx + half, boxes[:, 2]))
            & (y > torch.max(cy - half, boxes[:, 1])) & (y < torch.min(cy + half, boxes[:, 3])))


def pairwise_iou(pred_boxes: torch.Tensor, gt_boxes: torch.Tensor) -> torch.Tensor:
    """IoU of every predicted box with every GT box.

    Args:
        pred_boxes: [R, 4] XYXY pixels. gt_boxes: [g, 4] XYXY pixels.

    Returns:
        Tensor [R, g] float32 in [0, 1]; the formula of :func:`paired_iou` (inter / (union + 1e-7),
        zero-area boxes give 0), computed per coordinate so that no temporary exceeds R * g
        elements. Elementwise, so the value of a pair does not depend on the other boxes (chunking
        the GTs changes nothing).
    """
    p, b = pred_boxes.float(), gt_boxes.float()
    iw = (torch.min(p[:, 2:3], b[:, 2]) - torch.max(p[:, 0:1], b[:, 0])).clamp(min=0)
    ih = (torch.min(p[:, 3:4], b[:, 3]) - torch.max(p[:, 1:2], b[:, 1])).clamp(min=0)
    inter = iw * ih
    area_p = (p[:, 2:3] - p[:, 0:1]).clamp(min=0) * (p[:, 3:4] - p[:, 1:2]).clamp(min=0)  # [R, 1]
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)  # [g]
    return inter / (area_p + area_b - inter + IOU_EPS)

"""Point-versus-box geometry shared by the assigners, on [R, g] tensors (no [R, g, 4] copies).

Conventions: points [R, 2] (x, y) and boxes [g, 4] (x0, y0, x1, y1), both in pixels; results are
[R, g]. "Inside" is strict (a point on a box side is outside), as in FCOS (min(l, t, r, b) > 0).
"""
import torch


def point_box_distances(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """(l, t, r, b) from every point to every box (FCOS paper, Eq. 1).

    Args:
        points: [R, 2] pixels. boxes: [g, 4] or [R, g, 4] XYXY pixels.

    Returns:
        Tensor [R, g, 4] in pixels; all > 0 iff the point is strictly inside the box. Memory
        R * g * 4 floats: callers chunk g (the assigners use the [R, g] helpers below instead).
    """
    p = points[:, None, :]
    return torch.cat([p - boxes[..., :2], boxes[..., 2:] - p], dim=-1)


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


def center_region(gt_boxes: torch.Tensor, point_strides: torch.Tensor, radius: float) -> torch.Tensor:
    """Center-sampling region of each GT as seen from each point's level (FCOS "imprv").

    Args:
        gt_boxes: [G, 4] XYXY pixels. point_strides: [R] stride (pixels) of each point's level.
        radius: half-size of the region in stride units (> 0).

    Returns:
        Tensor [R, G, 4]: (cx - r s, cy - r s, cx + r s, cy + r s) clipped to the GT box.
    """
    centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # [G, 2]
    half = (point_strides * radius)[:, None, None]  # [R, 1, 1]
    lo = torch.max(centers[None] - half, gt_boxes[None, :, :2])
    hi = torch.min(centers[None] + half, gt_boxes[None, :, 2:])
    return torch.cat([lo, hi], dim=2)


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

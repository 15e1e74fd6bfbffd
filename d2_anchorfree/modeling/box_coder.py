"""Box encoding for anchor-free detectors: distances (l, t, r, b) from a point to box sides."""
import torch


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

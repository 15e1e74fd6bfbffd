"""A straightforward, fully dense FCOS target assignment: the reference that benchmarks/detectors.py
times against the library's chunked ``FCOSAssigner`` (and that tests/tools/test_benchmark_baseline.py
checks for identical labels).

It follows the usual way FCOS implementations label locations (e.g. the authors' code,
``compute_targets_for_locations``): every (point, GT) pair is materialized at once as
[R x G x 4] distance tensors. This is deliberately *not* in the library: with R ~ 22k points
(800x1333 input, strides 8..128) and G = 1000 boxes one such float tensor is ~350 MB, and the
function allocates several. Kept free of library imports so that it is an independent check.

Rules (Tian et al., "FCOS", ICCV 2019, Sec. 3.1-3.2, plus the "center sampling" of the authors'
code), identical to ``d2_anchorfree.modeling.assigners.FCOSAssigner``:
  * point p of level l (stride s_l) is a candidate for GT g when it is strictly inside g (or,
    with radius r > 0, strictly inside g's center box of half-size r * s_l clipped to g), its
    max(l*, t*, r*, b*) to g lies in [lo_l, hi_l] (pixels, both inclusive) and g is not crowd;
  * among candidates the GT of minimal area wins (ties: lowest GT index);
  * non-positive points strictly inside a crowd box are IGNORE (-2), the rest BACKGROUND (-1).
"""
import math
from typing import List, Optional, Sequence

import torch

BACKGROUND = -1
IGNORE = -2


def dense_fcos_assign(
    shifts: List[torch.Tensor],
    gt_boxes: torch.Tensor,
    strides: Sequence[int],
    sizes_of_interest: Sequence[float],
    center_sampling_radius: float = 0.0,
    gt_is_crowd: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """FCOS labels of every point, computed on dense [R, G, 4] tensors.

    Args:
        shifts: per level [R_i, 2] points (x, y) in pixels.
        gt_boxes: [G, 4] (x0, y0, x1, y1) pixels.
        strides: per level stride in pixels (len(shifts) values).
        sizes_of_interest: the L - 1 increasing regress range boundaries in pixels; level i
            covers [b_{i-1}, b_i] with b_{-1} = 0 and b_{L-1} = +inf.
        center_sampling_radius: in stride units; 0 disables center sampling.
        gt_is_crowd: optional [G] bool.

    Returns:
        Tensor [R] long: GT index, BACKGROUND (-1) or IGNORE (-2).

    Raises:
        ValueError: len(strides) != len(shifts) or a wrong number of boundaries.

    Memory: O(R * G) (several [R, G, 4] float tensors), by design.
    """
    if len(strides) != len(shifts) or len(sizes_of_interest) != len(shifts) - 1:
        raise ValueError(
            f"need one stride per level and L-1 boundaries: {len(shifts)} levels, strides {list(strides)}, "
            f"sizes_of_interest {list(sizes_of_interest)}"
        )
    points = torch.cat(shifts)
    num_points = len(points)
    bounds = [0.0] + [float(s) for s in sizes_of_interest] + [math.inf]
    counts = torch.tensor([len(s) for s in shifts])
    stride_of = torch.repeat_interleave(torch.tensor([float(s) for s in strides]), counts).to(points)
    lo = torch.repeat_interleave(torch.tensor(bounds[:-1]), counts).to(points)
    hi = torch.repeat_interleave(torch.tensor(bounds[1:]), counts).to(points)
    matched = torch.full((num_points,), BACKGROUND, dtype=torch.long, device=points.device)
    boxes = gt_boxes.to(points.dtype)
    if len(boxes) == 0:
        return matched
    crowd = (gt_is_crowd.bool() if gt_is_crowd is not None
             else torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device))

    xy = points[:, None, :]  # [R, 1, 2]
    reg = torch.cat([xy - boxes[None, :, :2], boxes[None, :, 2:] - xy], dim=2)  # [R, G, 4]
    inside_box = reg.min(dim=2).values > 0  # [R, G]
    if center_sampling_radius > 0:
        centers = (boxes[:, :2] + boxes[:, 2:]) / 2
        half = (stride_of * center_sampling_radius)[:, None, None]  # [R, 1, 1]
        c_lo = torch.max(centers[None] - half, boxes[None, :, :2])  # [R, G, 2]
        c_hi = torch.min(centers[None] + half, boxes[None, :, 2:])
        center_reg = torch.cat([xy - c_lo, c_hi - xy], dim=2)  # [R, G, 4]
        inside = center_reg.min(dim=2).values > 0
    else:
        inside = inside_box
    max_reg = reg.max(dim=2).values  # [R, G]
    in_range = (max_reg >= lo[:, None]) & (max_reg <= hi[:, None])
    areas = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].repeat(num_points, 1)
    areas[~inside] = math.inf
    areas[~in_range] = math.inf
    areas[:, crowd] = math.inf
    min_area, idx = areas.min(dim=1)  # first (lowest) index among equal minima
    matched = torch.where(min_area < math.inf, idx, matched)
    in_crowd = (inside_box & crowd[None]).any(dim=1)
    matched[(matched == BACKGROUND) & in_crowd] = IGNORE
    return matched

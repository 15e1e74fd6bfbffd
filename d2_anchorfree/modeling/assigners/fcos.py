"""FCOS target assignment: scale ranges, center sampling, minimal-area tie break.

Source: Tian et al., "FCOS: Fully Convolutional One-Stage Object Detection", ICCV 2019,
Sec. 3.1 (a location is positive if it falls in a GT box), Sec. 3.2 (level l only regresses
objects with max(l*, t*, r*, b*) in [m_{l-1}, m_l]; ambiguous locations take the GT of minimal
area) and the "center sampling" improvement of the authors' code (positives only within
radius * stride of the GT center).
"""
from typing import List

import torch

from detectron2.config import configurable
from detectron2.structures import Instances

from ..geometry import cat_points, inside_boxes, inside_center_regions, max_distance
from .base import ASSIGNER_REGISTRY, BACKGROUND, AssignResult, crowd_flags, gt_chunks, ignore_inside_crowd, level_ranges


@ASSIGNER_REGISTRY.register()
class FCOSAssigner:
    """Label every point with the GT it regresses, following the FCOS rules.

    A point of level l (stride s_l) is a candidate for GT g when
      1. it lies strictly inside g (or, with center sampling radius r > 0, strictly inside
         g's center region of half-size r * s_l, clipped to g), and
      2. max(l*, t*, r*, b*) to g's sides lies in level l's regress range [lo_l, hi_l]
         (both ends inclusive, pixels), and
      3. g is not a crowd box.
    Among candidates the GT of minimal area wins (ties: lowest GT index). Points that are not
    positive but lie inside a crowd box are IGNORE; all others BACKGROUND.

    Memory: GTs are processed in chunks so that no [points x chunk] tensor exceeds
    ``chunk_elements`` elements; the result is identical to the unchunked computation.
    """

    @configurable
    def __init__(self, *, strides: List[int], sizes_of_interest: List[float],
                 center_sampling_radius: float = 0.0, chunk_elements: int = 1 << 20):
        """
        Args:
            strides: per level stride in pixels.
            sizes_of_interest: the L-1 regress range boundaries in pixels.
            center_sampling_radius: in stride units; 0 disables center sampling.
            chunk_elements: memory bound, see class docstring.

        Raises:
            ValueError: bad ranges or a negative radius.
        """
        if center_sampling_radius < 0:
            raise ValueError(
                f"MODEL.DENSE.CENTER_SAMPLING_RADIUS must be >= 0, got {center_sampling_radius}"
            )
        self.strides = list(strides)
        self.ranges = level_ranges(sizes_of_interest, len(strides))
        self.radius = float(center_sampling_radius)
        self.chunk_elements = int(chunk_elements)

    @classmethod
    def from_config(cls, cfg, strides):
        return {
            "strides": strides,
            "sizes_of_interest": cfg.MODEL.DENSE.SIZES_OF_INTEREST,
            "center_sampling_radius": cfg.MODEL.DENSE.CENTER_SAMPLING_RADIUS,
            "chunk_elements": cfg.MODEL.DENSE.ASSIGN_CHUNK_ELEMENTS,
        }

    @torch.no_grad()
    def __call__(self, shifts: List[torch.Tensor], gt: Instances, pred_scores=None,
                 pred_boxes=None) -> AssignResult:
        """
        Args:
            shifts: per level [R_i, 2] points (x, y) in pixels.
            gt: one image's ``Instances`` with ``gt_boxes`` (XYXY pixels) and optionally
                ``gt_is_crowd`` ([G] bool).
            pred_scores, pred_boxes: the detached predictions every assigner receives (unused).

        Returns:
            :class:`AssignResult`: ``matched`` [R] long, R = sum R_i (GT index, BACKGROUND (-1) or
            IGNORE (-2)); no soft target.
        """
        points, point_strides, lo, hi = cat_points(shifts, self.strides, self.ranges)
        num_points = points.shape[0]
        matched = torch.full((num_points,), BACKGROUND, dtype=torch.long, device=points.device)
        boxes = gt.gt_boxes.tensor.to(points.dtype)
        if len(boxes) == 0:
            return AssignResult(matched)
        crowd = crowd_flags(gt)
        areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        best_area = torch.full((num_points,), float("inf"), dtype=points.dtype, device=points.device)
        lo, hi = lo[:, None], hi[:, None]
        for start, end in gt_chunks(num_points, len(boxes), self.chunk_elements):
            b = boxes[start:end]
            if self.radius > 0:
                inside = inside_center_regions(points, point_strides, b, self.radius)
            else:
                inside = inside_boxes(points, b)  # [R, g]
            max_reg = max_distance(points, b)
            ok = inside & (max_reg >= lo) & (max_reg <= hi) & ~crowd[None, start:end]
            cand_area = torch.where(ok, areas[None, start:end], torch.full_like(max_reg, float("inf")))
            chunk_area, chunk_idx = cand_area.min(dim=1)
            better = chunk_area < best_area  # strict: an earlier chunk wins ties
            best_area = torch.where(better, chunk_area, best_area)
            matched = torch.where(better, chunk_idx + start, matched)
        return AssignResult(ignore_inside_crowd(matched, points, boxes, crowd, self.chunk_elements))


def centerness_targets(ltrb: torch.Tensor) -> torch.Tensor:
    """FCOS centerness target, Eq. 3: sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)).

    Args:
        ltrb: [R, 4] distances (any unit) from each point to its box; negative ones (a point
            outside its box, e.g. a POTO positive outside its GT's prior) count as 0.

    Returns:
        Tensor [R] in [0, 1]; 1 at the box center, 0 on or outside the box's border (without the
        clamp, a point beyond two sides, e.g. l < 0 and t < 0, would get a positive target).
    """
    ltrb = ltrb.clamp(min=0)
    lr = ltrb[:, [0, 2]]
    tb = ltrb[:, [1, 3]]
    ratio = (lr.min(dim=1).values / lr.max(dim=1).values) * (tb.min(dim=1).values / tb.max(dim=1).values)
    return torch.sqrt(ratio.clamp(min=0))

"""ATSS target assignment: adaptive IoU threshold over the points closest to each GT center.

Source: Zhang et al., "Bridging the Gap Between Anchor-based and Anchor-free Detection via
Adaptive Training Sample Selection", CVPR 2020, Sec. 3.3 and Algorithm 1, with the details of
the authors' code (sfzhang15/ATSS, ``atss_loss.py``): unbiased standard deviation, "inside" test
``min(l, t, r, b) > 0.01`` and highest-IoU tie break between GTs.
"""
from typing import List, Tuple

import torch

from detectron2.config import configurable
from detectron2.structures import Instances

from ..geometry import cat_points, inside_boxes, paired_iou
from .base import ASSIGNER_REGISTRY, BACKGROUND, AssignResult, crowd_flags, gt_chunks, ignore_inside_crowd

# A candidate's point must be farther than this (pixels) from every side of its GT (authors' code).
INSIDE_EPS = 0.01


def squared_center_distances(points: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Squared L2 distance from every GT center to every point.

    Args:
        points: [R, 2] (x, y) pixels. centers: [G, 2] (x, y) pixels.

    Returns:
        Tensor [G, R] in pixels^2. Computed per coordinate so that no temporary is larger than
        G * R elements (the assigner's memory bound).
    """
    dx = points[None, :, 0] - centers[:, None, 0]
    dy = points[None, :, 1] - centers[:, None, 1]
    return dx * dx + dy * dy


def closest_points_per_level(shifts: List[torch.Tensor], centers: torch.Tensor, topk: int) -> torch.Tensor:
    """ATSS Alg. 1, lines 3-6: on every level, the ``topk`` points closest to each GT center.

    Args:
        shifts: per level [R_i, 2] points (x, y) in pixels.
        centers: [G, 2] GT centers (x, y) in pixels.
        topk: k >= 1; a level with fewer than k points contributes all of them.

    Returns:
        Tensor [G, C] long, C = sum_i min(k, R_i): indices into the concatenated points, level
        by level. Equal distances are ordered by ``torch.topk`` (as in the authors' code), which
        depends only on the row, so splitting the GTs into chunks gives the same candidates.
    """
    candidates = []
    start = 0
    for points in shifts:
        k = min(topk, len(points))
        if k > 0:
            dist = squared_center_distances(points, centers)
            candidates.append(dist.topk(k, dim=1, largest=False).indices + start)
        start += len(points)
    if not candidates:
        return torch.zeros((len(centers), 0), dtype=torch.long, device=centers.device)
    return torch.cat(candidates, dim=1)


def adaptive_iou_threshold(candidate_ious: torch.Tensor) -> torch.Tensor:
    """ATSS Alg. 1, lines 8-10: t_g = mean_g + std_g of the candidates' IoUs.

    Args:
        candidate_ious: [G, C] IoUs in [0, 1].

    Returns:
        Tensor [G]: the threshold. The std is the unbiased one (divides by C - 1; ``torch.std``
        default, as in the authors' code); with a single candidate (C == 1) the std is 0.
    """
    mean = candidate_ious.mean(dim=1)
    if candidate_ious.shape[1] < 2:
        return mean
    return mean + candidate_ious.std(dim=1)


def atss_positives(
    shifts: List[torch.Tensor],
    point_strides: torch.Tensor,
    boxes: torch.Tensor,
    topk: int,
    anchor_scale: float,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Candidates, their IoUs, the thresholds and the positive mask for a set of GTs.

    The IoU is computed for the ``C`` candidates only: a candidate point (x, y) of stride s stands
    for the square anchor of side ``anchor_scale * s`` centered on it (ATSS paper, Sec. 4: one
    8S anchor per location).

    Args:
        shifts: per level [R_i, 2] points (x, y) in pixels.
        point_strides: [R] stride (pixels) of each concatenated point.
        boxes: [G, 4] GT boxes (x0, y0, x1, y1) in pixels.
        topk: candidates per level per GT. anchor_scale: anchor side in strides.

    Returns:
        (candidates [G, C] long point indices, ious [G, C], thresholds [G], positive [G, C] bool):
        a candidate is positive iff IoU >= threshold and its point lies inside the GT by more
        than ``INSIDE_EPS`` pixels on all four sides (Alg. 1, lines 11-13).

    Memory: an [R, G] bool "inside" mask besides the [G, C] candidate tensors (the caller chunks
    the GTs).
    """
    points = torch.cat(shifts, dim=0)
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    candidates = closest_points_per_level(shifts, centers, topk)  # [G, C]
    cand_points = points[candidates]  # [G, C, 2]
    half = (anchor_scale * point_strides[candidates] / 2)[..., None]  # [G, C, 1]
    anchors = torch.cat([cand_points - half, cand_points + half], dim=-1)
    gt = boxes[:, None, :].expand_as(anchors)
    ious = paired_iou(anchors, gt)
    thresholds = adaptive_iou_threshold(ious)
    inside = inside_boxes(points, boxes, margin=INSIDE_EPS)  # [R, G]
    cand_inside = inside[candidates, torch.arange(len(boxes), device=boxes.device)[:, None]]  # [G, C]
    positive = (ious >= thresholds[:, None]) & cand_inside
    return candidates, ious, thresholds, positive


@ASSIGNER_REGISTRY.register()
class ATSSAssigner:
    """Adaptive Training Sample Selection (Zhang et al., CVPR 2020, Alg. 1) on points.

    For every non-crowd GT g:
      1. on each level, the ``topk`` points closest (L2) to g's center are candidates;
      2. each candidate stands for a square anchor of side ``anchor_scale * stride`` centered on
         the point; t_g = mean + unbiased std of the candidates' IoUs with g;
      3. candidates with IoU >= t_g whose point is inside g (``min(l,t,r,b) > 0.01`` px) are
         positive for g.
    A point positive for several GTs takes the one of highest IoU (ties: lowest GT index). Crowd
    GTs (``gt_is_crowd``) never produce positives; points that end up BACKGROUND but lie strictly
    inside a crowd box are IGNORE (as in :class:`FCOSAssigner`). No GT: all BACKGROUND.

    Memory: GTs are processed in chunks so that no [points x chunk] tensor exceeds
    ``chunk_elements`` elements; each GT's candidates depend on that GT only, so the result is
    identical to the unchunked computation. IoUs are computed for the candidates only
    ([chunk x topk*L]).
    """

    PROVIDES_QUALITY = True  # AssignResult.quality: the anchor IoU of each positive

    @configurable
    def __init__(self, *, strides: List[int], topk: int = 9, anchor_scale: float = 8.0,
                 chunk_elements: int = 1 << 20):
        """
        Args:
            strides: per level stride in pixels.
            topk: candidates per level per GT (paper: 9), >= 1.
            anchor_scale: anchor side in strides (paper: 8), > 0.
            chunk_elements: memory bound (elements), >= 1; see class docstring.

        Raises:
            ValueError: a non-positive ``topk``, ``anchor_scale`` or ``chunk_elements``.
        """
        if topk < 1:
            raise ValueError(f"MODEL.ATSS.TOPK must be >= 1, got {topk}")
        if anchor_scale <= 0:
            raise ValueError(f"MODEL.ATSS.ANCHOR_SCALE must be > 0, got {anchor_scale}")
        if chunk_elements < 1:
            raise ValueError(f"MODEL.DENSE.ASSIGN_CHUNK_ELEMENTS must be >= 1, got {chunk_elements}")
        self.strides = list(strides)
        self.topk = int(topk)
        self.anchor_scale = float(anchor_scale)
        self.chunk_elements = int(chunk_elements)

    @classmethod
    def from_config(cls, cfg, strides):
        return {
            "strides": strides,
            "topk": cfg.MODEL.ATSS.TOPK,
            "anchor_scale": cfg.MODEL.ATSS.ANCHOR_SCALE,
            "chunk_elements": cfg.MODEL.DENSE.ASSIGN_CHUNK_ELEMENTS,
        }

    @torch.no_grad()
    def __call__(self, shifts: List[torch.Tensor], gt: Instances, pred_scores=None,
                 pred_boxes=None) -> AssignResult:
        """
        Args:
            shifts: per level [R_i, 2] points (x, y) in pixels, one level per stride.
            gt: one image's ``Instances`` with ``gt_boxes`` (XYXY pixels) and optionally
                ``gt_is_crowd`` ([G] bool).

            pred_scores, pred_boxes: the detached predictions every assigner receives (unused).

        Returns:
            :class:`AssignResult`: ``matched`` [R] long, R = sum R_i (GT index, BACKGROUND (-1) or
            IGNORE (-2)) and ``quality`` [R], the IoU of each positive's anchor (8S square) with
            its GT, 0 elsewhere (TOOD's soft target in its ATSS warm-up).

        Raises:
            ValueError: if the number of levels differs from the number of strides.
        """
        if len(shifts) != len(self.strides):
            raise ValueError(f"ATSSAssigner got {len(shifts)} levels of points for strides {self.strides}")
        points = torch.cat(shifts, dim=0)
        num_points = len(points)
        matched = torch.full((num_points,), BACKGROUND, dtype=torch.long, device=points.device)
        boxes = gt.gt_boxes.tensor.to(device=points.device, dtype=points.dtype)
        if len(boxes) == 0 or num_points == 0:
            return AssignResult(matched, torch.zeros(num_points, dtype=points.dtype, device=points.device))
        crowd = crowd_flags(gt).to(points.device)
        _, point_strides = cat_points(shifts, self.strides)
        best_iou = torch.full((num_points,), -1.0, dtype=points.dtype, device=points.device)
        for start, end in gt_chunks(num_points, len(boxes), self.chunk_elements):
            candidates, ious, _, positive = atss_positives(
                shifts, point_strides, boxes[start:end], self.topk, self.anchor_scale)
            positive &= ~crowd[start:end, None]
            gt_idx = torch.arange(start, end, device=points.device)[:, None].expand_as(candidates)
            cand, iou, gt_idx = candidates[positive], ious[positive], gt_idx[positive]
            # Per point: highest IoU over this chunk's GTs, then the lowest GT index reaching it.
            chunk_iou = torch.full_like(best_iou, -1.0).scatter_reduce(0, cand, iou, "amax")
            wins = iou == chunk_iou[cand]
            chunk_gt = torch.full_like(matched, len(boxes)).scatter_reduce(
                0, cand[wins], gt_idx[wins], "amin")
            better = chunk_iou > best_iou  # strict: an earlier chunk (lower GT index) wins ties
            best_iou = torch.where(better, chunk_iou, best_iou)
            matched = torch.where(better, chunk_gt, matched)
        matched = ignore_inside_crowd(matched, points, boxes, crowd, self.chunk_elements)
        return AssignResult(matched, torch.where(matched >= 0, best_iou, torch.zeros_like(best_iou)))

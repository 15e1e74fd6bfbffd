"""One-to-many assignment of DeFCN's auxiliary loss, ranked by the POTO matching quality.

Source: Wang et al., "End-to-End Object Detection with Fully Convolutional Network", CVPR 2021,
Sec. 3.4: the auxiliary focal loss uses a modified one-to-many assignment that takes, for each
GT, the top-k (k = 9) predictions *in each FPN stage* ranked by the matching quality Q of Eq. 2
as candidates, and keeps as foreground the candidates whose quality is above a statistical
threshold, the mean plus the standard deviation of the candidates' qualities (ATSS-style).
"""
from typing import List, Optional

import torch

from detectron2.config import configurable
from detectron2.structures import Instances

from .base import ASSIGNER_REGISTRY, BACKGROUND, AssignResult, crowd_flags, gt_chunks, ignore_inside_crowd
from .poto import PriorConfig, check_alpha, check_prediction_inputs, pair_quality


def candidate_threshold(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean + standard deviation of each row's valid candidate qualities (DeFCN Sec. 3.4).

    Args:
        values: [g, C] candidate qualities of g GTs. valid: [g, C] bool.

    Returns:
        Tensor [g]: mean + std (unbiased, as ``torch.std`` in the authors' code; std = 0 with a
        single candidate); +inf for a row without valid candidates.
    """
    count = valid.sum(dim=1).to(values.dtype)
    mean = torch.where(valid, values, torch.zeros_like(values)).sum(dim=1) / count.clamp(min=1)
    sq = torch.where(valid, (values - mean[:, None]) ** 2, torch.zeros_like(values)).sum(dim=1)
    std = torch.sqrt(sq / (count - 1).clamp(min=1))
    return torch.where(count > 0, mean + std, torch.full_like(mean, float("inf")))


@ASSIGNER_REGISTRY.register()
class POTOAuxAssigner:
    """DeFCN's auxiliary one-to-many assignment (Sec. 3.4).

    For each GT g (crowd GTs excluded):
      1. Q_jg = p^(1-alpha) * IoU^alpha (Eq. 2) at every point j strictly **inside g's box**
         (the authors' code uses the box, not the center prior, here) on the levels allowed by
         the level prior ("all" or the FCOS regress ranges, as for POTO);
      2. candidates: on every level, the top-k of those points by Q (fewer if fewer points);
      3. threshold t_g = mean + std of Q over g's candidates (all levels together);
      4. foreground: candidates with Q >= t_g.
    A point that is foreground for several GTs takes the one with the highest Q (ties: lowest
    GT index). Others are BACKGROUND; BACKGROUND points inside a crowd box are IGNORE.

    Difference from the authors' code: there, the per-level top-k is taken over all points
    (also outside the box) and the threshold statistics include those; here only in-box points
    are candidates, so the threshold is not lowered by points that can never be positive.
    Memory: [points x GT-chunk] tensors, bounded by ``chunk_elements``.
    """

    @configurable
    def __init__(self, *, strides: List[int], sizes_of_interest: Optional[List[float]] = None, alpha: float = 0.8,
                 topk: int = 9, level_prior: str = "all", chunk_elements: int = 1 << 20):
        """
        Args:
            strides: per level stride (pixels). sizes_of_interest: FCOS ranges (pixels).
            alpha: quality exponent in [0, 1]. topk: candidates per level per GT (>= 1).
            level_prior: "all" or "fcos". chunk_elements: memory bound.

        Raises:
            ValueError: a bad value, naming the config key.
        """
        if int(topk) != topk or topk < 1:
            raise ValueError(f"MODEL.POTO_AUX.TOPK must be an integer >= 1, got {topk}")
        self.alpha = check_alpha(alpha)
        self.topk = int(topk)
        # the spatial prior of this assignment is always the GT box
        self.prior = PriorConfig(strides, sizes_of_interest, "inside", 0.0, level_prior, chunk_elements)

    @classmethod
    def from_config(cls, cfg, strides):
        return {
            "strides": strides,
            # read only where the priors use them (the unused-key check sees what is read)
            "sizes_of_interest": cfg.MODEL.DENSE.SIZES_OF_INTEREST if cfg.MODEL.POTO.LEVEL_PRIOR == "fcos" else None,
            "alpha": cfg.MODEL.POTO.ALPHA,
            "topk": cfg.MODEL.POTO_AUX.TOPK,
            "level_prior": cfg.MODEL.POTO.LEVEL_PRIOR,
            "chunk_elements": cfg.MODEL.DENSE.ASSIGN_CHUNK_ELEMENTS,
        }

    @torch.no_grad()
    def __call__(self, shifts: List[torch.Tensor], gt: Instances, pred_scores: torch.Tensor = None,
                 pred_boxes: torch.Tensor = None) -> AssignResult:
        """
        Args:
            shifts: per level [R_i, 2] points (x, y) in pixels.
            gt: ``Instances`` with ``gt_boxes`` (XYXY pixels), ``gt_classes``, optionally
                ``gt_is_crowd``.
            pred_scores: [R, K] class probabilities (detached). pred_boxes: [R, 4] XYXY pixels
                (detached).

        Returns:
            :class:`AssignResult`: ``matched`` [R] long: GT index (a GT may have many points),
            BACKGROUND or IGNORE; no soft target.

        Raises:
            ValueError: missing predictions or shapes not matching the R points.
        """
        points = torch.cat(shifts)
        num_points = len(points)
        check_prediction_inputs(num_points, pred_scores, pred_boxes)
        matched = torch.full((num_points,), BACKGROUND, dtype=torch.long, device=points.device)
        boxes = gt.gt_boxes.tensor.to(points.dtype)
        crowd = crowd_flags(gt)
        best_q = torch.full((num_points,), -1.0, device=points.device)
        level_bounds = torch.tensor([0] + [len(s) for s in shifts]).cumsum(0).tolist()
        for start, end in gt_chunks(num_points, len(boxes), self.prior.chunk_elements):
            mask = self.prior.mask(shifts, boxes[start:end]) & ~crowd[None, start:end]  # [R, g]
            point_idx, gt_idx = mask.nonzero(as_tuple=True)
            # [g, R] quality; -1 marks points outside the box / level prior
            quality = torch.full((end - start, num_points), -1.0, device=points.device)
            quality[gt_idx, point_idx] = pair_quality(
                point_idx, gt_idx + start, gt, pred_scores, pred_boxes, self.alpha)
            cand_values, cand_index = [], []
            for l0, l1 in zip(level_bounds[:-1], level_bounds[1:]):
                k = min(self.topk, l1 - l0)
                if k > 0:
                    values, index = quality[:, l0:l1].topk(k, dim=1)  # [g, k]
                    cand_values.append(values)
                    cand_index.append(index + l0)
            values, index = torch.cat(cand_values, dim=1), torch.cat(cand_index, dim=1)
            valid = values >= 0
            foreground = valid & (values >= candidate_threshold(values, valid)[:, None])
            fg_quality = torch.full_like(quality, -1.0)
            fg_quality.scatter_(1, index, torch.where(foreground, values, torch.full_like(values, -1.0)))
            chunk_best, chunk_gt = fg_quality.max(dim=0)
            better = chunk_best > best_q  # strict: an earlier chunk (lower GT index) wins ties
            best_q = torch.where(better, chunk_best, best_q)
            matched = torch.where(better, chunk_gt + start, matched)
        return AssignResult(ignore_inside_crowd(matched, points, boxes, crowd, self.prior.chunk_elements))

"""TOOD's Task Alignment Learning (TAL) assignment: top-k points by the task-alignment metric.

Source: Feng et al., "TOOD: Task-aligned One-stage Object Detection", ICCV 2021, Sec. 3.2
("Task-aligned Sample Assignment": t = s^alpha * u^beta, top-m anchors per instance; "Task-aligned
Loss": the normalized target t_hat whose maximum per instance is that instance's largest IoU),
with the details of the authors' code (fcjian/TOOD, ``mmdet/core/bbox/assigners/
task_aligned_assigner.py`` and ``mmdet/models/dense_heads/tood_head.py``, identical in MMDetection
3.x ``mmdet/models/task_modules/assigners/task_aligned_assigner.py`` and
``dense_heads/tood_head.py`` ``_get_targets_single``): candidates are taken over all levels
together, only candidates with t > 0 whose point lies inside the GT by more than 0.01 px count, a
point claimed by several GTs takes the one of highest IoU, and t_hat = t / (max t + 1e-7) * max IoU.
"""
from typing import List, Tuple

import torch

from detectron2.config import configurable
from detectron2.structures import Instances

from ..geometry import inside_boxes, pairwise_iou
from .base import ASSIGNER_REGISTRY, BACKGROUND, AssignResult, crowd_flags, gt_chunks, ignore_inside_crowd

# A candidate's point must be farther than this (pixels) from every side of its GT (reference:
# ``is_in_gts = ... .min(dim=1)[0] > 0.01``), as in ATSSAssigner.
INSIDE_EPS = 0.01
# Added to the per-GT max of t before normalizing (reference: ``pos_alignment_metrics.max() + 10e-8``).
NORM_EPS = 1e-7


def _power(x: torch.Tensor, p: float) -> torch.Tensor:
    """x ** p. Integer exponents 0..64 use repeated multiplication: exactly rounded products give
    the same bits for an element wherever it sits in the tensor, whereas ``torch.pow``'s CPU kernel
    may round the vectorized body and the scalar tail differently (chunked == unchunked needs the
    same bits). Other exponents: ``torch.pow``."""
    if float(p).is_integer() and 0 <= p <= 64:
        n = int(p)
        result, base = torch.ones_like(x), x
        while n:
            if n & 1:
                result = result * base
            n >>= 1
            if n:
                base = base * base
        return result
    return x.pow(p)


def alignment_metric(pred_scores: torch.Tensor, pred_boxes: torch.Tensor, gt_boxes: torch.Tensor,
                     gt_classes: torch.Tensor, alpha: float, beta: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """TOOD's task-alignment metric t = s^alpha * u^beta (Sec. 3.2) for every (point, GT) pair.

    Args:
        pred_scores: [R, K] class probabilities in [0, 1]. pred_boxes: [R, 4] XYXY pixels.
        gt_boxes: [g, 4] XYXY pixels. gt_classes: [g] long in [0, K).
        alpha, beta: exponents >= 0.

    Returns:
        (t [R, g] float32 in [0, 1], u [R, g] float32 IoU in [0, 1]); s is the score of the GT's
        class at the point.
    """
    u = pairwise_iou(pred_boxes, gt_boxes)
    s = pred_scores.float()[:, gt_classes]
    return _power(s, alpha) * _power(u, beta), u


def topk_mask(t: torch.Tensor, k: int) -> torch.Tensor:
    """[R, g] bool: per column, the k largest entries of ``t`` [R, g] (all R if R < k).

    Equal values at the k-th place are taken lowest point index first (``torch.topk`` leaves their
    order unspecified), so the result depends on the column only: chunking the GTs changes nothing.
    """
    num = t.shape[0]
    if k >= num:
        return torch.ones_like(t, dtype=torch.bool)
    kth = t.topk(k, dim=0).values[-1]  # [g]
    above = t > kth
    at = t == kth
    room = k - above.sum(dim=0)  # [g], >= 1
    return above | (at & (at.cumsum(dim=0) <= room))


@ASSIGNER_REGISTRY.register()
class TaskAlignedAssigner:
    """Task-aligned sample assignment (TOOD, Sec. 3.2) on points, from the detector's predictions.

    For every non-crowd GT g (box B_g, class c_g):
      1. the alignment metric of point i is t_ig = s_ic^alpha * u_ig^beta, s_ic the predicted
         probability of class c_g at i, u_ig the IoU of i's predicted box with B_g (paper Sec. 3.2,
         "t = s^alpha x u^beta"; reference ``alignment_metrics = bbox_scores ** alpha * overlaps **
         beta``);
      2. the ``topk`` points of largest t_ig over all levels together are g's candidates (reference
         ``alignment_metrics.topk(topk, dim=0)``; ties at the k-th place: lowest point index);
      3. a candidate is positive for g iff t_ig > 0 (reference ``is_pos = candidate_metrics > 0``)
         and its point lies inside B_g by more than 0.01 px on all four sides (reference
         ``is_in_gts = ... .min(dim=1)[0] > 0.01``; the point, not the predicted box). The top-k
         is taken before this filter, so a GT may end with fewer than k positives;
      4. a point positive for several GTs takes the one of highest IoU u_ig (reference: "if an
         anchor box is assigned to multiple gts, the one with the highest iou will be selected",
         ``overlaps_inf.max(dim=1)``) -- not the highest t; IoU ties: the lowest GT index;
      5. crowd GTs (``gt_is_crowd``) never produce positives; BACKGROUND points strictly inside a
         crowd box become IGNORE (as in the other assigners here, ``ignore_inside_crowd``);
      6. quality (the soft classification target t_hat of the task-aligned loss, Sec. 3.2) at a
         point positive for g is t_ig / (max_j t_jg + 1e-7) * max_j u_jg, the maxima over g's
         positives (after step 4); 0 at all other points (reference ``TOODHead._get_targets_single``,
         ``norm_alignment_metrics``, eps written ``10e-8``).
    No GT (or no point): all BACKGROUND, quality 0.

    Memory: GTs are processed in chunks so that no [points x chunk] tensor exceeds
    ``chunk_elements`` elements (about ten such temporaries live at once, one of them int64);
    every step before 4 is per GT and step 4 keeps running per-point maxima, so the result is
    identical (bit for bit) to the unchunked computation.
    """

    PROVIDES_QUALITY = True

    @configurable
    def __init__(self, *, strides: List[int], topk: int = 13, alpha: float = 1.0, beta: float = 6.0,
                 chunk_elements: int = 1 << 20):
        """
        Args:
            strides: per level stride in pixels (only the number of levels is used: candidates are
                ranked over all levels together).
            topk: candidates per GT over all levels (paper/reference: 13), >= 1.
            alpha: exponent of the score in t (paper: 1), finite and >= 0.
            beta: exponent of the IoU in t (paper: 6), finite and >= 0.
            chunk_elements: memory bound (elements), >= 1; see the class docstring.

        Raises:
            ValueError: a bad ``topk``, ``alpha``, ``beta`` or ``chunk_elements`` (naming the
                config key).
        """
        if isinstance(topk, bool) or int(topk) != topk or topk < 1:
            raise ValueError(f"MODEL.TAL.TOPK must be an integer >= 1, got {topk}")
        for key, value in (("ALPHA", alpha), ("BETA", beta)):
            if not (float(value) >= 0 and float(value) != float("inf")):
                raise ValueError(f"MODEL.TAL.{key} must be finite and >= 0, got {value}")
        if chunk_elements < 1:
            raise ValueError(f"MODEL.DENSE.ASSIGN_CHUNK_ELEMENTS must be >= 1, got {chunk_elements}")
        self.strides = list(strides)
        self.topk = int(topk)
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.chunk_elements = int(chunk_elements)

    @property
    def one_to_one(self) -> bool:
        """True with top-1 (YOLOv10's one-to-one rule): a GT then gets at most one positive (rule
        4 may take it away, never add one)."""
        return self.topk == 1

    @classmethod
    def from_config(cls, cfg, strides):
        t = cfg.MODEL.TAL
        return {"strides": strides, "topk": t.TOPK, "alpha": t.ALPHA, "beta": t.BETA,
                "chunk_elements": cfg.MODEL.DENSE.ASSIGN_CHUNK_ELEMENTS}

    @torch.no_grad()
    def __call__(self, shifts: List[torch.Tensor], gt: Instances, pred_scores: torch.Tensor,
                 pred_boxes: torch.Tensor) -> AssignResult:
        """
        Args:
            shifts: per level [R_i, 2] points (x, y) in pixels, one level per stride.
            gt: one image's ``Instances`` with ``gt_boxes`` (Boxes, XYXY pixels), ``gt_classes``
                ([G] long in [0, K)) and optionally ``gt_is_crowd`` ([G] bool).
            pred_scores: [R, K] detached class probabilities in [0, 1] (already activated; TOOD:
                the aligned score sqrt(sigmoid(logits) * sigmoid(prob))), points in the order of
                ``torch.cat(shifts)``.
            pred_boxes: [R, 4] detached predicted boxes, XYXY pixels, same order.

        Returns:
            AssignResult(matched [R] long: GT index, BACKGROUND (-1) or IGNORE (-2);
            quality [R] float32 in [0, 1]: t_hat at positives, 0 elsewhere).

        Raises:
            ValueError: levels differing from the strides, or prediction shapes not [R, K] /
                [R, 4] for the R points.
        """
        if len(shifts) != len(self.strides):
            raise ValueError(f"TaskAlignedAssigner got {len(shifts)} levels of points for strides {self.strides}")
        points = torch.cat(shifts, dim=0)
        num_points = len(points)
        if pred_scores.dim() != 2 or pred_scores.shape[0] != num_points:
            raise ValueError(f"pred_scores must be [{num_points}, K], got {tuple(pred_scores.shape)}")
        if tuple(pred_boxes.shape) != (num_points, 4):
            raise ValueError(f"pred_boxes must be [{num_points}, 4], got {tuple(pred_boxes.shape)}")
        device = points.device
        matched = torch.full((num_points,), BACKGROUND, dtype=torch.long, device=device)
        quality = torch.zeros(num_points, dtype=torch.float32, device=device)
        boxes = gt.gt_boxes.tensor.to(device=device, dtype=torch.float32)
        if len(boxes) == 0 or num_points == 0:
            return AssignResult(matched, quality)
        classes = gt.gt_classes.to(device=device, dtype=torch.long)
        crowd = crowd_flags(gt).to(device)
        points = points.float()
        pred_boxes = pred_boxes.to(device=device, dtype=torch.float32)
        pred_scores = pred_scores.to(device=device, dtype=torch.float32)

        best_iou = torch.full((num_points,), -1.0, device=device)
        best_t = torch.zeros(num_points, device=device)
        for start, end in gt_chunks(num_points, len(boxes), self.chunk_elements):
            t, u = alignment_metric(pred_scores, pred_boxes, boxes[start:end], classes[start:end],
                                    self.alpha, self.beta)  # rule 1, [R, g]
            positive = topk_mask(t, self.topk)  # rule 2
            positive &= t > 0  # rule 3
            positive &= inside_boxes(points, boxes[start:end], margin=INSIDE_EPS)
            positive &= ~crowd[None, start:end]  # rule 5
            # Rule 4: per point, highest IoU among this chunk's GTs (max returns the first, i.e.
            # lowest, index among equal maxima), then against the earlier chunks (strict, so an
            # earlier chunk, a lower GT index, wins ties).
            chunk_iou, chunk_idx = torch.where(positive, u, torch.full_like(u, -1.0)).max(dim=1)
            better = chunk_iou > best_iou
            best_iou = torch.where(better, chunk_iou, best_iou)
            best_t = torch.where(better, t.gather(1, chunk_idx[:, None])[:, 0], best_t)
            matched = torch.where(better, chunk_idx + start, matched)

        # Rule 6: normalize t per GT over the positives it finally got.
        pos = matched >= 0
        if pos.any():
            gt_idx = matched[pos]
            max_t = torch.zeros(len(boxes), device=device).scatter_reduce(0, gt_idx, best_t[pos], "amax")
            max_u = torch.zeros(len(boxes), device=device).scatter_reduce(0, gt_idx, best_iou[pos], "amax")
            quality[pos] = best_t[pos] / (max_t[gt_idx] + NORM_EPS) * max_u[gt_idx]
        matched = ignore_inside_crowd(matched, points, boxes, crowd, self.chunk_elements)
        return AssignResult(matched, quality)

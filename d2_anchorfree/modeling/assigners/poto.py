"""POTO: Prediction-aware One-To-One label assignment (DeFCN).

Source: Wang et al., "End-to-End Object Detection with Fully Convolutional Network", CVPR 2021,
Sec. 3.2, Eq. 2-3: every GT i is given exactly one location pi(i) maximizing the total matching
quality

    Q_ij = 1[j in Omega_i] * p_hat_ij^(1 - alpha) * IoU_ij^alpha,

where Omega_i is GT i's spatial (and level) prior, p_hat_ij the predicted probability of GT i's
class at location j and IoU_ij the IoU of location j's predicted box with GT i. The authors'
code (Megvii-BaseDetection/DeFCN, ``playground/detection/coco/poto.res50.fpn.coco.800size.3x_ms/
fcos.py``, ``get_ground_truth``, lines 228-252) sets Q = -1 outside the prior (not 0) and runs
``scipy.optimize.linear_sum_assignment(quality, maximize=True)`` on the full [G, R] matrix: every
GT gets exactly one location (min(G, R) GTs when there are more GTs than locations), an
out-of-prior one when its in-prior locations are all taken or it has none. Here the same optimum
is found in two stages with memory O(in-prior pairs + R) instead of O(G R):
:func:`match_one_to_one` (the in-prior pairs; dense ``linear_sum_assignment`` or, for large
problems, scipy's sparse ``min_weight_full_bipartite_matching``) and :func:`assign_out_of_prior`
(a free location for each GT left over).
"""
import math
from typing import List, Optional, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_array
from scipy.sparse.csgraph import min_weight_full_bipartite_matching

from detectron2.config import configurable
from detectron2.structures import Instances

from ..geometry import inside_boxes, inside_center_regions, max_distance, paired_iou
from .base import ASSIGNER_REGISTRY, BACKGROUND, AssignResult, crowd_flags, gt_chunks, ignore_inside_crowd, level_ranges

SPATIAL_PRIORS = ("center", "inside")
LEVEL_PRIORS = ("all", "fcos")


def poto_quality(probs: torch.Tensor, ious: torch.Tensor, alpha: float) -> torch.Tensor:
    """Matching quality of DeFCN Eq. 2 (without the prior indicator): p^(1 - alpha) * IoU^alpha.

    Args:
        probs: predicted probabilities of the GT's class, any shape, values in [0, 1].
        ious: IoU of the predicted box with the GT, same shape, values in [0, 1].
        alpha: in [0, 1]; 0.8 in the paper (alpha = 1: IoU only, alpha = 0: class only).

    Returns:
        Tensor of the same shape, in [0, 1].
    """
    return probs.clamp(0.0, 1.0).pow(1.0 - alpha) * ious.clamp(0.0, 1.0).pow(alpha)


@torch.no_grad()
def pair_quality(point_idx: torch.Tensor, gt_idx: torch.Tensor, gt: Instances,
                 pred_scores: torch.Tensor, pred_boxes: torch.Tensor, alpha: float) -> torch.Tensor:
    """Q of DeFCN Eq. 2 for given (point, GT) pairs (assumed inside the prior).

    Q = pred_scores[j, class_i]^(1 - alpha) * IoU(pred_boxes[j], gt_box_i)^alpha.

    Args:
        point_idx, gt_idx: [P] long. gt: ``Instances`` with ``gt_boxes`` (XYXY pixels) and
            ``gt_classes``. pred_scores: [R, K] class probabilities in [0, 1].
            pred_boxes: [R, 4] XYXY pixels. alpha: [0, 1].

    Returns:
        Tensor [P] float32 in [0, 1].
    """
    classes = gt.gt_classes[gt_idx]
    probs = pred_scores[point_idx, classes].float()
    ious = paired_iou(pred_boxes[point_idx].float(), gt.gt_boxes.tensor[gt_idx].float())
    return poto_quality(probs, ious, alpha)


def check_prediction_inputs(num_points: int, pred_scores, pred_boxes) -> None:
    """Validate the predictions passed to the prediction-aware assigners.

    Args:
        num_points: R, the number of points of the image.
        pred_scores: [R, K] class probabilities (p_hat) in [0, 1].
        pred_boxes: [R, 4] predicted boxes (x0, y0, x1, y1) in pixels.

    Raises:
        ValueError: a missing prediction or a shape that does not match R points.
    """
    if pred_scores is None or pred_boxes is None:
        raise ValueError("prediction-aware assigners need pred_scores=[R, K] and pred_boxes=[R, 4] (XYXY pixels)")
    if pred_scores.dim() != 2 or pred_scores.shape[0] != num_points:
        raise ValueError(f"pred_scores must be [R={num_points}, K], got {tuple(pred_scores.shape)}")
    if tuple(pred_boxes.shape) != (num_points, 4):
        raise ValueError(f"pred_boxes must be [R={num_points}, 4], got {tuple(pred_boxes.shape)}")


def prior_mask(points: torch.Tensor, stride: float, regress_range: Tuple[float, float],
               gt_boxes: torch.Tensor, spatial_prior: str, radius: float, level_prior: str) -> torch.Tensor:
    """Omega_i of DeFCN Eq. 2 on one FPN level: which points may be matched to which GT.

    A point is in GT g's prior when
      * spatial_prior "inside": it lies strictly inside g's box; "center": strictly inside g's
        center region of half-size ``radius * stride``, clipped to the box (FCOS center
        sampling, ``geometry.inside_center_regions``; the authors' default with radius 1.5);
      * level_prior "all": always; "fcos": max(l, t, r, b) from the point to g's sides lies in
        the level's FCOS regress range [lo, hi] (pixels, both inclusive).

    Args:
        points: [R_l, 2] points of the level (pixels). stride: the level's stride (pixels).
        regress_range: (lo, hi) of the level (pixels). gt_boxes: [g, 4] XYXY pixels.

    Returns:
        Tensor [R_l, g] bool (callers chunk the GTs to bound its size).
    """
    if spatial_prior == "inside":
        mask = inside_boxes(points, gt_boxes)
    else:
        point_strides = points.new_full((len(points),), float(stride))
        mask = inside_center_regions(points, point_strides, gt_boxes, radius)
    if level_prior == "fcos":
        max_reg = max_distance(points, gt_boxes)
        mask &= (max_reg >= regress_range[0]) & (max_reg <= regress_range[1])
    return mask


def match_one_to_one(point_idx: torch.Tensor, gt_idx: torch.Tensor, quality: torch.Tensor,
                     num_gt: int, num_points: int, max_dense_elements: int = 1 << 20) -> torch.Tensor:
    """First stage of POTO: maximum-weight one-to-one matching on the in-prior (point, GT) pairs.

    The weight of an in-prior pair is ``Q + 1`` and of every other pair 0, i.e. the maximized
    objective is ``sum over matched GTs of Q - (number of GTs left without an in-prior
    point)``: the objective of the authors' code (Q = -1 outside the prior, every GT matched;
    see the module docstring) up to the constant min(G, R). So the in-prior pairs of the
    authors' matching are an optimum here, and :func:`assign_out_of_prior` completes it.
      * An in-prior pair with Q == 0 (e.g. an untrained, degenerate predicted box with IoU 0)
        is matched like any other (weight 1 > 0), so that training can start.
      * A GT with no point in its prior, or whose prior points are all taken by other GTs, is
        left unmatched here; every point still free then lies outside its prior (a free
        in-prior point would have raised the objective by >= 1).

    Solved exactly, on the columns of points that lie in at least one GT's prior (a point
    outside every prior can never be a positive), by one of two scipy solvers chosen by size:
      * G x C <= ``max_dense_elements`` (C = those columns): ``scipy.optimize.
        linear_sum_assignment(maximize=True)`` on the dense float64 [G, C] weight matrix;
      * larger problems: ``scipy.sparse.csgraph.min_weight_full_bipartite_matching`` (LAPJVsp)
        on the P in-prior pairs only, as a full matching of the G rows: in-prior pair cost
        ``2 - Q`` (in [1, 2]) plus one private "unmatched" column per GT with cost 3. A row's
        cost is 3 minus its weight above, so the minimum-cost full matching is the
        maximum-weight matching, in O(P + G) memory instead of O(G C) (the dense matrix is
        0.4 GB at 3000 GT on 800x1333, and the dense solver 16x slower there).
    Both give the same matching up to ties between equally good matchings
    (tests/modeling/heads/test_defcn.py compares them, and with the unrestricted [G, R] problem).

    Args:
        point_idx, gt_idx: [P] long, the in-prior pairs (each pair at most once).
        quality: [P] Q of each pair, in [0, 1].
        num_gt: G. num_points: R.
        max_dense_elements: largest G x C solved densely (``MODEL.DENSE.ASSIGN_CHUNK_ELEMENTS``
            in :class:`POTOAssigner`); 0 always uses the sparse solver.

    Returns:
        Tensor [R] long: the matched GT index, or BACKGROUND (-1); every matched pair is in the
        prior. Each GT index appears at most once. On ``point_idx``'s device.
    """
    matched = torch.full((num_points,), BACKGROUND, dtype=torch.long, device=point_idx.device)
    if point_idx.numel() == 0:
        return matched
    cols, col_of_pair = torch.unique(point_idx, return_inverse=True)
    pair_rows = gt_idx.cpu().numpy()
    pair_cols = col_of_pair.cpu().numpy()
    pair_quality_np = quality.double().cpu().numpy()
    if num_gt * len(cols) <= max_dense_elements:
        rows, matched_cols = solve_dense(pair_rows, pair_cols, pair_quality_np, num_gt, len(cols))
    else:
        rows, matched_cols = solve_sparse(pair_rows, pair_cols, pair_quality_np, num_gt, len(cols))
    rows = torch.as_tensor(rows, dtype=torch.long, device=matched.device)
    matched_cols = torch.as_tensor(matched_cols, dtype=torch.long, device=matched.device)
    matched[cols[matched_cols]] = rows
    return matched


def solve_dense(rows: np.ndarray, cols: np.ndarray, quality: np.ndarray, num_rows: int, num_cols: int):
    """Dense solver of :func:`match_one_to_one`: weights Q + 1 on the pairs, 0 elsewhere.

    Args: rows, cols: [P] int pair indices (GT, column); quality: [P] float64 in [0, 1].
    Returns: (rows, cols) int arrays of the matched in-prior pairs.
    """
    weights = np.zeros((num_rows, num_cols), dtype=np.float64)
    weights[rows, cols] = quality + 1.0
    r, c = linear_sum_assignment(weights, maximize=True)
    in_prior = weights[r, c] > 0
    return r[in_prior], c[in_prior]


def solve_sparse(rows: np.ndarray, cols: np.ndarray, quality: np.ndarray, num_rows: int, num_cols: int):
    """Sparse solver of :func:`match_one_to_one` (same arguments and result as
    :func:`solve_dense`): minimum-cost full matching of the rows with costs 2 - Q on the pairs
    and 3 on a private "unmatched" column per row (columns ``num_cols + row``)."""
    own = np.arange(num_rows)
    costs = coo_array((np.concatenate([2.0 - quality, np.full(num_rows, 3.0)]),
                       (np.concatenate([rows, own]), np.concatenate([cols, num_cols + own]))),
                      shape=(num_rows, num_cols + num_rows)).tocsr()
    r, c = min_weight_full_bipartite_matching(costs)
    in_prior = c < num_cols
    return r[in_prior], c[in_prior]


@torch.no_grad()
def assign_out_of_prior(matched: torch.Tensor, points: torch.Tensor, gt: Instances, pred_scores: torch.Tensor,
                        pred_boxes: torch.Tensor, alpha: float, exclude: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Second stage of POTO: one out-of-prior point for every GT that :func:`match_one_to_one`
    left unmatched, as the authors' full matching does.

    In the authors' objective all out-of-prior pairs are worth -1, so any free point completes
    the matching optimally (there, scipy's solver picks one by its internal order). Here the
    choice is made by a fixed rule: the GTs left over, in index order, each take the free point
    (matched to no GT) of highest Q = p^(1 - alpha) IoU^alpha (:func:`pair_quality`, from the same
    predictions), ties broken by the smallest distance from the point to the GT box's center,
    then the lowest point index. When the free points run out (more GTs than points), the
    remaining GTs stay unmatched, as min(G, R) GTs are matched by ``linear_sum_assignment``.
    Such a positive lies outside its GT's prior and maybe outside its box (some of its GT ltrb
    distances negative).

    Memory and time: O(R) per GT left over (one row of Q at a time).

    Args:
        matched: [R] long, :func:`match_one_to_one`'s result (GT index or BACKGROUND); modified
            in place.
        points: [R, 2] (x, y) pixels, all levels concatenated.
        gt: ``Instances`` with ``gt_boxes`` (XYXY pixels) and ``gt_classes``.
        pred_scores: [R, K] class probabilities in [0, 1]. pred_boxes: [R, 4] XYXY pixels.
        alpha: [0, 1], as in :func:`pair_quality`.
        exclude: optional [G] bool, GTs never to match (crowd boxes).

    Returns:
        The updated ``matched`` [R]: each non-excluded GT exactly once when there are enough
        points.
    """
    num_gt, num_points = len(gt), len(matched)
    has_point = torch.zeros(num_gt, dtype=torch.bool, device=matched.device)
    has_point[matched[matched >= 0]] = True
    if exclude is not None:
        has_point |= exclude.to(matched.device)
    left_over = (~has_point).nonzero().squeeze(1).tolist()
    if not left_over:
        return matched
    free = matched == BACKGROUND
    all_points = torch.arange(num_points, device=matched.device)
    boxes = gt.gt_boxes.tensor.to(points.dtype)
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    for g in left_over:
        if not free.any():
            break
        q = pair_quality(all_points, torch.full_like(all_points, g), gt, pred_scores, pred_boxes, alpha)
        q = torch.where(free, q, torch.full_like(q, -1.0))  # Q >= 0 at the free points
        candidates = free & (q == q.max())
        dist2 = ((points - centers[g]) ** 2).sum(dim=1)
        point = torch.where(candidates, dist2, torch.full_like(dist2, float("inf"))).argmin()
        matched[point] = g
        free[point] = False
    return matched


def match_one_to_one_dense(quality: torch.Tensor, in_prior: torch.Tensor) -> torch.Tensor:
    """The authors' formulation, a reference for the two stages (:func:`match_one_to_one`,
    :func:`assign_out_of_prior`): ``linear_sum_assignment(maximize=True)`` on the full [G, R]
    matrix with Q in the prior and -1 outside (DeFCN ``fcos.py`` ``get_ground_truth``:
    ``quality[~is_in_boxes] = -1``).

    Args:
        quality: [G, R] Q in [0, 1] (values outside the prior are not used).
        in_prior: [G, R] bool.

    Returns:
        Tensor [R] long (GT index or BACKGROUND): min(G, R) matched pairs, in or out of the
        prior. Its in-prior pairs equal :func:`match_one_to_one`'s up to ties between equally
        good matchings; its out-of-prior points are scipy's choice among equal ones (tests).
    """
    num_gt, num_points = quality.shape
    matched = torch.full((num_points,), BACKGROUND, dtype=torch.long)
    if num_gt == 0 or num_points == 0:
        return matched
    weights = torch.where(in_prior, quality.double(), torch.full_like(quality, -1.0, dtype=torch.float64))
    rows, cols = linear_sum_assignment(weights.cpu().numpy(), maximize=True)
    matched[torch.as_tensor(cols, dtype=torch.long)] = torch.as_tensor(rows, dtype=torch.long)
    return matched


class PriorConfig:
    """The prior settings shared by POTO and its auxiliary one-to-many assignment.

    Attributes: strides (pixels), ranges (per-level FCOS regress ranges, pixels),
    spatial_prior, radius (stride units), level_prior, chunk_elements.
    """

    def __init__(self, strides: List[int], sizes_of_interest: Optional[List[float]], spatial_prior: str,
                 radius: float, level_prior: str, chunk_elements: int):
        """
        Raises:
            ValueError: unknown ``spatial_prior``/``level_prior``, radius <= 0 with the
                "center" prior, or bad ``sizes_of_interest`` (see ``level_ranges``).
        """
        if spatial_prior not in SPATIAL_PRIORS:
            raise ValueError(f"MODEL.POTO.SPATIAL_PRIOR must be one of {SPATIAL_PRIORS}, got {spatial_prior!r}")
        if level_prior not in LEVEL_PRIORS:
            raise ValueError(f"MODEL.POTO.LEVEL_PRIOR must be one of {LEVEL_PRIORS}, got {level_prior!r}")
        if spatial_prior == "center" and radius <= 0:
            raise ValueError(f"MODEL.DENSE.CENTER_SAMPLING_RADIUS must be > 0 for the 'center' prior, got {radius}")
        self.strides = list(strides)
        if level_prior == "fcos":
            if sizes_of_interest is None:
                raise ValueError("the 'fcos' level prior (MODEL.POTO.LEVEL_PRIOR) needs MODEL.DENSE.SIZES_OF_INTEREST")
            self.ranges = level_ranges(sizes_of_interest, len(strides))
        else:  # every level takes every object
            self.ranges = [(0.0, math.inf)] * len(strides)
        self.spatial_prior = spatial_prior
        self.radius = float(radius)
        self.level_prior = level_prior
        self.chunk_elements = int(chunk_elements)

    def mask(self, shifts: List[torch.Tensor], gt_boxes: torch.Tensor) -> torch.Tensor:
        """:func:`prior_mask` of every level, concatenated.

        Args:
            shifts: per level [R_i, 2] points (x, y) in pixels, one level per stride.
            gt_boxes: [g, 4] XYXY pixels.

        Returns:
            Tensor [R, g] bool, R = sum R_i (callers chunk the GTs to bound its size).
        """
        return torch.cat([
            prior_mask(points, stride, regress_range, gt_boxes, self.spatial_prior, self.radius,
                       self.level_prior)
            for points, stride, regress_range in zip(shifts, self.strides, self.ranges)
        ])


def check_alpha(alpha: float) -> float:
    """Raises ValueError unless 0 <= alpha <= 1 (MODEL.POTO.ALPHA); returns it as float."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"MODEL.POTO.ALPHA must be in [0, 1], got {alpha}")
    return float(alpha)


@ASSIGNER_REGISTRY.register()
class POTOAssigner:
    """POTO one-to-one assignment (DeFCN, CVPR 2021, Sec. 3.2, Eq. 2-3).

    Per image: the in-prior (point, GT) pairs are found in GT chunks (bounded memory, see
    :func:`prior_mask`), their quality Q = p^(1-alpha) IoU^alpha is computed from the detached
    predictions, :func:`match_one_to_one` matches GTs to in-prior points, and
    :func:`assign_out_of_prior` gives each GT left over a point outside its prior, so every GT
    gets exactly one point (while points last), as in the authors' code. Other points are
    BACKGROUND; BACKGROUND points strictly inside a crowd box (``gt_is_crowd``) are IGNORE, and
    crowd GTs are never matched. No GT -> all BACKGROUND.
    """

    #: every GT gets at most one positive (what a dual head's one-to-one branch needs)
    one_to_one = True

    @configurable
    def __init__(self, *, strides: List[int], sizes_of_interest: Optional[List[float]] = None, alpha: float = 0.8,
                 spatial_prior: str = "center", center_sampling_radius: float = 1.5,
                 level_prior: str = "all", chunk_elements: int = 1 << 20):
        """
        Args:
            strides: per level stride (pixels).
            sizes_of_interest: FCOS regress range boundaries (pixels), used by level_prior "fcos".
            alpha: quality exponent in [0, 1].
            spatial_prior: "center" or "inside"; center_sampling_radius: stride units (> 0).
            level_prior: "all" or "fcos".
            chunk_elements: bound on points x GT-chunk elements of the dense prior tensors, and
                on the G x C elements of a dense matching matrix (larger: sparse solver).

        Raises:
            ValueError: any bad value, naming the config key.
        """
        self.alpha = check_alpha(alpha)
        self.prior = PriorConfig(strides, sizes_of_interest, spatial_prior, center_sampling_radius,
                                 level_prior, chunk_elements)

    @classmethod
    def from_config(cls, cfg, strides):
        return {
            "strides": strides,
            # read only where the priors use them (the unused-key check sees what is read)
            "sizes_of_interest": cfg.MODEL.DENSE.SIZES_OF_INTEREST if cfg.MODEL.POTO.LEVEL_PRIOR == "fcos" else None,
            "alpha": cfg.MODEL.POTO.ALPHA,
            "spatial_prior": cfg.MODEL.POTO.SPATIAL_PRIOR,
            **({"center_sampling_radius": cfg.MODEL.DENSE.CENTER_SAMPLING_RADIUS}
               if cfg.MODEL.POTO.SPATIAL_PRIOR == "center" else {}),
            "level_prior": cfg.MODEL.POTO.LEVEL_PRIOR,
            "chunk_elements": cfg.MODEL.DENSE.ASSIGN_CHUNK_ELEMENTS,
        }

    @torch.no_grad()
    def prior_pairs(self, shifts: List[torch.Tensor], gt: Instances,
                    exclude: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """All (point, GT) pairs inside the priors.

        Args:
            shifts: per level [R_i, 2] points (pixels). gt: ``Instances`` with ``gt_boxes``.
            exclude: optional [G] bool, GTs to leave out (e.g. crowd boxes).

        Returns:
            (point_idx [P], gt_idx [P]) long, indices into the concatenated points / the GTs.
        """
        boxes = gt.gt_boxes.tensor.to(shifts[0].dtype)
        point_idx, gt_idx = [], []
        offset = 0
        for points, stride, regress_range in zip(shifts, self.prior.strides, self.prior.ranges):
            for start, end in gt_chunks(len(points), len(boxes), self.prior.chunk_elements):
                mask = prior_mask(points, stride, regress_range, boxes[start:end],
                                  self.prior.spatial_prior, self.prior.radius, self.prior.level_prior)
                if exclude is not None:
                    mask &= ~exclude[None, start:end]
                p, g = mask.nonzero(as_tuple=True)
                point_idx.append(p + offset)
                gt_idx.append(g + start)
            offset += len(points)
        if not point_idx:
            empty = torch.zeros(0, dtype=torch.long, device=shifts[0].device)
            return empty, empty
        return torch.cat(point_idx), torch.cat(gt_idx)

    @torch.no_grad()
    def __call__(self, shifts: List[torch.Tensor], gt: Instances, pred_scores: torch.Tensor = None,
                 pred_boxes: torch.Tensor = None) -> AssignResult:
        """
        Args:
            shifts: per level [R_i, 2] points (x, y) in pixels.
            gt: one image's ``Instances``: ``gt_boxes`` (XYXY pixels), ``gt_classes`` [G] long,
                optionally ``gt_is_crowd`` [G].
            pred_scores: [R, K] class probabilities of the final score (with 3DMF:
                sigmoid(cls) * sigmoid(filter)), detached.
            pred_boxes: [R, 4] decoded predicted boxes, XYXY pixels, detached.

        Returns:
            :class:`AssignResult`: ``matched`` [R] long: GT index (each non-crowd GT exactly
            once, or min(G, R) of them), BACKGROUND (-1) or IGNORE (-2); no soft target.

        Raises:
            ValueError: missing predictions or shapes that do not match the R points.
        """
        num_points = sum(len(s) for s in shifts)
        check_prediction_inputs(num_points, pred_scores, pred_boxes)
        crowd = crowd_flags(gt)
        point_idx, gt_idx = self.prior_pairs(shifts, gt, exclude=crowd)
        quality = pair_quality(point_idx, gt_idx, gt, pred_scores, pred_boxes, self.alpha)
        matched = match_one_to_one(point_idx, gt_idx, quality, len(gt), num_points,
                                   max_dense_elements=self.prior.chunk_elements)
        points = torch.cat(shifts)
        matched = assign_out_of_prior(matched, points, gt, pred_scores, pred_boxes, self.alpha, exclude=crowd)
        return AssignResult(ignore_inside_crowd(matched, points, gt.gt_boxes.tensor, crowd,
                                                self.prior.chunk_elements))

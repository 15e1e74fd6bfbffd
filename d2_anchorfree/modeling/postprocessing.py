"""Inference post-processing shared by the dense detectors: candidates, decode, NMS or NMS-free
(the top scores of a one-to-one branch, or the peaks of any branch's score maps)."""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from torchvision.ops import box_iou, nms

from detectron2.structures import Boxes, Instances

from .geometry import clip_boxes_to_image, ltrb_to_boxes, nonempty_boxes


TOPK_BY = ("score", "candidate")


def _check_shapes(scores: torch.Tensor, candidate_scores: Optional[torch.Tensor], topk_by: str) -> None:
    """The argument checks of :func:`select_candidates` (skipped while tracing: sizes are then
    traced tensors, and checks on them would become constants of the export)."""
    if torch.jit.is_tracing():
        return
    if scores.dim() != 2:
        raise ValueError(f"scores must be [R, K], got {tuple(scores.shape)}")
    if candidate_scores is not None and candidate_scores.shape != scores.shape:
        raise ValueError(
            f"candidate_scores {tuple(candidate_scores.shape)} must match scores {tuple(scores.shape)}")
    if topk_by not in TOPK_BY:
        raise ValueError(f"MODEL.DENSE.TOPK_CANDIDATES_BY must be one of {TOPK_BY}, got {topk_by!r}")


def select_candidates(scores: torch.Tensor, score_thresh: float, topk: int,
                      candidate_scores: Optional[torch.Tensor] = None,
                      topk_by: str = "score", topk_within_points: bool = False) -> Tuple[torch.Tensor, ...]:
    """Keep the ``topk`` highest (point, class) scores among those above ``score_thresh`` on one level
    (FCOS, Tian et al. ICCV 2019, Sec. 3.1 "Inference": locations with p > 0.05 are positive
    samples; the authors' code keeps at most ``pre_nms_top_n`` = 1000 per level).

    Branch-free, so that a traced export (``d2_anchorfree.export``) keeps the rule for every
    input size: the candidates' ranking values are padded with ``topk`` entries of -1 (below
    every score in [0, 1]), the top ``topk`` of them taken (a constant k whatever the number of
    candidates), and the padding dropped again (torchvision's FCOS computes k = min(topk, M)
    instead, a size that tracing would freeze).

    Args:
        scores: [R, K] ranking scores in [0, 1] (>= 0 is required: the padding is -1).
        score_thresh: keep (point, class) pairs whose ``candidate_scores`` (default: ``scores``)
            are strictly above it. topk: at most this many (>= 1).
        candidate_scores: optional [R, K] scores the threshold applies to; FCOS thresholds the
            class probability and ranks by p * centerness (FCOS paper Sec. 3.1 "Inference"; the
            authors' code: pre_nms_thresh on p).
        topk_by: which score picks the ``topk``: "score" (the ranking score; the FCOS authors'
            code) or "candidate" (the thresholded ``candidate_scores``; MMDetection's
            ``filter_scores_and_topk`` on the class probability, before the centerness factor).
        topk_within_points: keep at most min(``topk``, R) pairs (DeFCN's cvpods
            ``inference_single_image``: a level with fewer points than ``topk`` keeps fewer).

    Returns:
        (scores [M], point_idx [M] long, class_idx [M] long), M <= topk, sorted by score desc
        (equal scores may come in another order than before this rule was made branch-free; a NaN
        score is never selected, and ``dense_detections`` refuses non-finite candidates).

    Raises:
        ValueError: ``scores`` not 2-D, ``candidate_scores`` of another shape, or unknown ``topk_by``
            (not checked while tracing).
    """
    _check_shapes(scores, candidate_scores, topk_by)
    flat = scores.flatten()
    gate = flat if candidate_scores is None else candidate_scores.flatten()
    keep = torch.nonzero(gate > score_thresh).squeeze(1)  # [M] candidates
    ranking = (gate if topk_by == "candidate" else flat)[keep]
    padded = torch.cat([ranking, ranking.new_full((topk,), -1.0)])
    top, order = padded.topk(topk)  # sorted descending; the padding sinks below every candidate
    valid = top > -0.5
    if topk_within_points:
        valid = valid & (torch.arange(topk, device=scores.device) < scores.shape[0])
    keep = keep[order[valid]]
    kept = flat[keep]
    if topk_by == "candidate":
        kept, order = kept.sort(descending=True)
        keep = keep[order]
    num_classes = scores.shape[1]
    return kept, keep // num_classes, keep % num_classes


def _check_finite(level: int, *tensors: Optional[torch.Tensor]) -> None:
    """Raise FloatingPointError when a level's scores or distances hold NaN or infinity (diverged
    or corrupted weights, an fp16 overflow) instead of returning fewer detections silently."""
    for t in tensors:
        if t is not None and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise FloatingPointError(
                f"level {level}: {bad} of {t.numel()} predicted values are NaN or infinite "
                "(diverged or corrupted weights?)")


def class_aware_nms(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor,
                    iou_thresh: float) -> torch.Tensor:
    """NMS within each class, one implementation eagerly and in a traced export: every box is
    shifted by ``class * (largest coordinate + 1)`` so that boxes of different classes never
    overlap, then one ``torchvision.ops.nms`` (ONNX ``NonMaxSuppression``) runs over all of them.

    This is torchvision's ``batched_nms`` "coordinate trick" and MMDetection's ``batched_nms``
    (below 10000 boxes), always. torchvision switches eagerly to a per-class loop above 1000
    boxes on the CPU but traces the trick; float32 rounding of the shifted coordinates (about
    0.008 px at 80 classes on 1333 px images) could then make eager and exported NMS keep
    different boxes whose IoU lies at the threshold.

    Args:
        boxes: [D, 4] XYXY pixels. scores: [D]. classes: [D] long, >= 0.
        iou_thresh: a box is removed by a higher-scored box of its class with IoU > it.

    Returns:
        [D'] long indices of the kept boxes, by decreasing score.
    """
    largest = torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max()  # defined for D = 0 too
    offsets = classes.to(boxes.dtype) * (largest + 1)
    return nms(boxes + offsets[:, None], scores, iou_thresh)


def check_peak_args(kernel: int, non_peak_factor: float) -> None:
    """Check the settings of :func:`peak_factors`.

    Args:
        kernel: ``MODEL.DENSE.PEAK_KERNEL``, the max-pooling window's side in points: an odd
            whole number >= 3 (CenterNet, Zhou et al. 2019, Sec. 4: 3).
        non_peak_factor: ``MODEL.DENSE.NON_PEAK_SCORE_FACTOR``, a number in [0, 1).

    Raises:
        ValueError: naming the offending key and value.
    """
    if isinstance(kernel, bool) or not isinstance(kernel, int) or kernel < 3 or kernel % 2 == 0:
        raise ValueError(f"MODEL.DENSE.PEAK_KERNEL must be an odd whole number >= 3 (the side of the max-pooling "
                         f"window, in points), got {kernel!r}")
    if isinstance(non_peak_factor, bool) or not isinstance(non_peak_factor, (int, float)) \
            or not 0.0 <= non_peak_factor < 1.0:
        raise ValueError(f"MODEL.DENSE.NON_PEAK_SCORE_FACTOR must be a number in [0, 1) (0: non-peaks dropped), "
                         f"got {non_peak_factor!r}")


def peak_factors(scores: List[torch.Tensor], level_shapes: Sequence[Tuple], kernel: int = 3,
                 non_peak_factor: float = 0.0) -> List[torch.Tensor]:
    """NMS-free selection by score peaks: per level and class, a point whose score is the maximum
    of the ``kernel`` x ``kernel`` window of points around it is a peak and keeps its score; any
    other point's score is multiplied by ``non_peak_factor``. CenterNet's decoding (Zhou et al.,
    "Objects as Points", arXiv 1904.07850, Sec. 4: peaks are the points whose value is >= their 8
    neighbours, found by a 3x3 max pooling, "no IoU-based non-maxima suppression"), applied to a
    dense detector's per-level score maps. Neighbours of a peak are its duplicates: they are
    pushed below it (and, with a factor > 0, kept at the tail of the ranking, where COCO AP still
    counts their recall; every non-peak then scores at most ``non_peak_factor``, so a score
    threshold above it shows peaks only). Levels are independent: an object whose peaks
    fall on two levels keeps both.

    A max pooling and element-wise operations: it runs eagerly and in the traced export alike.
    Points that tie with their window's maximum are all peaks.

    Args:
        scores: per level [R_l, K] scores in [0, 1], the level's points in row-major order
            (R_l = H_l * W_l, the order of the shift generator's points).
        level_shapes: per level (H_l, W_l), the level's grid in points (ints, or traced sizes).
        kernel: odd >= 3, the window's side in points (CenterNet: 3).
        non_peak_factor: in [0, 1), the factor of a non-peak (0: its score drops below any
            positive score threshold).

    Returns:
        per level [R_l, K] float factors: 1 at the peaks, ``non_peak_factor`` elsewhere (multiply
        the scores by them, and any other score the threshold applies to).

    Raises:
        ValueError: a bad ``kernel`` or ``non_peak_factor`` (:func:`check_peak_args`); levels of
            ``scores`` and ``level_shapes`` of different lengths (eager only).
    """
    check_peak_args(kernel, non_peak_factor)
    if not torch.jit.is_tracing() and len(scores) != len(level_shapes):
        raise ValueError(f"{len(scores)} levels of scores but {len(level_shapes)} level shapes")
    out = []
    for level_scores, (height, width) in zip(scores, level_shapes):
        num_classes = level_scores.shape[1]
        grid = level_scores.t().reshape(1, num_classes, height, width)
        window_max = F.max_pool2d(grid, kernel, stride=1, padding=kernel // 2)
        factor = torch.where(grid >= window_max, torch.ones_like(grid), torch.full_like(grid, float(non_peak_factor)))
        out.append(factor.reshape(num_classes, -1).t())
    return out


def score_voting(boxes: torch.Tensor, classes: torch.Tensor, candidate_boxes: torch.Tensor,
                 candidate_scores: torch.Tensor, candidate_classes: torch.Tensor, sigma: float) -> torch.Tensor:
    """Score voting (PAA, Kim & Lee, ECCV 2020, "score voting"; MMDetection ``paa_head.py``
    ``score_voting``): each detection's box becomes the average of the candidate boxes of its class
    that overlap it (IoU > 0.01), weighted by p_i = score_i * exp(-(1 - IoU_i)^2 / sigma). A box
    that the detection's neighbours place alike stays; a box the others place elsewhere moves
    toward them, by their scores. Scores and classes are unchanged.

    Plain tensor operations (an IoU matrix and a weighted sum), no data-dependent branch: it runs
    eagerly and in the traced export alike.

    Args:
        boxes: [D, 4] XYXY pixels, the kept detections (after NMS). classes: [D] long.
        candidate_boxes: [C, 4] XYXY pixels, the candidates NMS ran on (they include the kept
            boxes). candidate_scores: [C] in [0, 1]. candidate_classes: [C] long.
        sigma: > 0, the width of the IoU weighting (PAA: 0.025; larger lets looser overlaps vote).

    Returns:
        [D, 4] voted boxes, XYXY pixels. A detection whose voters' weights sum to 0 (every such
        score is 0, or the exponential underflows) keeps its box.
    """
    iou = box_iou(boxes, candidate_boxes)  # [D, C]
    voters = (iou > 0.01) & (classes[:, None] == candidate_classes[None, :])
    weights = candidate_scores[None, :] * torch.exp(-(1.0 - iou) ** 2 / sigma) * voters
    total = weights.sum(dim=1, keepdim=True)
    voted = (weights @ candidate_boxes) / torch.where(total > 0, total, torch.ones_like(total))
    return torch.where(total > 0, voted, boxes)


def dense_detections(
    scores: List[torch.Tensor],
    ltrb: List[torch.Tensor],
    shifts: List[torch.Tensor],
    image_size: Tuple,
    score_thresh: float,
    topk_candidates: int,
    nms_thresh: Optional[float],
    max_detections: int,
    candidate_scores: Optional[List[torch.Tensor]] = None,
    topk_by: str = "score",
    clip_boxes: bool = True,
    topk_within_points: bool = False,
    voting_sigma: Optional[float] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Turn one image's per-level dense predictions into detections: per level the candidates of
    :func:`select_candidates`, decoded to boxes (FCOS Eq. 1 inverted), clipped, empty boxes
    (width or height <= 0) dropped, then class-aware NMS (FCOS Sec. 3.1 and the authors' code)
    or, NMS-free, the top scores (DeFCN, Wang et al. CVPR 2021, Sec. 3: one-to-one training makes
    duplicates rare, so no NMS is needed). Dropping empty boxes before NMS is MMDetection's
    ``min_bbox_size=0``; detectron2 drops them after, which could leave fewer detections.

    Plain tensors in and out, no data-dependent Python branch: the same function runs eagerly
    and in the traced export (``d2_anchorfree.export``), where ``image_size`` holds traced sizes.

    Args:
        scores: per level [R_i, K] final scores in [0, 1] (e.g. sqrt(cls * centerness)).
        ltrb: per level [R_i, 4] distances in pixels.
        shifts: per level [R_i, 2] points (x, y) in pixels.
        image_size: (height, width) of the network input in pixels, for clipping: ints
            eagerly, 0-dim tensors (traced sizes) while tracing.
        score_thresh, topk_candidates: per-level candidate selection.
        nms_thresh: class-aware NMS IoU threshold (:func:`class_aware_nms`: a box is removed
            by a higher-scored one of its class with IoU > ``nms_thresh``); ``None`` for NMS-free
            inference (top ``max_detections`` over all levels and classes; DeFCN, Sec. 3).
        max_detections: detections kept per image (TEST.DETECTIONS_PER_IMAGE).
        candidate_scores: optional per level [R_i, K] scores that ``score_thresh`` applies to
            (see :func:`select_candidates`); default: ``scores``.
        topk_by: "score" or "candidate", see :func:`select_candidates`.
        clip_boxes: clip the candidate boxes to ``image_size`` before NMS / top-k (False: TOOD's
            reference; the caller clips the final detections).
        topk_within_points: per level at most min(``topk_candidates``, R_i) candidates (DeFCN's
            cvpods ``inference_single_image``: a small level such as P7 keeps fewer pairs).
        voting_sigma: with NMS, :func:`score_voting` of the kept boxes over all candidates with
            this sigma (``MODEL.DENSE.SCORE_VOTING_SIGMA``); None: the kept boxes as they are.

    Returns:
        (boxes [D, 4] XYXY pixels (clipped to the image with ``clip_boxes``), scores [D],
        classes [D] long), D <= max_detections, sorted by score.

    Raises:
        ValueError: per-level lists of different lengths (``scores``, ``ltrb``, ``shifts``,
            ``candidate_scores``), ``voting_sigma`` without NMS or not > 0, or see
            :func:`select_candidates`.
        FloatingPointError: a NaN or infinite score or distance (eager only).
    """
    if voting_sigma is not None and (nms_thresh is None or not voting_sigma > 0):
        raise ValueError(f"score voting needs NMS and a sigma > 0 (MODEL.DENSE.SCORE_VOTING_SIGMA), "
                         f"got sigma {voting_sigma} with nms_thresh {nms_thresh}")
    if not len(scores) == len(ltrb) == len(shifts):
        raise ValueError(f"levels differ: {len(scores)} scores, {len(ltrb)} ltrb, {len(shifts)} shifts")
    if candidate_scores is not None and len(candidate_scores) != len(scores):
        raise ValueError(f"levels differ: {len(scores)} scores, {len(candidate_scores)} candidate_scores")
    gates = candidate_scores if candidate_scores is not None else [None] * len(scores)
    all_boxes, all_scores, all_classes = [], [], []
    for level, (s, d, p, gate) in enumerate(zip(scores, ltrb, shifts, gates)):
        if not torch.jit.is_tracing():  # a check on values: eager only
            _check_finite(level, s, d, gate)
        sc, point_idx, cls = select_candidates(s, score_thresh, topk_candidates, gate, topk_by,
                                               topk_within_points)
        all_boxes.append(ltrb_to_boxes(p[point_idx], d[point_idx]))
        all_scores.append(sc)
        all_classes.append(cls)
    boxes = torch.cat(all_boxes)
    if clip_boxes:
        boxes = clip_boxes_to_image(boxes, image_size)
    det_scores = torch.cat(all_scores)
    classes = torch.cat(all_classes)
    nonempty = nonempty_boxes(boxes)
    boxes, det_scores, classes = boxes[nonempty], det_scores[nonempty], classes[nonempty]
    if nms_thresh is None:
        keep = det_scores.argsort(descending=True)[:max_detections]
        return boxes[keep], det_scores[keep], classes[keep]
    keep = class_aware_nms(boxes, det_scores, classes, nms_thresh)[:max_detections]
    kept = boxes[keep]
    if voting_sigma is not None:
        kept = score_voting(kept, classes[keep], boxes, det_scores, classes, voting_sigma)
    return kept, det_scores[keep], classes[keep]


def dense_inference(scores: List[torch.Tensor], ltrb: List[torch.Tensor], shifts: List[torch.Tensor],
                    image_size: Tuple[int, int], score_thresh: float, topk_candidates: int,
                    nms_thresh: Optional[float], max_detections: int,
                    candidate_scores: Optional[List[torch.Tensor]] = None, topk_by: str = "score",
                    clip_boxes: bool = True, topk_within_points: bool = False,
                    voting_sigma: Optional[float] = None) -> Instances:
    """:func:`dense_detections` as detectron2 ``Instances`` of ``image_size`` with ``pred_boxes``
    (Boxes, XYXY pixels), ``scores`` [D] and ``pred_classes`` [D] long (same arguments and errors)."""
    detections = dense_detections(scores, ltrb, shifts, image_size, score_thresh, topk_candidates, nms_thresh,
                                  max_detections, candidate_scores, topk_by, clip_boxes, topk_within_points,
                                  voting_sigma)
    return detections_to_instances(image_size, *detections)


def detections_to_instances(image_size: Tuple[int, int], boxes: torch.Tensor, scores: torch.Tensor,
                            classes: torch.Tensor) -> Instances:
    """detectron2 ``Instances`` of ``image_size`` (height, width) with ``pred_boxes`` (Boxes of
    ``boxes`` [D, 4] XYXY pixels), ``scores`` [D] and ``pred_classes`` [D] long."""
    result = Instances(image_size)
    result.pred_boxes = Boxes(boxes)
    result.scores = scores
    result.pred_classes = classes
    return result

"""Inference post-processing shared by the dense detectors: candidates, decode, NMS or NMS-free."""
from typing import List, Optional, Tuple

import torch

from detectron2.layers import batched_nms
from detectron2.structures import Boxes, Instances

from .box_coder import ltrb_to_boxes


def select_candidates(scores: torch.Tensor, score_thresh: float, topk: int) -> Tuple[torch.Tensor, ...]:
    """Keep the ``topk`` highest (point, class) scores above ``score_thresh`` on one level.

    Args:
        scores: [R, K] scores in [0, 1].
        score_thresh: keep scores strictly above it. topk: at most this many (>= 1).

    Returns:
        (scores [M], point_idx [M] long, class_idx [M] long), M <= topk, sorted by score desc.
    """
    flat = scores.flatten()
    keep = torch.nonzero(flat > score_thresh).squeeze(1)
    kept = flat[keep]
    if kept.numel() > topk:
        kept, order = kept.topk(topk)
        keep = keep[order]
    else:
        kept, order = kept.sort(descending=True)
        keep = keep[order]
    num_classes = scores.shape[1]
    return kept, keep // num_classes, keep % num_classes


def dense_inference(
    scores: List[torch.Tensor],
    ltrb: List[torch.Tensor],
    shifts: List[torch.Tensor],
    image_size: Tuple[int, int],
    score_thresh: float,
    topk_candidates: int,
    nms_thresh: Optional[float],
    max_detections: int,
) -> Instances:
    """Turn one image's per-level dense predictions into detections.

    Args:
        scores: per level [R_i, K] final scores in [0, 1] (e.g. sqrt(cls * centerness)).
        ltrb: per level [R_i, 4] distances in pixels.
        shifts: per level [R_i, 2] points (x, y) in pixels.
        image_size: (height, width) of the network input, for clipping.
        score_thresh, topk_candidates: per-level candidate selection.
        nms_thresh: class-aware NMS IoU threshold; ``None`` for NMS-free inference (top
            ``max_detections`` over all levels and classes; DeFCN, Wang et al. CVPR 2021, Sec. 3).
        max_detections: detections kept per image (TEST.DETECTIONS_PER_IMAGE).

    Returns:
        Instances with ``pred_boxes`` (Boxes, XYXY pixels clipped to the image), ``scores`` [D],
        ``pred_classes`` [D] long, D <= max_detections, sorted by score.
    """
    all_boxes, all_scores, all_classes = [], [], []
    for s, d, p in zip(scores, ltrb, shifts):
        sc, point_idx, cls = select_candidates(s, score_thresh, topk_candidates)
        all_boxes.append(ltrb_to_boxes(p[point_idx], d[point_idx]))
        all_scores.append(sc)
        all_classes.append(cls)
    boxes = Boxes(torch.cat(all_boxes))
    boxes.clip(image_size)
    det_scores = torch.cat(all_scores)
    classes = torch.cat(all_classes)
    if nms_thresh is not None:
        keep = batched_nms(boxes.tensor, det_scores, classes, nms_thresh)[:max_detections]
    else:
        keep = det_scores.argsort(descending=True)[:max_detections]
    result = Instances(image_size)
    result.pred_boxes = boxes[keep]
    result.scores = det_scores[keep]
    result.pred_classes = classes[keep]
    return result

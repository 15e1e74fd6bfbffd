"""Merging detections that come from different groups (windows of sliced inference, augmentations
of test-time augmentation): the one place where duplicates across groups are removed.

Only pairs from *different* groups are ever merged. Within a group the detector already decided:
its class-aware NMS, or, for an NMS-free detector (DeFCN's one-to-one assignment, Wang et al.
CVPR 2021), its one prediction per object; merging inside a group would undo that decision. So an
NMS-free detector stays NMS-free inside each window / augmentation, and only the duplicates that
slicing or augmentation themselves create (the same object seen twice) are merged.

Steps: the caller finds the matching pairs (its own geometry: ``slicing.cross_window_pairs``,
``tta``'s IoU), :func:`greedy_clusters` groups them in score order (sahi's GREEDYNMM idea, Akyon
et al. ICIP 2022: each detection joins the best-scoring kept detection it matches), and
:func:`fuse_clusters` turns each cluster into one detection.
"""
from typing import Optional

import numpy as np
import torch

__all__ = ["MERGE_METHODS", "check_merge", "greedy_clusters", "fuse_clusters", "same_class_iou_pairs"]

#: "nms": a cluster keeps its best detection as is; "nmm": the best detection, with each side that
#: a window edge cut taken from the best detection of the cluster not cut there (union if none).
MERGE_METHODS = ("nms", "nmm")


def check_merge(key: str, method: str, iou_thresh: float, methods=MERGE_METHODS) -> None:
    """Raise ``ValueError`` naming ``key`` when ``method`` is not in ``methods`` or
    ``iou_thresh`` (key ``<key>_IOU``) is outside (0, 1]."""
    if method not in methods:
        raise ValueError(f"{key} must be one of {tuple(methods)}, got {method!r}")
    if not 0.0 < float(iou_thresh) <= 1.0:
        raise ValueError(f"{key}_IOU must be in (0, 1], got {iou_thresh}")


def same_class_iou_pairs(boxes: torch.Tensor, classes: torch.Tensor, groups: torch.Tensor,
                         iou_thresh: float) -> torch.Tensor:
    """All pairs (i, j), i < j, of the same class and of different groups with IoU >= ``iou_thresh``.

    Args:
        boxes: [N, 4] XYXY pixels. classes: [N] long. groups: [N] long group ids.
        iou_thresh: in (0, 1].

    Returns:
        [P, 2] long tensor of indices into the N detections. Memory is O(N_c^2) per class c
        (use for a few thousand detections, e.g. the augmentations of one image or window).
    """
    from torchvision.ops import box_iou

    pairs = []
    for c in classes.unique().tolist():
        idx = torch.nonzero(classes == c).squeeze(1)
        iou = box_iou(boxes[idx], boxes[idx])
        ok = (iou >= iou_thresh) & (groups[idx][:, None] != groups[idx][None, :])
        i, j = torch.nonzero(torch.triu(ok, diagonal=1), as_tuple=True)
        pairs.append(torch.stack([idx[i], idx[j]], dim=1))
    return torch.cat(pairs) if pairs else torch.zeros((0, 2), dtype=torch.long)


def greedy_clusters(scores: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Greedy clustering of matching detections in descending score order.

    The best-scoring detection not yet in a cluster starts one and takes every detection it is
    paired with that is not yet in a cluster (matches are those of the starting detection's own
    box, as in NMS and sahi's greedy NMM; a chain a-b-c with a ~ b, b ~ c, a !~ c leaves c alone
    when b joined a).

    Args:
        scores: [N] detection scores. pairs: [P, 2] long, unordered matching pairs.

    Returns:
        [N] long: the index of the detection starting each detection's cluster (itself for the
        detections that are kept). Ties in score are broken by index (stable).
    """
    n = len(scores)
    owner = np.arange(n)
    if len(pairs) == 0:
        return torch.as_tensor(owner, dtype=torch.long)
    p = pairs.cpu().numpy()
    both = np.concatenate([p, p[:, ::-1]])
    both = both[np.argsort(both[:, 0], kind="stable")]
    starts = np.searchsorted(both[:, 0], np.arange(n + 1))
    order = torch.argsort(scores.cpu(), descending=True, stable=True).numpy()
    linked = np.zeros(n, dtype=bool)
    linked[p.ravel()] = True
    taken = np.zeros(n, dtype=bool)
    for i in order[linked[order]]:  # only detections with a match need the loop
        if taken[i]:
            continue
        taken[i] = True
        for j in both[starts[i]:starts[i + 1], 1]:
            if not taken[j]:
                taken[j] = True
                owner[j] = i
    return torch.as_tensor(owner, dtype=torch.long)


def fuse_clusters(boxes: torch.Tensor, scores: torch.Tensor, owner: torch.Tensor, method: str,
                  cut: Optional[torch.Tensor] = None):
    """One detection per cluster of :func:`greedy_clusters`.

    Args:
        boxes: [N, 4] XYXY pixels. scores: [N]. owner: [N] long from :func:`greedy_clusters`.
        method: "nms" (the starting detection, unchanged) or "nmm" (the starting detection whose
            sides cut by a window edge come from the best detection of its cluster not cut on that
            side, else the cluster's extreme value on that side: the union).
        cut: [N, 4] bool, which sides (x0, y0, x1, y1) of each box lie on an inner window edge;
            None: no side is cut (then "nmm" returns the starting boxes, like "nms").

    Returns:
        (keep [M] long indices of the kept detections, in descending score order; fused boxes
        [M, 4] XYXY pixels). Scores are those of the kept detections (the cluster's maximum).

    Raises:
        ValueError: unknown ``method``.
    """
    if method not in MERGE_METHODS:
        raise ValueError(f"merge method must be one of {MERGE_METHODS}, got {method!r}")
    n = len(scores)
    keep = torch.nonzero(owner == torch.arange(n)).squeeze(1)
    keep = keep[scores[keep].argsort(descending=True, stable=True)]
    fused = boxes[keep].clone()
    if method == "nms" or cut is None or n == 0:
        return keep, fused
    slot = torch.full((n,), -1, dtype=torch.long)
    slot[keep] = torch.arange(len(keep))
    cluster = slot[owner]  # [N] row of ``fused`` each detection belongs to
    for side in range(4):
        larger_is_out = side >= 2  # x1, y1 grow outwards; x0, y0 shrink outwards
        needs = cut[keep, side]
        if not bool(needs.any()):
            continue
        # the best-scoring member of each cluster that is not cut on this side (ties: lowest index)
        uncut = torch.nonzero(~cut[:, side]).squeeze(1)
        best_score = torch.full((len(keep),), -1.0, dtype=scores.dtype).scatter_reduce(
            0, cluster[uncut], scores[uncut], reduce="amax")
        top = uncut[scores[uncut] == best_score[cluster[uncut]]]
        best_idx = torch.full((len(keep),), n, dtype=torch.long).scatter_reduce(0, cluster[top], top, reduce="amin")
        has_best = best_idx < n
        best = boxes[best_idx.clamp(max=n - 1), side]
        reduce = "amax" if larger_is_out else "amin"
        extreme = fused[:, side].clone().scatter_reduce(0, cluster, boxes[:, side], reduce=reduce)
        value = torch.where(has_best, best, extreme)
        fused[needs, side] = value[needs]
    return keep, fused

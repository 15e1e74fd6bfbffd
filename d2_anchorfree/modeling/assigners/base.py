"""Shared pieces of the assigners: the registry, the label convention, chunking and crowd helpers."""
import math
from typing import Iterator, List, NamedTuple, Optional, Tuple

import torch

from detectron2.structures import Instances
from detectron2.utils.registry import Registry

from ..geometry import inside_boxes

ASSIGNER_REGISTRY = Registry("ASSIGNER")
ASSIGNER_REGISTRY.__doc__ = """
Registry for target assigners. An assigner is a pure callable: per image it takes the points of
every level and that image's ground truth (and, for prediction-aware ones such as POTO, the
predictions) and returns ``matched_idxs`` [R] (long): the index of the GT each point learns from,
``BACKGROUND`` (-1) or ``IGNORE`` (-2). No module state, no logging; it runs under no_grad.
An assigner that gives every GT at most one positive has ``one_to_one`` True (POTO, TAL with
top-1); others have no such attribute or False.
"""

BACKGROUND = -1
IGNORE = -2


class AssignResult(NamedTuple):
    """What an assigner returns for one image.

    matched: [R] long, per point the index of the GT it learns from, ``BACKGROUND`` (-1) or
        ``IGNORE`` (-2, left out of the classification loss).
    quality: optional [R] float in [0, 1], a soft target per point (meaningful at positives,
        0 elsewhere), e.g. TOOD's normalized alignment metric or the IoU of ATSS's anchor with its
        GT; ``None`` when the assigner has none.
    """

    matched: torch.Tensor
    quality: Optional[torch.Tensor] = None


def gt_chunks(num_points: int, num_gt: int, max_elements: int) -> Iterator[Tuple[int, int]]:
    """Split GT indices [0, num_gt) into slices so that num_points * slice_len <= max_elements.

    Yields:
        (start, end) pairs covering [0, num_gt) in order; at least one GT per slice.
    """
    step = max(1, max_elements // max(num_points, 1))
    for start in range(0, num_gt, step):
        yield start, min(start + step, num_gt)


def level_ranges(sizes_of_interest: List[float], num_levels: int) -> List[Tuple[float, float]]:
    """FCOS regress ranges per level from the boundaries ``SIZES_OF_INTEREST``.

    Returns:
        list of (lo, hi) in pixels: [(0, s0), (s0, s1), ..., (s_{L-2}, inf)].

    Raises:
        ValueError: if there are not ``num_levels - 1`` increasing boundaries.
    """
    sizes = [float(s) for s in sizes_of_interest]
    if len(sizes) != num_levels - 1 or any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise ValueError(
            f"MODEL.DENSE.SIZES_OF_INTEREST must hold {num_levels - 1} increasing values for "
            f"{num_levels} levels, got {sizes_of_interest}"
        )
    bounds = [0.0] + sizes + [math.inf]
    return list(zip(bounds[:-1], bounds[1:]))


def crowd_flags(gt: Instances) -> torch.Tensor:
    """[G] bool on the device of ``gt.gt_boxes``: ``gt.gt_is_crowd`` if present, else all False
    (COCO ``iscrowd`` boxes; detectron2's mapper drops them unless asked to keep them)."""
    device = gt.gt_boxes.tensor.device
    if gt.has("gt_is_crowd"):
        return gt.gt_is_crowd.bool().to(device)
    return torch.zeros(len(gt), dtype=torch.bool, device=device)


def ignore_inside_crowd(matched: torch.Tensor, points: torch.Tensor, boxes: torch.Tensor,
                        crowd: torch.Tensor, chunk_elements: int) -> torch.Tensor:
    """Turn BACKGROUND points that lie strictly inside a crowd box into IGNORE.

    The rule of every assigner here (FCOS, ATSS, POTO and its auxiliary assignment; the FCOS
    authors' code ignores locations inside crowd boxes): crowd boxes never produce positives, and
    the locations they cover are left out of the classification loss instead of being negatives.
    A point that is positive for a normal GT stays positive.

    Args:
        matched: [R] long labels (GT index, BACKGROUND or IGNORE), modified in place.
        points: [R, 2] (x, y) pixels. boxes: [G, 4] XYXY pixels. crowd: [G] bool.
        chunk_elements: no [R x chunk] tensor is larger than this (>= 1; at least one box per
            chunk).

    Returns:
        The updated ``matched`` [R].
    """
    if not crowd.any():
        return matched
    crowd_boxes = boxes[crowd.to(boxes.device)].to(device=points.device, dtype=points.dtype)
    in_crowd = torch.zeros(len(points), dtype=torch.bool, device=points.device)
    for start, end in gt_chunks(len(points), len(crowd_boxes), chunk_elements):
        in_crowd |= inside_boxes(points, crowd_boxes[start:end]).any(dim=1)
    matched[(matched == BACKGROUND) & in_crowd] = IGNORE
    return matched

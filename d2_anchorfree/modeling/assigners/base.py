"""Shared pieces of the assigners: the registry, the label convention, chunking helpers."""
import math
from typing import Iterator, List, Tuple

import torch

from detectron2.utils.registry import Registry

ASSIGNER_REGISTRY = Registry("ASSIGNER")
ASSIGNER_REGISTRY.__doc__ = """
Registry for target assigners. An assigner is a pure callable: per image it takes the points of
every level and that image's ground truth (and, for prediction-aware ones such as POTO, the
predictions) and returns ``matched_idxs`` [R] (long): the index of the GT each point learns from,
``BACKGROUND`` (-1) or ``IGNORE`` (-2). No module state, no logging; it runs under no_grad.
"""

BACKGROUND = -1
IGNORE = -2


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
            f"MODEL.FCOS.SIZES_OF_INTEREST must hold {num_levels - 1} increasing values for "
            f"{num_levels} levels, got {sizes_of_interest}"
        )
    bounds = [0.0] + sizes + [math.inf]
    return list(zip(bounds[:-1], bounds[1:]))


def cat_points(shifts: List[torch.Tensor], strides: List[int], per_level_values=None):
    """Concatenate per-level points and broadcast per-level scalars to per-point vectors.

    Args:
        shifts: per level [R_i, 2] points (x, y) in pixels.
        strides: per level stride in pixels.
        per_level_values: optional list of per-level tuples of floats to broadcast as well.

    Returns:
        points [R, 2], strides [R] (float), and one [R] tensor per element of the tuples.
    """
    points = torch.cat(shifts, dim=0)
    counts = [len(s) for s in shifts]
    device = points.device
    stride_vec = torch.repeat_interleave(
        torch.tensor(strides, dtype=points.dtype, device=device), torch.tensor(counts, device=device)
    )
    extra = []
    if per_level_values is not None:
        for column in zip(*per_level_values):
            extra.append(
                torch.repeat_interleave(
                    torch.tensor(column, dtype=points.dtype, device=device),
                    torch.tensor(counts, device=device),
                )
            )
    return (points, stride_vec, *extra)

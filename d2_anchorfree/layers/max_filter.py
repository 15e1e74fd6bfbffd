"""3D Max Filtering (3DMF) of DeFCN: a max over neighbouring FPN levels and a local spatial window.

Source: Wang et al., "End-to-End Object Detection with Fully Convolutional Network", CVPR 2021,
Sec. 3.3 and Fig. 3 (the head of one FPN stage). The neighbour definition follows the authors'
code (``MaxFiltering`` in Megvii-BaseDetection/DeFCN).
"""
from typing import List

import torch
import torch.nn.functional as F
from torch import nn

from .level_norm import apply_norm, level_norm


def check_max_filter_args(kernel_size: int, tau: int):
    """Validate the 3DMF window sizes.

    Raises:
        ValueError: ``kernel_size`` not an odd integer >= 1 (MODEL.MAX_FILTER.KERNEL), or
            ``tau`` not an even integer >= 0 (MODEL.MAX_FILTER.TAU; the window of tau + 1
            levels must be centred on the filtered level).
    """
    if int(kernel_size) != kernel_size or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"MODEL.MAX_FILTER.KERNEL must be an odd integer >= 1, got {kernel_size}")
    if int(tau) != tau or tau < 0 or tau % 2 == 1:
        raise ValueError(
            f"MODEL.MAX_FILTER.TAU must be an even integer >= 0 (tau + 1 levels centred on "
            f"each level), got {tau}"
        )


def level_window(level: int, num_levels: int, tau: int) -> range:
    """Levels whose features enter the max of ``level``: ``level - tau/2 .. level + tau/2``,
    clipped to ``[0, num_levels)`` (so the first and last levels see fewer neighbours, as in
    the authors' code, where max_pool3d pads the missing levels with -inf)."""
    margin = tau // 2
    return range(max(0, level - margin), min(num_levels, level + margin + 1))


def max_filter_3d(levels: List[torch.Tensor], kernel_size: int = 3, tau: int = 2) -> List[torch.Tensor]:
    """The parameter-free part of 3DMF: a max over scale and space (DeFCN Sec. 3.3).

    For level i (levels ordered finest first, e.g. P3..P7) the output is::

        out_i[n, c, y, x] = max_{j in window(i)} max_{|dy|, |dx| <= k // 2} up_j->i(levels[j])[n, c, y+dy, x+dx]

    where ``window(i)`` = levels ``i - tau/2 .. i + tau/2`` clipped at the ends (see
    :func:`level_window`), ``up_j->i`` resizes level j to level i's size with bilinear
    interpolation (``align_corners=False``; level i itself is used as is), and positions outside
    the map are ignored (-inf padding). This equals ``max_pool3d`` with kernel
    ``(tau + 1, k, k)``, stride 1 and padding ``(tau // 2, k // 2, k // 2)`` over the stacked
    [N, C, |window(i)|, H_i, W_i] tensor, read at level i's slice (the authors' formulation).

    Args:
        levels: L >= 1 tensors [N, C, H_i, W_i] (same N and C on every level).
        kernel_size: spatial window k, odd >= 1 (cells of level i).
        tau: scale window, even >= 0: tau + 1 levels centred on level i.

    Returns:
        list of L tensors [N, C, H_i, W_i], same dtype as the input.

    Raises:
        ValueError: bad ``kernel_size``/``tau`` (see :func:`check_max_filter_args`), no level,
            or levels whose N or C differ.
    """
    check_max_filter_args(kernel_size, tau)
    if len(levels) == 0:
        raise ValueError("max_filter_3d needs at least one feature level")
    shapes = {tuple(x.shape[:2]) for x in levels}
    if not torch.jit.is_tracing() and (len(shapes) != 1 or any(x.dim() != 4 for x in levels)):
        raise ValueError(
            f"max_filter_3d needs [N, C, H_i, W_i] levels with equal N and C, got "
            f"{[tuple(x.shape) for x in levels]}"
        )
    outputs = []
    for i, x in enumerate(levels):
        size = x.shape[-2:]
        scale_max = None
        for j in level_window(i, len(levels), tau):
            y = x if j == i else F.interpolate(levels[j], size=size, mode="bilinear", align_corners=False)
            scale_max = y if scale_max is None else torch.max(scale_max, y)
        if kernel_size > 1:
            scale_max = F.max_pool2d(scale_max, kernel_size, stride=1, padding=kernel_size // 2)
        outputs.append(scale_max)
    return outputs


class MaxFiltering3D(nn.Module):
    """3DMF block of DeFCN (Sec. 3.3, Fig. 3): conv -> 3D max filter -> + input -> norm -> ReLU.

    Per level i, with ``x_i`` [N, C, H_i, W_i] (the box-tower features in DeFCN)::

        out_i = relu(norm(max_filter_3d([conv(x_0), ..., conv(x_{L-1})], k, tau)[i] + x_i))

    The 3x3 conv (C -> C, with bias) is shared by all levels, and so is a GroupNorm; a BatchNorm
    is per level (:func:`~d2_anchorfree.layers.level_norm.level_norm`). Its output feeds
    the head's "filter" branch (a 3x3 conv to one channel whose sigmoid multiplies the class
    score).
    """

    def __init__(self, channels: int, kernel_size: int = 3, tau: int = 2, norm: str = "GN", num_levels: int = 1):
        """
        Args:
            channels: C, the channel count of every level (multiple of 32 for "GN").
            kernel_size, tau: see :func:`max_filter_3d`.
            norm: "GN" (32 groups, the paper), "BN", "" (none: the authors' "3dmf_wo_gn").
            num_levels: L, the levels it filters (one BatchNorm each; GN is shared).

        Raises:
            ValueError: bad window sizes, or "GN" with channels not divisible by 32.
        """
        super().__init__()
        check_max_filter_args(kernel_size, tau)
        if norm == "GN" and channels % 32 != 0:
            raise ValueError(f"3DMF NORM 'GN' uses 32 groups; channels {channels} not divisible by 32")
        self.kernel_size = int(kernel_size)
        self.tau = int(tau)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm = level_norm(norm, channels, num_levels)

    def forward(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        """
        Args:
            features: L tensors [N, C, H_i, W_i], finest level first.

        Returns:
            L tensors [N, C, H_i, W_i] (>= 0 after the ReLU).
        """
        filtered = max_filter_3d([self.conv(x) for x in features], self.kernel_size, self.tau)
        return [F.relu(apply_norm(self.norm, m + x, level)) for level, (m, x) in enumerate(zip(filtered, features))]

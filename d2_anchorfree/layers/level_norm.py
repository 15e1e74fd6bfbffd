"""Norm layers of convs shared by the FPN levels of a head: one BatchNorm per level."""
from typing import Optional

import torch
from torch import nn

from detectron2.layers import get_norm

# detectron2 ``get_norm`` names whose layers normalize with batch statistics: shared by the levels
# of a head, one such layer would mix the statistics of every level (its running averages end
# dominated by the last level called, P7), so the head gets one per level.
BATCH_NORMS = ("BN", "SyncBN", "naiveSyncBN", "nnSyncBN", "FrozenBN")


class PerLevelNorm(nn.Module):
    """One norm layer per FPN level behind a shared conv: ``forward(x, level)`` normalizes
    ``x`` [N, C, H, W] with level ``level``'s own statistics and affine parameters.

    A head's convs are shared by the levels, but BatchNorm's statistics must not be: the levels'
    feature statistics differ, and one running average over all of them normalizes every level
    at test time with statistics it was not trained with. detectron2's RetinaNet head
    (``CycleBatchNormList``, "domain-specific BN") and MMDetection's RTMDet head (``RTMDetSepBNHead``,
    shared convs with separate BN) keep one BN per level for this reason; the level is passed
    explicitly here instead of cycling.
    """

    def __init__(self, norm: str, channels: int, num_levels: int):
        """
        Args:
            norm: a :data:`BATCH_NORMS` name (detectron2's ``get_norm``).
            channels: C. num_levels: L >= 1.

        Raises:
            ValueError: ``num_levels`` < 1.
        """
        super().__init__()
        if num_levels < 1:
            raise ValueError(f"num_levels must be >= 1, got {num_levels}")
        self.norms = nn.ModuleList([get_norm(norm, channels) for _ in range(num_levels)])

    def forward(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """x: [N, C, H, W] of level ``level`` (0 = the finest) -> [N, C, H, W]."""
        return self.norms[level](x)


def level_norm(norm: str, channels: int, num_levels: int) -> Optional[nn.Module]:
    """The norm layer of a conv shared by ``num_levels`` levels: :class:`PerLevelNorm` for a
    batch-statistics norm (:data:`BATCH_NORMS`) when ``num_levels`` > 1, else detectron2's
    ``get_norm(norm, channels)`` (GroupNorm has no running statistics and stays shared, as in
    the papers; "" gives None)."""
    if norm in BATCH_NORMS and num_levels > 1:
        return PerLevelNorm(norm, channels, num_levels)
    return get_norm(norm, channels)


def apply_norm(norm: Optional[nn.Module], x: torch.Tensor, level: int) -> torch.Tensor:
    """``norm`` of :func:`level_norm` applied to ``x`` of level ``level`` (None: ``x`` unchanged)."""
    if norm is None:
        return x
    if isinstance(norm, PerLevelNorm):
        return norm(x, level)
    return norm(x)

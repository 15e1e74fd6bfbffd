"""Shift (location) generators: one point per feature-map cell, in input-image pixels."""
from collections import OrderedDict
from typing import List, Tuple

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.utils.registry import Registry

SHIFT_GENERATOR_REGISTRY = Registry("SHIFT_GENERATOR")
SHIFT_GENERATOR_REGISTRY.__doc__ = """
Registry for shift (location) generators: modules mapping a list of feature maps to the
input-image coordinates of their cells. Selected by ``MODEL.SHIFT_GENERATOR.NAME``.
"""


@SHIFT_GENERATOR_REGISTRY.register()
class ShiftGenerator(nn.Module):
    """The (x, y) pixel position that each cell of each feature level looks at.

    For level i with stride s_i, cell (row r, column c) maps to
    ``((c + offset) * s_i, (r + offset) * s_i)``; ``offset = 0.5`` gives ``s_i // 2 + c * s_i``
    for even strides, the FCOS paper's ``(floor(s/2) + x s, floor(s/2) + y s)`` (Sec. 3.1).

    Results are cached per (feature size, stride, device, dtype), so repeated calls on
    same-sized inputs allocate nothing. The cache is a least-recently-used map bounded to
    ``CACHE_SIZE`` keys (multi-scale training and varied test sizes would otherwise grow it
    without bound). It holds tensors only; it is not a buffer and is not saved in checkpoints.
    """

    CACHE_SIZE = 32  # keys (one per level and input size); 5 levels x 6 sizes fit

    @configurable
    def __init__(self, *, strides: List[int], offset: float = 0.5):
        """
        Args:
            strides: stride of each level in pixels, e.g. [8, 16, 32, 64, 128].
            offset: position of the point inside its cell, in stride units, in [0, 1).

        Raises:
            ValueError: if ``offset`` is outside [0, 1) or a stride is not positive.
        """
        super().__init__()
        if not 0.0 <= offset < 1.0:
            raise ValueError(f"MODEL.SHIFT_GENERATOR.OFFSET must be in [0, 1), got {offset}")
        if any(s <= 0 for s in strides):
            raise ValueError(f"strides must be positive, got {strides}")
        self.strides = [int(s) for s in strides]
        self.offset = float(offset)
        self._cache: "OrderedDict[Tuple, torch.Tensor]" = OrderedDict()

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        return {"strides": [s.stride for s in input_shape], "offset": cfg.MODEL.SHIFT_GENERATOR.OFFSET}

    @property
    def num_cell_anchors(self) -> List[int]:
        """One point per cell on every level (kept for detectron2 API symmetry)."""
        return [1] * len(self.strides)

    def grid_shifts(self, height: int, width: int, stride: int, device, dtype=torch.float32):
        """Points of one level: cell (r, c) -> ((c + offset) * stride, (r + offset) * stride).

        Args:
            height, width: the level's feature-map size in cells (H_i, W_i); 0-dim tensors
                while tracing (then the grid is computed from them, not cached).
            stride: the level's stride in pixels (input pixels per cell).
            device: torch device (or its name) of the result. dtype: floating dtype of the result.

        Returns:
            Tensor [height * width, 2]: (x, y) in input-image pixels, row-major (y outer, x
            inner), matching ``permute_to_N_HWA_K`` of a [N, C, height, width] map. A cached
            tensor: callers must not modify it in place.
        """
        if torch.jit.is_tracing():  # traced sizes (0-dim tensors): the grid follows the input
            return self._grid(height, width, stride, device, dtype)
        key = (height, width, stride, str(device), dtype)
        shifts = self._cache.get(key)
        if shifts is not None:
            self._cache.move_to_end(key)
            return shifts
        shifts = self._grid(height, width, stride, device, dtype)
        self._cache[key] = shifts
        if len(self._cache) > self.CACHE_SIZE:
            self._cache.popitem(last=False)  # least recently used
        return shifts

    def _grid(self, height, width, stride: int, device, dtype) -> torch.Tensor:
        """[height * width, 2] points of one level, uncached (see :meth:`grid_shifts`)."""
        xs = (torch.arange(width, device=device, dtype=dtype) + self.offset) * stride
        ys = (torch.arange(height, device=device, dtype=dtype) + self.offset) * stride
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)

    def forward(self, features: List[torch.Tensor]) -> List[torch.Tensor]:
        """
        Args:
            features: per level [N, C, H_i, W_i]; only sizes and device are used.

        Returns:
            list[Tensor]: per level [H_i * W_i, 2] points (x, y) in pixels, float32.

        Raises:
            ValueError: if the number of levels differs from the number of strides.
        """
        if len(features) != len(self.strides):
            raise ValueError(f"got {len(features)} feature levels for strides {self.strides}")
        return [
            self.grid_shifts(f.shape[-2], f.shape[-1], s, f.device)
            for f, s in zip(features, self.strides)
        ]


def build_shift_generator(cfg, input_shape: List[ShapeSpec]) -> nn.Module:
    """Build the shift generator named by ``MODEL.SHIFT_GENERATOR.NAME``."""
    return SHIFT_GENERATOR_REGISTRY.get(cfg.MODEL.SHIFT_GENERATOR.NAME)(cfg, input_shape)

"""Layers of d2_anchorfree that detectron2 does not provide without its compiled ops."""
from .scale import Scale
from .deform_conv import DeformConv, ModulatedDeformConv  # noqa: F401
from .level_norm import PerLevelNorm, apply_norm, level_norm  # noqa: F401
from .max_filter import MaxFiltering3D, max_filter_3d  # noqa: F401

__all__ = ["Scale"]

"""Modeling: backbone registration, shift generators, assigners, losses, heads, meta-archs."""
from . import backbone  # noqa: F401  (registers build_fcos_resnet_fpn_backbone)
from . import backbone_dcn  # noqa: F401  (registers build_fcos_resnet_fpn_dcn_backbone)
from .assigners import ASSIGNER_REGISTRY, build_assigner
from .meta_arch import FCOS, AnchorFreeDetector
from .shift_generator import SHIFT_GENERATOR_REGISTRY, ShiftGenerator, build_shift_generator

__all__ = ["ASSIGNER_REGISTRY", "build_assigner", "FCOS", "AnchorFreeDetector",
           "SHIFT_GENERATOR_REGISTRY", "ShiftGenerator", "build_shift_generator"]

"""Modeling: backbones, heads, assigners, losses, the composed detector and its presets."""
from . import backbone  # noqa: F401  (registers build_fcos_resnet_fpn_backbone)
from . import backbone_dcn  # noqa: F401  (registers build_fcos_resnet_fpn_dcn_backbone)
from . import backbone_timm  # noqa: F401  (registers build_timm_fpn_backbone; timm imported on use)
from .assigners import ASSIGNER_REGISTRY, build_assigner
from .detector import AnchorFreeDetector
from .heads import HEAD_REGISTRY
from .losses.terms import LOSS_REGISTRY
from .presets import ATSS, FCOS, GFL, PRESETS, TOOD, DeFCN, VFNet  # noqa: F401  (registers the presets)
from .shift_generator import SHIFT_GENERATOR_REGISTRY, ShiftGenerator, build_shift_generator

__all__ = ["ASSIGNER_REGISTRY", "HEAD_REGISTRY", "LOSS_REGISTRY", "SHIFT_GENERATOR_REGISTRY",
           "AnchorFreeDetector", "ShiftGenerator", "build_assigner", "build_shift_generator",
           "PRESETS", "FCOS", "ATSS", "GFL", "VFNet", "DeFCN", "TOOD"]

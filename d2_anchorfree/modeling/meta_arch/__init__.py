"""Meta-architectures registered in detectron2's META_ARCH_REGISTRY."""
from .base import AnchorFreeDetector
from .fcos import FCOS

__all__ = ["AnchorFreeDetector", "FCOS"]

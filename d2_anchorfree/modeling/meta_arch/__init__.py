"""Meta-architectures registered in detectron2's META_ARCH_REGISTRY."""
from .base import AnchorFreeDetector
from .fcos import FCOS
from .vfnet import VFNet  # noqa: F401  (registers "VFNet")
from .defcn import DeFCN  # noqa: F401  (registers "DeFCN")
from .atss import ATSS  # noqa: F401  (registers "ATSS")
from .gfl import GFL  # noqa: F401  (registers "GFL")

__all__ = ["AnchorFreeDetector", "FCOS"]

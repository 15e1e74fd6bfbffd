"""Dense heads: they map FPN features to per-level predictions and know nothing about targets."""
from .fcos_head import FCOSHead
from .vfnet_head import VFNetHead  # noqa: F401
from .defcn_head import DeFCNHead  # noqa: F401
from .gfl_head import GFLHead  # noqa: F401

__all__ = ["FCOSHead"]

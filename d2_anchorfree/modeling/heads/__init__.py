"""Dense heads: they map FPN features to per-level predictions and know nothing about targets."""
from .fcos_head import FCOSHead

__all__ = ["FCOSHead"]

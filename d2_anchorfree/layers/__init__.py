"""Layers of d2_anchorfree that detectron2 does not provide without its compiled ops."""
from .scale import Scale

__all__ = ["Scale"]

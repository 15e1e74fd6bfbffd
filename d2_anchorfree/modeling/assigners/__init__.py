"""Target assigners (pure functions of points, GT and, for some, predictions)."""
from .base import ASSIGNER_REGISTRY, BACKGROUND, IGNORE
from .fcos import FCOSAssigner, centerness_targets


def build_assigner(name: str, cfg, strides):
    """Build the assigner registered as ``name`` (e.g. "FCOSAssigner") for the given strides.

    Raises:
        KeyError: if no assigner is registered under ``name`` (the message lists the known ones).
    """
    return ASSIGNER_REGISTRY.get(name)(cfg, strides)


__all__ = ["ASSIGNER_REGISTRY", "BACKGROUND", "IGNORE", "FCOSAssigner", "build_assigner",
           "centerness_targets"]

"""Target assigners (pure functions of points, GT and, for some, predictions)."""
from .base import ASSIGNER_REGISTRY, BACKGROUND, IGNORE, AssignResult
from .fcos import FCOSAssigner, centerness_targets
from .poto import POTOAssigner  # noqa: F401  (registers "POTOAssigner", DeFCN)
from .poto_aux import POTOAuxAssigner  # noqa: F401  (registers "POTOAuxAssigner", DeFCN)
from .atss import ATSSAssigner  # noqa: F401  (registers "ATSSAssigner")
from .tal import TaskAlignedAssigner  # noqa: F401  (registers "TaskAlignedAssigner", TOOD)


def build_assigner(name: str, cfg, strides):
    """Build the assigner registered as ``name`` (e.g. "FCOSAssigner") for the given strides.

    Raises:
        KeyError: if no assigner is registered under ``name`` (the message lists the known ones).
    """
    return ASSIGNER_REGISTRY.get(name)(cfg, strides)


__all__ = ["ASSIGNER_REGISTRY", "BACKGROUND", "IGNORE", "AssignResult", "FCOSAssigner", "build_assigner",
           "centerness_targets"]

"""Dense heads: they map FPN features to per-level predictions and know nothing about targets.
Registered in ``HEAD_REGISTRY`` (``MODEL.DENSE.HEAD``)."""
from .base import HEAD_REGISTRY, ClassScores, DenseHead, DenseOutputs, build_head, joint_logits
from .fcos_head import FCOSHead
from .gfl_head import GFLHead
from .vfnet_head import VFNetHead
from .defcn_head import DeFCNHead
from .tood_head import TOODHead
from .dual_head import DualAssignmentHead, build_dual_head

__all__ = ["HEAD_REGISTRY", "ClassScores", "DenseHead", "DenseOutputs", "build_head", "joint_logits", "FCOSHead",
           "GFLHead", "VFNetHead", "DeFCNHead", "TOODHead",
           "DualAssignmentHead", "build_dual_head"]

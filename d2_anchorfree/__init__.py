"""d2_anchorfree: anchor-free one-stage detectors (FCOS, ATSS, GFL, VFNet, DeFCN) for detectron2.

Importing the package registers its meta-architectures, backbone, shift generators and assigners
in detectron2's registries, and makes detectron2's ``DetectionCheckpointer`` read weight files
without running code from them (``d2_anchorfree.checkpoint.install_safe_loading``);
``add_anchorfree_config(cfg)`` adds the config keys.
"""
from .config import add_anchorfree_config
from . import modeling  # noqa: F401  (registration side effect)
from .checkpoint import install_safe_loading

install_safe_loading()

__version__ = "0.1.0"
__all__ = ["add_anchorfree_config", "modeling"]

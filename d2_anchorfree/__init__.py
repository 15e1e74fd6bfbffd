"""d2_anchorfree: anchor-free one-stage detectors (FCOS, ATSS, GFL, VFNet, DeFCN) for detectron2.

Importing the package registers its meta-architectures, backbone, shift generators and assigners
in detectron2's registries, and makes detectron2's ``DetectionCheckpointer`` read weight files
without running code from them (``d2_anchorfree.checkpoint.install_safe_loading``);
``add_anchorfree_config(cfg)`` adds the config keys.

Where torch or detectron2 is not installed (a deployment machine running exported models), the
package still imports, without registering anything: ``d2_anchorfree.runtime`` (the onnxruntime
predictor) and ``d2_anchorfree.model_zoo.get_config_file`` work there; the names that need
detectron2 raise an ImportError naming what is missing.
"""
import importlib.util

__version__ = "0.1.0"


def _missing_requirements():
    """The names among torch and detectron2 that cannot be imported (an empty list when both can).

    A module set to ``None`` in ``sys.modules`` (import blocked on purpose) counts as missing.
    """
    missing = []
    for name in ("torch", "detectron2"):
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


_MISSING = _missing_requirements()

if not _MISSING:
    from .config import add_anchorfree_config
    from . import modeling  # noqa: F401  (registration side effect)
    from .checkpoint import install_safe_loading

    install_safe_loading()
else:

    def __getattr__(name):
        if name in ("add_anchorfree_config", "modeling"):
            raise ImportError(
                f"d2_anchorfree.{name} needs {' and '.join(_MISSING)}, which cannot be imported here; "
                "without them only d2_anchorfree.runtime and d2_anchorfree.model_zoo.get_config_file work"
            )
        raise AttributeError(f"module 'd2_anchorfree' has no attribute {name!r}")


__all__ = ["add_anchorfree_config", "modeling"]

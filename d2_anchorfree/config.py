"""Config keys of d2_anchorfree, added to a detectron2 yacs ``CfgNode``.

``add_anchorfree_config(cfg)`` gathers the keys that each subsystem defines next to the code that
reads them: ``modeling/config.py`` (model), ``data/config.py`` (datasets and their checks),
``inference/config.py`` (evaluation, sliced inference, TTA), ``engine/config.py`` (training
health, AMP precision, training samplers, best checkpoint and early stopping, model EMA).
Unknown keys in a YAML file still fail loudly (yacs raises
``KeyError: 'Non-existent config key: ...'``); keys of the old layout fail with the name of the
key that replaced them (:data:`MOVED_KEYS`); keys of a component the detector does not use fail
when the model is built (``modeling/components.py``).
"""
from .modeling.config import MOVED_KEYS, REMOVED_SECTIONS, register_moved_keys

__all__ = ["add_anchorfree_config", "MOVED_KEYS", "REMOVED_SECTIONS", "register_moved_keys"]


def add_anchorfree_config(cfg):
    """Add the dense-detector sections to ``cfg``: ``MODEL.DENSE`` (shared), one section per head,
    assigner and loss term, ``MODEL.SHIFT_GENERATOR``, ``MODEL.MAX_FILTER`` (and a few FPN, data,
    solver and test keys). Keys of the pre-composition layout (``MODEL.FCOS.*``, ``MODEL.GFL.*``,
    ...) are registered as renamed: a YAML that sets one fails naming its new key.

    Args:
        cfg (CfgNode): a detectron2 config, e.g. ``detectron2.config.get_cfg()``; modified in place.

    Returns:
        CfgNode: the same ``cfg``, for chaining.

    Idempotent: calling it twice leaves the config unchanged.
    """
    if hasattr(cfg.MODEL, "DENSE"):
        return cfg
    # Each subsystem defines its keys next to the code that reads them; imported here, not at the
    # top, since those packages import this module's users (engine.trainer).
    from .data.config import add_data_config
    from .engine.config import add_engine_config
    from .inference.config import add_inference_config
    from .modeling.config import add_model_config

    add_model_config(cfg)
    add_data_config(cfg)
    add_inference_config(cfg)
    add_engine_config(cfg)
    return cfg

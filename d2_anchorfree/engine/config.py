"""Config keys of the training loop (read by ``engine.trainer`` and ``engine.health``)."""
from detectron2.config import CfgNode as CN


def add_engine_config(cfg):
    """Add ``SOLVER.HEALTH_CHECK`` (:class:`~.health.TrainingHealthCheck`) and
    ``SOLVER.AMP.PRECISION``.

    Args:
        cfg (CfgNode): a detectron2 config; modified in place (called by
            ``d2_anchorfree.config.add_anchorfree_config``, which adds every section).

    Returns:
        CfgNode: the same ``cfg``.
    """
    _C = cfg
    # ---- training health (d2_anchorfree.engine.health.TrainingHealthCheck)
    _C.SOLVER.HEALTH_CHECK = CN()
    _C.SOLVER.HEALTH_CHECK.ENABLED = True
    # Stop when the weights' global L2 norm exceeds this multiple of its value at the start of the
    # run (exploding weights under gradient clipping keep the loss finite); 0 disables.
    _C.SOLVER.HEALTH_CHECK.MAX_WEIGHT_NORM_GROWTH = 100.0

    # ---- mixed precision (with detectron2's SOLVER.AMP.ENABLED, CUDA only)
    # Autocast dtype of AMPTrainer: "float16" (default, every detectron2) or "bfloat16" (needs a
    # detectron2 whose AMPTrainer takes `precision`, i.e. main after v0.6; see compat.py).
    _C.SOLVER.AMP.PRECISION = "float16"
    return cfg

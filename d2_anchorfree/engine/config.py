"""Config keys of the training loop (read by ``engine.trainer``, ``engine.health`` and
``engine.resumable_loader``)."""
from detectron2.config import CfgNode as CN


def add_engine_config(cfg):
    """Add ``SOLVER.HEALTH_CHECK`` (:class:`~.health.TrainingHealthCheck`),
    ``SOLVER.AMP.PRECISION``, and the training-sampler keys that detectron2 reads but
    does not define in every version (``DATALOADER.REPEAT_SQRT``, ``DATALOADER.RANDOM_SUBSET_RATIO``;
    see ``d2_anchorfree.compat``).

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

    # ---- training samplers (d2_anchorfree.engine.resumable_loader.build_train_sampler);
    # detectron2 reads these keys but not every version defines them.
    if "REPEAT_SQRT" not in _C.DATALOADER:  # detectron2 v0.6; main defines it (True)
        # RepeatFactorTrainingSampler: max(1, sqrt(REPEAT_THRESHOLD / f)); False: without the
        # square root (detectron2 main only).
        _C.DATALOADER.REPEAT_SQRT = True
    if "RANDOM_SUBSET_RATIO" not in _C.DATALOADER:  # read by detectron2, defined by neither version
        # RandomSubsetTrainingSampler: the fraction of the training images, in (0, 1], to train on.
        _C.DATALOADER.RANDOM_SUBSET_RATIO = 1.0
    return cfg

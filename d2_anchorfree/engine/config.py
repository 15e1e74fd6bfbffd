"""Config keys of the training loop (read by ``engine.trainer``, ``engine.health``,
``engine.hooks`` and ``engine.resumable_loader``)."""
from detectron2.config import CfgNode as CN


def add_engine_config(cfg):
    """Add ``SOLVER.OPTIMIZER`` and ``SOLVER.ADAMW`` (:mod:`~.optimizer`), ``SOLVER.HEALTH_CHECK`` (:class:`~.health.TrainingHealthCheck`),
    ``SOLVER.AMP.PRECISION``, ``SOLVER.BEST_CHECKPOINT`` and ``SOLVER.EARLY_STOP``
    (:class:`~.hooks.BestCheckpointer`), ``MODEL_EMA`` (:class:`~.ema.ModelEMA`), and the
    training-sampler keys that detectron2 reads but
    does not define in every version (``DATALOADER.REPEAT_SQRT``, ``DATALOADER.RANDOM_SUBSET_RATIO``;
    see ``d2_anchorfree.compat``), and ``DATALOADER.PREFETCH_FACTOR``
    (:func:`~.resumable_loader.prefetch_factor`).

    Args:
        cfg (CfgNode): a detectron2 config; modified in place (called by
            ``d2_anchorfree.config.add_anchorfree_config``, which adds every section).

    Returns:
        CfgNode: the same ``cfg``.
    """
    _C = cfg
    # ---- optimizer (d2_anchorfree.engine.optimizer.build_optimizer): "SGD" (detectron2's) or
    # "AdamW" (decoupled weight decay; SOLVER.MOMENTUM is its beta1), both over detectron2's
    # parameter groups (SOLVER.WEIGHT_DECAY_NORM, BIAS_LR_FACTOR, WEIGHT_DECAY_BIAS).
    _C.SOLVER.OPTIMIZER = "SGD"
    _C.SOLVER.ADAMW = CN()
    _C.SOLVER.ADAMW.BETA2 = 0.999  # torch's default
    _C.SOLVER.ADAMW.EPS = 1e-8  # torch's default

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

    # ---- best checkpoint and early stopping (d2_anchorfree.engine.hooks.BestCheckpointer)
    # After every evaluation during training (TEST.EVAL_PERIOD > 0, DATASETS.TEST not empty), write
    # OUTPUT_DIR/model_best.pth when this evaluation result improved: a name of the flattened
    # results, e.g. "bbox/AP", "bbox/AP50", "bbox/AP-<class>", "<dataset>/bbox/AP" with several test
    # datasets; "" turns best checkpoints and early stopping off.
    _C.SOLVER.BEST_CHECKPOINT = CN()
    _C.SOLVER.BEST_CHECKPOINT.METRIC = "bbox/AP"
    # "max" (higher is better) or "min".
    _C.SOLVER.BEST_CHECKPOINT.MODE = "max"
    # Stop training after this many evaluations in a row without improvement of
    # SOLVER.BEST_CHECKPOINT.METRIC (model_final.pth is written at that iteration); 0 = never.
    _C.SOLVER.EARLY_STOP = CN()
    _C.SOLVER.EARLY_STOP.PATIENCE = 0

    # ---- model EMA (d2_anchorfree.engine.ema): an exponential moving average of the weights,
    # updated after every step, evaluated during and after training and written as the checkpoints'
    # "model" (the trained weights go to "model_raw", for --resume).
    _C.MODEL_EMA = CN()
    _C.MODEL_EMA.ENABLED = False
    # In (0, 1): the weight of the previous average once warmed up; the average spans about
    # 1 / (1 - DECAY) iterations. 0.9998 is RTMDet's (momentum 0.0002; Ultralytics: 0.9999), for
    # runs of 10^5 iterations and more; a run of a few hundred iterations needs a shorter span
    # (e.g. 0.98 with WARMUP 30, benchmarks/ema_fixed_budget.sh).
    _C.MODEL_EMA.DECAY = 0.9998
    # Warm-up ramp DECAY * (1 - exp(-n / WARMUP)) at update n, time constant in iterations
    # (Ultralytics' tau, RTMDet's gamma: 2000); 0 = no ramp (DECAY from the first update).
    _C.MODEL_EMA.WARMUP = 2000

    # ---- training samplers (d2_anchorfree.engine.resumable_loader.build_train_sampler);
    # detectron2 reads these keys but not every version defines them.
    if "REPEAT_SQRT" not in _C.DATALOADER:  # detectron2 v0.6; main defines it (True)
        # RepeatFactorTrainingSampler: max(1, sqrt(REPEAT_THRESHOLD / f)); False: without the
        # square root (detectron2 main only).
        _C.DATALOADER.REPEAT_SQRT = True
    if "RANDOM_SUBSET_RATIO" not in _C.DATALOADER:  # read by detectron2, defined by neither version
        # RandomSubsetTrainingSampler: the fraction of the training images, in (0, 1], to train on.
        _C.DATALOADER.RANDOM_SUBSET_RATIO = 1.0
    # ---- training loader (d2_anchorfree.engine.resumable_loader.prefetch_factor): items each worker
    # loads ahead (torch DataLoader's prefetch_factor; images with ASPECT_RATIO_GROUPING, else
    # batches); 0 = two batches ahead. 2 is detectron2's (with grouping: 2 images, so the trainer
    # waited for half of every 4-image batch). The data stream is the same for every value.
    _C.DATALOADER.PREFETCH_FACTOR = 0
    return cfg

"""Config keys of the data layer (read by ``data.datasets``, ``data.mapper`` and ``data.mosaic``)."""
from detectron2.config import CfgNode as CN


def add_data_config(cfg):
    """Add ``DATASETS.REGISTER_COCO``, the annotation / image checks (``DATASETS.VALIDATE_*``,
    ``DATASETS.AREA_*``), the mosaic augmentation (``INPUT.MOSAIC``, checked by
    :func:`~.mosaic.check_mosaic_config`), scale jitter and HSV gains (``INPUT.SCALE_JITTER``,
    ``INPUT.HSV``, checked by :func:`~.augmentation.check_scale_jitter_config` and
    :func:`~.augmentation.check_hsv_config`).

    Args:
        cfg (CfgNode): a detectron2 config; modified in place (called by
            ``d2_anchorfree.config.add_anchorfree_config``, which adds every section).

    Returns:
        CfgNode: the same ``cfg``.
    """
    _C = cfg
    # ---- data: COCO-format datasets registered from the config (no Python needed)
    # Each entry: "name,path/to/annotations.json,path/to/image_root".
    _C.DATASETS.REGISTER_COCO = []
    # Check every annotation (file exists, box inside image, positive size, known category).
    _C.DATASETS.VALIDATE_ANNOTATIONS = True
    # The "area" of every annotation (COCOeval's APs/APm/APl split by it). With a segmentation it
    # must lie in (0, w*h*(1 + AREA_TOLERANCE)] (a mask is smaller than its box); without one,
    # within AREA_TOLERANCE (relative) of the box's w*h. "error": a wrong area stops loading,
    # naming the annotations; "recompute": a corrected json (areas from the segmentation, else
    # w*h) is written to OUTPUT_DIR/datasets/ at registration and evaluation uses it; "ignore".
    _C.DATASETS.AREA_CHECK = "error"
    _C.DATASETS.AREA_TOLERANCE = 0.1
    # Decode every image when the dataset is loaded, naming all unreadable files (corrupt,
    # truncated, 16-bit/float, wrong size) before training starts: "auto" (datasets of at most
    # 5000 images), "always" or "never".
    _C.DATASETS.VALIDATE_IMAGES = "auto"

    # ---- mosaic augmentation (data.mapper.MosaicDatasetMapper, data.mosaic): a training image made
    # of 4 dataset images (YOLO's mosaic; DEIM's dense one-to-one positives), before the ordinary
    # augmentations (INPUT.MIN_SIZE_TRAIN resize, flip, crop). Boxes only (refused with masks or
    # keypoints).
    _C.INPUT.MOSAIC = CN()
    _C.INPUT.MOSAIC.ENABLED = False
    # In [0, 1]: the probability that a training sample is a mosaic (else the plain image).
    _C.INPUT.MOSAIC.PROB = 1.0
    # S, pixels (>= 32): each of the 4 images is resized so that its longer side is S (aspect
    # kept) and fills one quadrant of a 2S x 2S canvas around a random centre.
    _C.INPUT.MOSAIC.SIZE = 416
    # "crop": the S x S middle of the canvas (YOLO's; objects at their own scale); "full": the whole
    # 2S x 2S canvas, which the resize then shrinks (objects about 2x smaller, about 4 images'
    # objects per training image).
    _C.INPUT.MOSAIC.OUTPUT = "crop"
    # In [0, 1]: a box cut by its quadrant or the crop is kept when at least this fraction of its
    # area stays visible (and it stays at least 2 px wide and high).
    _C.INPUT.MOSAIC.MIN_VISIBLE = 0.25
    # "crop" only: each mosaic at a scale s drawn uniformly in [MIN_SCALE, MAX_SCALE] (>= 0.5): the
    # round(S / s) middle of the canvas resized to S x S, objects at s times their size (Ultralytics'
    # RandomPerspective scale). 1.0 and 1.0: no scaling, nothing drawn.
    _C.INPUT.MOSAIC.MIN_SCALE = 1.0
    _C.INPUT.MOSAIC.MAX_SCALE = 1.0
    # Mosaic off for the last CLOSE_ITERS training iterations (whole number >= 0, below
    # SOLVER.MAX_ITER): the run ends on plain images, as the test sees them (Ultralytics'
    # close_mosaic, its last 10 epochs). 0: mosaic to the end.
    _C.INPUT.MOSAIC.CLOSE_ITERS = 0

    # ---- scale jitter (data.augmentation): in place of the INPUT.MIN_SIZE_TRAIN resize, each
    # training image (after the mosaic, when on) is resized to fit SIZE x SIZE times a factor drawn
    # in [MIN_SCALE, MAX_SCALE], then cut or padded to SIZE x SIZE (detectron2's ResizeScale +
    # FixedSizeCrop; large scale jitter; Ultralytics' RandomPerspective scale).
    _C.INPUT.SCALE_JITTER = CN()
    _C.INPUT.SCALE_JITTER.ENABLED = False
    _C.INPUT.SCALE_JITTER.MIN_SCALE = 0.5  # > 0, factors of the size at which the image fits SIZE
    _C.INPUT.SCALE_JITTER.MAX_SCALE = 1.5  # >= MIN_SCALE
    _C.INPUT.SCALE_JITTER.SIZE = 416  # pixels (>= 32), the side of every training image

    # ---- HSV augmentation (data.augmentation.RandomHSV, YOLO's): per training image, hue,
    # saturation and value multiplied by 1 + u * HUE / SATURATION / VALUE, u uniform in [-1, 1].
    # Colour images only (INPUT.FORMAT BGR or RGB). Ultralytics' defaults: 0.015, 0.7, 0.4.
    _C.INPUT.HSV = CN()
    _C.INPUT.HSV.ENABLED = False
    _C.INPUT.HSV.HUE = 0.015  # in [0, 1]
    _C.INPUT.HSV.SATURATION = 0.7  # in [0, 1]
    _C.INPUT.HSV.VALUE = 0.4  # in [0, 1]
    return cfg

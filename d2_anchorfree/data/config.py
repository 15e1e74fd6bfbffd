"""Config keys of the data layer (read by ``data.datasets`` and ``data.mapper``)."""


def add_data_config(cfg):
    """Add ``DATASETS.REGISTER_COCO`` and the annotation / image checks (``DATASETS.VALIDATE_*``,
    ``DATASETS.AREA_*``).

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
    return cfg

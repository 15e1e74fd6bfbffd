"""Data layer: COCO datasets registered from the config (``DATASETS.REGISTER_COCO``), annotation,
area, image and class-count checks, the one image reader of training, evaluation and prediction
(``image_io.read_image``), a dataset mapper that names unreadable image files and its mosaic
variant (``INPUT.MOSAIC``, :mod:`d2_anchorfree.data.mosaic`). Downloading and
tiling the bundled tree-crown data: :mod:`d2_anchorfree.data.trees` (``d2af prepare-data``)."""
from .augmentation import build_train_augmentations, check_hsv_config, check_scale_jitter_config
from .datasets import (
    check_coco_areas,
    check_num_classes,
    find_bad_areas,
    num_classes_key,
    parse_register_entry,
    recompute_coco_areas,
    register_coco_dataset,
    register_datasets_from_config,
    segmentation_area,
    validate_coco_json,
    validate_images,
)
from .image_io import read_image
from .mapper import CheckedDatasetMapper, MosaicDatasetMapper, build_train_mapper
from .mosaic import check_mosaic_config, config_at_iteration, mosaic_close_iter

__all__ = [
    "CheckedDatasetMapper",
    "MosaicDatasetMapper",
    "build_train_augmentations",
    "build_train_mapper",
    "check_coco_areas",
    "check_hsv_config",
    "check_mosaic_config",
    "check_num_classes",
    "check_scale_jitter_config",
    "config_at_iteration",
    "find_bad_areas",
    "mosaic_close_iter",
    "num_classes_key",
    "parse_register_entry",
    "read_image",
    "recompute_coco_areas",
    "register_coco_dataset",
    "register_datasets_from_config",
    "segmentation_area",
    "validate_coco_json",
    "validate_images",
]

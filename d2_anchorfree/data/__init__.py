"""Data layer: COCO datasets registered from the config (``DATASETS.REGISTER_COCO``), annotation
validation, a dataset mapper that names unreadable image files, and the bundled tree-crown data
(``d2_anchorfree.data.trees``, used by ``tools/prepare_trees.py``)."""
from .datasets import (
    parse_register_entry,
    register_coco_dataset,
    register_datasets_from_config,
    validate_coco_json,
)
from .mapper import CheckedDatasetMapper

__all__ = [
    "CheckedDatasetMapper",
    "parse_register_entry",
    "register_coco_dataset",
    "register_datasets_from_config",
    "validate_coco_json",
]

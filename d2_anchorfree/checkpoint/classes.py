"""The class names a model was trained on, stored in its checkpoints.

Training writes, next to the weights, ``checkpoint["classes"] = {"thing_classes": [str, ...],
"category_ids": [int, ...]}``: the names of the contiguous classes 0..K-1 (detectron2's
``thing_classes`` of the training dataset) and the dataset's category id of each (the inverse of
``thing_dataset_id_to_contiguous_id``). Only strings and ints, so the file still loads with
``torch.load(weights_only=True)`` and no code runs (``safe_load``). Prediction and export read
them from the weights file, so a model is self-contained: the training annotations are not needed.
"""
from typing import Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.catalog import Metadata

from ..checks import is_whole_number

__all__ = ["CLASSES_KEY", "dataset_classes", "load_dataset_classes", "check_classes", "classes_metadata",
           "generic_classes"]

#: Checkpoint key of the class names and category ids.
CLASSES_KEY = "classes"


def check_classes(entry, source: str, num_classes: Optional[int] = None) -> dict:
    """Validate a ``checkpoint["classes"]`` entry.

    Args:
        entry: ``{"thing_classes": list of K str, "category_ids": list of K distinct int}``.
        source (str): where it comes from (the weights file), for the messages.
        num_classes (int or None): the model's class count K, checked when given.

    Returns:
        dict: a copy, ``{"thing_classes": [str], "category_ids": [int]}``.

    Raises:
        ValueError: not that layout (naming ``source`` and the offending value), or K differs
            from ``num_classes`` (naming both counts).
    """
    if not isinstance(entry, dict):
        raise ValueError(f"{source}: '{CLASSES_KEY}' is {type(entry).__name__}, expected a dict "
                         "with 'thing_classes' and 'category_ids'")
    names, ids = entry.get("thing_classes"), entry.get("category_ids")
    if not (isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names)):
        raise ValueError(f"{source}: '{CLASSES_KEY}.thing_classes' must be a non-empty list of strings, got {names!r}")
    if not (isinstance(ids, (list, tuple)) and all(is_whole_number(i) for i in ids)
            and len(ids) == len(names) and len(set(ids)) == len(ids)):
        raise ValueError(f"{source}: '{CLASSES_KEY}.category_ids' must be {len(names)} distinct ints "
                         f"(one per class name), got {ids!r}")
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(f"{source}: the checkpoint names {len(names)} classes ({list(names)[:10]}) but the "
                         f"model has {num_classes}; check the config the weights were trained with")
    return {"thing_classes": list(names), "category_ids": list(ids)}


def dataset_classes(dataset_names: Sequence[str]) -> Optional[dict]:
    """The ``classes`` entry of the first of ``dataset_names`` whose metadata has ``thing_classes``
    (filled once the dataset is loaded, e.g. after the trainer built its data loader; datasets not
    loaded yet are not loaded here).

    Returns:
        dict or None: ``{"thing_classes": [str], "category_ids": [int]}`` (contiguous order; ids
        from ``thing_dataset_id_to_contiguous_id``, else 0..K-1), or None when no dataset has them.
    """
    for name in dataset_names:
        if name not in MetadataCatalog.list():
            continue
        meta = MetadataCatalog.get(name)
        names = getattr(meta, "thing_classes", None)
        if not names:
            continue
        inverse = {int(v): int(k) for k, v in getattr(meta, "thing_dataset_id_to_contiguous_id", {}).items()}
        ids = [inverse.get(i, i) for i in range(len(names))]
        return check_classes({"thing_classes": [str(n) for n in names], "category_ids": ids}, f"dataset '{name}'")
    return None


def generic_classes(num_classes: int) -> dict:
    """``{"thing_classes": ["class_0", ...], "category_ids": [0, ...]}`` for a model whose
    checkpoint names no classes (weights written before class names were stored, or by another tool)."""
    return {"thing_classes": [f"class_{i}" for i in range(num_classes)], "category_ids": list(range(num_classes))}


def classes_metadata(entry: dict, name: str = "model classes") -> Metadata:
    """A detectron2 ``Metadata`` (not registered in ``MetadataCatalog``) with ``thing_classes`` and
    ``thing_dataset_id_to_contiguous_id`` of a checked ``classes`` entry: what ``Visualizer`` and
    the result writers read."""
    ids = {int(c): i for i, c in enumerate(entry["category_ids"])}
    return Metadata(name=name, thing_classes=list(entry["thing_classes"]), thing_dataset_id_to_contiguous_id=ids)


def load_dataset_classes(name: str) -> Optional[dict]:
    """The ``classes`` entry of registered dataset ``name``, loading it (``DatasetCatalog.get``)
    when its metadata has no ``thing_classes`` yet.

    Raises:
        KeyError: ``name`` is not registered. FileNotFoundError, ValueError: the loader's checks.
    """
    if name not in DatasetCatalog.list():
        raise KeyError(f"dataset '{name}' is not registered (DATASETS.REGISTER_COCO or register_coco_instances)")
    if not getattr(MetadataCatalog.get(name), "thing_classes", None):
        DatasetCatalog.get(name)
    return dataset_classes([name])

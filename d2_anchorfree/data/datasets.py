"""COCO-format datasets registered from the config (``DATASETS.REGISTER_COCO``), no Python needed.

Each entry of ``DATASETS.REGISTER_COCO`` is ``"name,path/to/annotations.json,path/to/image_root"``
(paths relative to the working directory or absolute). :func:`register_datasets_from_config`
registers each one through detectron2's ``register_coco_instances``, so ``MetadataCatalog`` gets
``json_file``, ``image_root``, ``evaluator_type="coco"`` (for ``COCOEvaluator``) and, once loaded,
``thing_classes``. With ``DATASETS.VALIDATE_ANNOTATIONS`` the loader first checks the raw json
(:func:`validate_coco_json`); the check runs lazily, when ``DatasetCatalog.get(name)`` is called.

Command line example::

    python train_net.py --config-file X \\
        DATASETS.REGISTER_COCO "('mydata_train,ann/train.json,images',)" \\
        DATASETS.TRAIN "('mydata_train',)"
"""
import json
import math
import os
from typing import Dict, List, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances

__all__ = ["parse_register_entry", "validate_coco_json", "register_coco_dataset", "register_datasets_from_config"]

# A box may stick out of its image by this many pixels (rounding in annotation tools).
BOX_TOLERANCE_PX = 1.0


def parse_register_entry(entry: str) -> Tuple[str, str, str]:
    """Split one ``DATASETS.REGISTER_COCO`` entry into ``(name, json_path, image_root)``.

    Surrounding whitespace of each field is removed.

    Raises:
        ValueError: not a string of exactly three non-empty comma-separated fields (naming the entry).
    """
    fields = [f.strip() for f in entry.split(",")] if isinstance(entry, str) else []
    if len(fields) != 3 or not all(fields):
        raise ValueError(
            f"DATASETS.REGISTER_COCO entry {entry!r} is not 'name,path/to/annotations.json,path/to/image_root'"
        )
    return fields[0], fields[1], fields[2]


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _sorted_ids(ids) -> list:
    try:
        return sorted(ids)
    except TypeError:  # mixed types (a malformed json): any stable order will do
        return sorted(ids, key=repr)


def validate_coco_json(json_file: str, image_root: str, tolerance: float = BOX_TOLERANCE_PX) -> dict:
    """Check a COCO instances json before training on it; raise on the first problem.

    Checks, in this order:

    * the file is a json object with ``images``, ``annotations`` and ``categories`` lists;
    * every image has a unique ``id``, a ``file_name`` and positive ``width``/``height``;
    * every image file ``image_root/file_name`` exists;
    * every annotation's ``image_id`` is an image id of the json;
    * every ``category_id`` is one of the json's category ids;
    * every ``bbox`` is 4 finite numbers ``[x, y, w, h]`` (pixels) with ``w > 0`` and ``h > 0``,
      inside its image up to ``tolerance`` pixels: ``x >= -tol``, ``y >= -tol``,
      ``x + w <= width + tol``, ``y + h <= height + tol``.

    Image contents are not decoded here (see ``CheckedDatasetMapper`` for unreadable files).

    Args:
        json_file (str): the annotation file.
        image_root (str): directory the ``file_name`` entries are relative to.
        tolerance (float): pixels, >= 0.

    Returns:
        dict: counts ``{"images": int, "annotations": int, "categories": int}``.

    Raises:
        FileNotFoundError: an image file is missing (naming its path and the json).
        ValueError: any other problem, naming the json, the annotation id, the image file and the
            offending value.
    """
    with open(json_file) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{json_file}: not valid json: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{json_file}: expected a json object with images/annotations/categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{json_file}: missing or non-list '{key}' (COCO instances format)")

    category_ids = {c.get("id") for c in data["categories"] if isinstance(c, dict)}
    images: Dict[int, dict] = {}
    for img in data["images"]:
        if not isinstance(img, dict) or "id" not in img or not img.get("file_name"):
            raise ValueError(f"{json_file}: image entry {img!r} needs 'id' and 'file_name'")
        if img["id"] in images:
            raise ValueError(f"{json_file}: image id {img['id']} appears twice ({img['file_name']!r})")
        w, h = img.get("width"), img.get("height")
        if not (_is_number(w) and _is_number(h) and w > 0 and h > 0):
            raise ValueError(
                f"{json_file}: image {img['file_name']!r} (id {img['id']}) has width={w!r}, height={h!r}; "
                "positive numbers are required"
            )
        path = os.path.join(image_root, img["file_name"])
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file {path} of image id {img['id']} in {json_file} does not exist")
        images[img["id"]] = img

    for ann in data["annotations"]:
        if not isinstance(ann, dict):
            raise ValueError(f"{json_file}: annotation entry {ann!r} is not an object")
        ann_id = ann.get("id")
        img = images.get(ann.get("image_id"))
        if img is None:
            raise ValueError(
                f"{json_file}: annotation id {ann_id} refers to image_id {ann.get('image_id')!r}, "
                "which is not in 'images'"
            )
        where = f"{json_file}: annotation id {ann_id} of image {img['file_name']!r}"
        if ann.get("category_id") not in category_ids:
            raise ValueError(
                f"{where} has category_id {ann.get('category_id')!r}, not one of the json's "
                f"category ids {_sorted_ids(category_ids)}"
            )
        bbox = ann.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise ValueError(f"{where} has bbox {bbox!r}; expected 4 finite numbers [x, y, w, h]")
        x, y, w, h = bbox
        if w <= 0 or h <= 0:
            raise ValueError(f"{where} has bbox {list(bbox)} with non-positive width {w} or height {h}")
        W, H = img["width"], img["height"]
        if x < -tolerance or y < -tolerance or x + w > W + tolerance or y + h > H + tolerance:
            raise ValueError(
                f"{where} has bbox {list(bbox)} (x0={x}, y0={y}, x1={x + w}, y1={y + h}) outside the "
                f"{W}x{H} image (tolerance {tolerance} px)"
            )
    return {"images": len(images), "annotations": len(data["annotations"]), "categories": len(category_ids)}


def _validating_loader(json_file: str, image_root: str, name: str):
    def load() -> List[dict]:
        validate_coco_json(json_file, image_root)
        return load_coco_json(json_file, image_root, name)

    return load


def register_coco_dataset(name: str, json_file: str, image_root: str, validate: bool = True) -> bool:
    """Register a COCO instances dataset under ``name`` (see :func:`register_datasets_from_config`).

    Paths are made absolute (relative to the current working directory) and must exist now.

    Returns:
        bool: True if registered, False if ``name`` was already registered with the same paths.

    Raises:
        FileNotFoundError: ``json_file`` or ``image_root`` does not exist (naming the path).
        ValueError: ``name`` is already registered with other paths or not from a COCO json.
    """
    json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"annotation file {json_file} of dataset '{name}' does not exist (for the bundled tree "
            "data run: python tools/prepare_trees.py --out datasets/trees)"
        )
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"image root {image_root} of dataset '{name}' is not a directory")
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        old = (getattr(meta, "json_file", None), getattr(meta, "image_root", None))
        old = tuple(os.path.abspath(p) if p else p for p in old)
        if old == (json_file, image_root):
            return False
        raise ValueError(
            f"dataset '{name}' is already registered with json_file={old[0]}, image_root={old[1]}; "
            f"cannot register it again with {json_file}, {image_root}; choose another name"
        )
    register_coco_instances(name, {}, json_file, image_root)
    if validate:
        # Same metadata as register_coco_instances; only the loader gains the json check.
        DatasetCatalog.remove(name)
        DatasetCatalog.register(name, _validating_loader(json_file, image_root, name))
    return True


def register_datasets_from_config(cfg) -> List[str]:
    """Register every ``DATASETS.REGISTER_COCO`` entry of ``cfg`` with detectron2.

    Each entry ``"name,json_path,image_root"`` goes through ``register_coco_instances``;
    ``MetadataCatalog.get(name)`` then has ``json_file``, ``image_root``, ``evaluator_type="coco"``
    and, after the first ``DatasetCatalog.get(name)``, ``thing_classes``. With
    ``DATASETS.VALIDATE_ANNOTATIONS`` the loader runs :func:`validate_coco_json` on the raw json
    each time the dataset is loaded (lazily; registration only checks that the paths exist).
    Entries whose name is already registered with the same paths are skipped, so calling this
    twice is harmless.

    Args:
        cfg (CfgNode): a config with ``DATASETS.REGISTER_COCO`` and ``DATASETS.VALIDATE_ANNOTATIONS``
            (``add_anchorfree_config``).

    Returns:
        List[str]: the names registered by this call.

    Raises:
        ValueError: a malformed entry (naming it) or a name taken by other paths.
        FileNotFoundError: a missing json file or image root (naming the path).
    """
    validate = bool(cfg.DATASETS.VALIDATE_ANNOTATIONS)
    registered = []
    for entry in cfg.DATASETS.REGISTER_COCO:
        name, json_file, image_root = parse_register_entry(entry)
        if register_coco_dataset(name, json_file, image_root, validate=validate):
            registered.append(name)
    return registered

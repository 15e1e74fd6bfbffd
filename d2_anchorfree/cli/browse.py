"""Draw the ground-truth boxes of a registered dataset, optionally after the training augmentations.

    d2af browse --dataset trees_train --out output/browse [--num 10] [--augment]
        [--config-file configs/FCOS/FCOS_tiny_R_18_cpu.yaml] [--no-labels] [KEY VALUE ...]

The dataset is any name the config registers (``DATASETS.REGISTER_COCO``; the default config, the
tiny FCOS one, registers the bundled ``trees_train``, ``trees_val`` and ``trees_val_whole``);
loading it runs the data checks of training. ``--num`` images are picked at random (``--seed``)
and each goes through the training mapper (``data.build_train_mapper``, as detectron2's
``tools/visualize_data.py --source dataloader``): with ``--augment`` its augmentations
(``INPUT.MIN_SIZE_TRAIN`` resize, ``INPUT.RANDOM_FLIP``, ``INPUT.CROP``) are applied, and with
``INPUT.MOSAIC.ENABLED`` the mosaic (the picked image top left, the 3 others drawn from the whole
dataset); without ``--augment`` none, so what is drawn is what the model is given: crowd boxes
are dropped, boxes follow the mosaic, resize and flip. ``<out>/<image path relative to the image root>`` (``.png``
added unless it ends so; PNG keeps 1-pixel lines sharp) gets the
boxes drawn with detectron2's ``Visualizer`` (a colour per class, ``--line-width`` pixels,
class names unless ``--no-labels``: for dense scenes).
"""
import argparse
import os
import sys
from typing import Iterator, List, NamedTuple, Optional, Sequence

import cv2
import matplotlib as mpl
import numpy as np

from detectron2.data import DatasetCatalog, Metadata, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.utils.colormap import colormap
from detectron2.utils.visualizer import Visualizer

from d2_anchorfree.cli.predict import relative_names
from d2_anchorfree.data.datasets import parse_register_entry
from d2_anchorfree.data.mapper import CheckedDatasetMapper, build_train_mapper
from d2_anchorfree.engine import setup_cfg
from d2_anchorfree.model_zoo import get_config_file

DEFAULT_CONFIG = "FCOS/FCOS_tiny_R_18_cpu.yaml"


class GroundTruthView(NamedTuple):
    """One dataset image as the training mapper returns it.

    Attributes:
        record (dict): the dataset dict (``file_name`` absolute, ``annotations``).
        image (np.ndarray): uint8 RGB, [H, W, 3], after the augmentations if any.
        boxes (np.ndarray): float32 [N, 4], XYXY pixels of ``image``.
        classes (np.ndarray): int64 [N], contiguous class indices (``thing_classes`` order).
    """

    record: dict
    image: np.ndarray
    boxes: np.ndarray
    classes: np.ndarray


def build_browse_mapper(cfg, augment: bool,
                        dataset_dicts: Optional[Sequence[dict]] = None) -> CheckedDatasetMapper:
    """The training mapper of ``cfg`` (its augmentations from ``INPUT.*``, and the mosaic over
    ``dataset_dicts`` with ``INPUT.MOSAIC.ENABLED``: :func:`~d2_anchorfree.data.build_train_mapper`),
    or a mapper with no augmentation and no mosaic when ``augment`` is False (the image and boxes as
    stored).

    Raises:
        ValueError: mosaic on with ``augment`` and no ``dataset_dicts``, or a bad ``INPUT.MOSAIC`` value.
    """
    if augment:
        return build_train_mapper(cfg, dataset_dicts)
    return CheckedDatasetMapper(cfg, is_train=True, augmentations=[])


def ground_truth_views(records: Sequence[dict], mapper, image_format: str) -> Iterator[GroundTruthView]:
    """Map each record with ``mapper`` and return the image (RGB) and the boxes it yields.

    Args:
        records (list[dict]): detectron2 dataset dicts.
        mapper (callable): a training mapper (``is_train=True``), e.g. :func:`build_browse_mapper`.
        image_format (str): the mapper's image format (``cfg.INPUT.FORMAT``: "BGR", "RGB", ...).

    Yields:
        GroundTruthView: per record, in order.

    Raises:
        FileNotFoundError / ValueError: an unreadable image (the mapper names the file).
    """
    for record in records:
        out = mapper(record)
        image = utils.convert_image_to_rgb(out["image"].permute(1, 2, 0).numpy(), image_format)
        instances = out.get("instances")
        if instances is None or len(instances) == 0:
            boxes, classes = np.zeros((0, 4), np.float32), np.zeros((0,), np.int64)
        else:
            boxes = instances.gt_boxes.tensor.numpy().astype(np.float32)
            classes = instances.gt_classes.numpy().astype(np.int64)
        yield GroundTruthView(record, np.ascontiguousarray(image, dtype=np.uint8), boxes, classes)


class _GroundTruthVisualizer(Visualizer):
    """detectron2's ``Visualizer`` whose boxes are ``line_width`` pixels wide and opaque (the
    parent ties the width to the font size: 2.5 px on a 400 px image, too thick for dense scenes)."""

    def __init__(self, img_rgb, metadata, line_width: float):
        super().__init__(img_rgb, metadata)
        self._line_width = line_width

    def draw_box(self, box_coord, alpha=0.5, edge_color="g", line_style="-"):
        x0, y0, x1, y1 = box_coord
        self.output.ax.add_patch(mpl.patches.Rectangle(
            (x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=edge_color,
            linewidth=self._line_width * self.output.scale, alpha=1.0, linestyle=line_style))
        return self.output


def draw_ground_truth(view: GroundTruthView, class_names: Sequence[str], line_width: float = 1.0,
                      labels: bool = True) -> np.ndarray:
    """Draw ``view``'s boxes on its image with detectron2's ``Visualizer``.

    Args:
        view (GroundTruthView): from :func:`ground_truth_views`.
        class_names (list[str]): ``thing_classes`` of the dataset.
        line_width (float): box outline width, pixels (> 0).
        labels (bool): write each box's class name at its corner.

    Returns:
        np.ndarray: uint8 RGB [H, W, 3], the image's size.
    """
    palette = colormap(rgb=True, maximum=1)
    vis = _GroundTruthVisualizer(view.image, Metadata(), line_width)
    if len(view.boxes):
        vis.overlay_instances(
            boxes=view.boxes,
            labels=[class_names[c] for c in view.classes] if labels else None,
            assigned_colors=[palette[c % len(palette)] for c in view.classes],
        )
    return vis.output.get_image()


def pick_records(records: Sequence[dict], num: int, seed: int) -> List[dict]:
    """``num`` records drawn at random without repetition (all when ``num`` >= their number),
    in dataset order; the same ``seed`` picks the same ones."""
    if num >= len(records):
        return list(records)
    chosen = np.random.default_rng(seed).choice(len(records), size=num, replace=False)
    return [records[i] for i in sorted(chosen)]


def _registered_names(cfg) -> List[str]:
    return [parse_register_entry(e)[0] for e in cfg.DATASETS.REGISTER_COCO]


def main(argv=None, prog=None) -> int:
    """Command-line entry point (see the module docstring).

    Returns:
        int: 0 when the images were written; 1 when the dataset is not registered, fails its
        checks, or an image cannot be read (the error is printed).
    """
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--dataset", required=True, help="a dataset name the config registers")
    parser.add_argument("--config-file", default=None,
                        help=f"config registering the dataset, with the augmentations (default: {DEFAULT_CONFIG})")
    parser.add_argument("--augment", action="store_true", help="apply the config's training augmentations")
    parser.add_argument("--out", required=True, help="folder for the drawn images")
    parser.add_argument("--num", type=int, default=10, help="number of images (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="picks the images and the augmentations")
    parser.add_argument("--line-width", type=float, default=1.0, help="box outline width, pixels")
    parser.add_argument("--no-labels", action="store_true", help="boxes only, no class names")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    args = parser.parse_args(argv)
    if args.num < 1:
        parser.error(f"--num must be >= 1, got {args.num}")
    if not args.line_width > 0:
        parser.error(f"--line-width must be > 0 pixels, got {args.line_width}")
    config_file = args.config_file or get_config_file(DEFAULT_CONFIG)
    try:
        cfg = setup_cfg(argparse.Namespace(config_file=config_file, opts=args.opts), default_setup_logging=False)
        if args.dataset not in DatasetCatalog.list():
            raise ValueError(f"dataset {args.dataset!r} is not registered; {config_file} registers "
                             f"{_registered_names(cfg)} (DATASETS.REGISTER_COCO)")
        dataset = DatasetCatalog.get(args.dataset)
        records = pick_records(dataset, args.num, args.seed)
        meta = MetadataCatalog.get(args.dataset)
        class_names = list(meta.thing_classes)
        names = relative_names([r["file_name"] for r in records], os.path.abspath(meta.image_root))
        np.random.seed(args.seed)  # detectron2's augmentations draw from numpy's global generator
        views = ground_truth_views(records, build_browse_mapper(cfg, args.augment, dataset), cfg.INPUT.FORMAT)
        os.makedirs(args.out, exist_ok=True)
        boxes = 0
        for name, view in zip(names, views):
            drawn = draw_ground_truth(view, class_names, args.line_width, labels=not args.no_labels)
            path = os.path.join(args.out, name if name.lower().endswith(".png") else name + ".png")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if not cv2.imwrite(path, np.ascontiguousarray(drawn[:, :, ::-1])):
                raise ValueError(f"could not write {path}")
            boxes += len(view.boxes)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    state = "after the training augmentations" if args.augment else "as stored"
    if args.augment and cfg.INPUT.MOSAIC.ENABLED:
        state += f", mosaics with probability {cfg.INPUT.MOSAIC.PROB:g}"
    print(f"wrote {len(records)} images with {boxes} boxes ({state}) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Create the bundled tree-crown dataset (COCO format) from the MIT-licensed deepforest 2.1.0 wheel.

Usage (``python tools/prepare_trees.py`` takes the same arguments):
    d2af prepare-data --out datasets/trees [--cache-dir DIR] [--force]
        [--keep-class-names] [--tile-size 400] [--stride 300] [--val-width 400]

Downloads ``deepforest-2.1.0-py3-none-any.whl`` with ``pip download`` into ``--cache-dir``
(default ``~/.cache/d2_anchorfree``) unless it is already there, reads its four images and VOC
boxes without installing it, tiles the large images (400x400, stride <= 300), splits train/val by
image region (a strip at the right side of each large image is val) and writes
``OUT/images/*.png``, ``OUT/train.json``, ``OUT/val.json``, ``OUT/val_whole.json`` (the val
regions whole, not tiled: for sliced inference), ``OUT/LICENSE``, ``OUT/NOTICE`` and
``OUT/manifest.json``. Idempotent: a complete output made with the same options is left alone
(``--force`` rebuilds). See :mod:`d2_anchorfree.data.trees` for the details.

The tiny configs register the result with
``DATASETS.REGISTER_COCO: ["trees_train,datasets/trees/train.json,datasets/trees/images", ...]``.
"""
import argparse
import os
import sys

from d2_anchorfree.data import trees


def default_cache_dir() -> str:
    """Where the deepforest wheel is kept: ``$XDG_CACHE_HOME/d2_anchorfree`` (default
    ``~/.cache/d2_anchorfree``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "d2_anchorfree")


def main(argv=None, prog=None) -> int:
    """Command-line entry point (see the module docstring).

    Args:
        argv (list[str], optional): the arguments (default: ``sys.argv[1:]``).
        prog (str, optional): the program name shown in the usage (default: the script's name).

    Returns:
        int: 0.

    Raises:
        RuntimeError, ValueError: as :func:`d2_anchorfree.data.trees.prepare_trees`.
    """
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="datasets/trees", help="output directory (default: %(default)s)")
    parser.add_argument("--cache-dir", default=default_cache_dir(),
                        help="where the deepforest wheel is kept (default: %(default)s)")
    parser.add_argument("--wheel", default=None, help="use this local deepforest-2.1.0 wheel file")
    parser.add_argument("--force", action="store_true", help="rebuild even if the output is complete")
    parser.add_argument("--keep-class-names", action="store_true",
                        help="keep the VOC names (Alive, Dead, Tree) as separate classes instead of one 'tree'")
    parser.add_argument("--tile-size", type=int, default=400, help="tile side, pixels")
    parser.add_argument("--stride", type=int, default=300, help="maximum tile spacing, pixels (<= tile size)")
    parser.add_argument("--val-width", type=int, default=400,
                        help="width of the val strip at the right of each large image, pixels (>= tile size)")
    parser.add_argument("--min-visible", type=float, default=0.5,
                        help="drop a clipped box showing less than this fraction of its area")
    parser.add_argument("--min-side", type=float, default=4.0, help="drop a clipped box narrower than this, pixels")
    parser.add_argument("--small-image-split", choices=("train", "val"), default="train",
                        help="split of the images too small to split by region")
    args = parser.parse_args(argv)

    manifest = trees.prepare_trees(
        args.out,
        cache_dir=args.cache_dir,
        force=args.force,
        wheel_path=args.wheel,
        tile_size=args.tile_size,
        stride=args.stride,
        val_width=args.val_width,
        min_visible=args.min_visible,
        min_side=args.min_side,
        keep_class_names=args.keep_class_names,
        small_image_split=args.small_image_split,
    )
    summary = manifest["summary"]
    state = "already complete, nothing done (--force rebuilds)" if manifest["skipped"] else "written"
    print(f"[prepare_trees] {args.out}: {state}")
    print(f"[prepare_trees] classes: {summary['categories']}")
    total = summary["train"]["source_boxes"] + summary["val"]["source_boxes"]
    for split in ("train", "val", "val_whole"):
        s = summary[split]
        print(
            f"[prepare_trees] {split:9s}: {s['images']:3d} images, {s['boxes']:4d} boxes "
            f"({s['source_boxes']} distinct source boxes, {100.0 * s['source_boxes'] / max(total, 1):.1f}%), "
            f"{s['empty_images']} images without boxes"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

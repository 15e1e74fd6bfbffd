"""The training augmentations of the config: detectron2's (``INPUT.MIN_SIZE_TRAIN`` resize,
``INPUT.RANDOM_FLIP``, ``INPUT.CROP``), or, with ``INPUT.SCALE_JITTER.ENABLED``, a random-scale
resize and a fixed-size crop in place of the resize.

Scale jitter (detectron2's ``ResizeScale`` + ``FixedSizeCrop``, the "large scale jitter" of
Ghiasi et al., "Simple Copy-Paste is a Strong Data Augmentation Method for Instance
Segmentation", CVPR 2021, Sec. 3, and the ``scale`` of Ultralytics' ``RandomPerspective``):
every training image is resized so that it fits an S x S square times a factor drawn uniformly
in [MIN_SCALE, MAX_SCALE] (aspect kept), then cut to S x S at a random place when it is larger
or padded at the bottom and right with grey 114 when it is smaller. Objects appear from
MIN_SCALE to MAX_SCALE times their size at test resolution (a 400 px tile with S = 400 tests at
scale 1), and every batch holds S x S images, so a wide scale range costs no padding (the
ordinary resize pads each batch to its largest image). Boxes cut by the crop are clipped to it;
boxes cut away entirely are dropped (detectron2's annotation transform and
``filter_empty_instances``).
"""
import math
from typing import List

from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .mosaic import MOSAIC_FILL

__all__ = ["MIN_SCALE_JITTER_SIZE", "build_train_augmentations", "check_scale_jitter_args",
           "check_scale_jitter_config"]

# INPUT.SCALE_JITTER.SIZE below this is refused (the coarsest FPN level of the presets is stride 128).
MIN_SCALE_JITTER_SIZE = 32


def _positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def check_scale_jitter_args(min_scale: float, max_scale: float, size: int) -> None:
    """Check the values of ``INPUT.SCALE_JITTER.MIN_SCALE``, ``MAX_SCALE`` and ``SIZE``.

    Raises:
        ValueError: naming the first offending key and its value: MIN_SCALE or MAX_SCALE not a
            positive number, MIN_SCALE > MAX_SCALE, SIZE not a whole number of pixels >= 32.
    """
    for key, value in (("MIN_SCALE", min_scale), ("MAX_SCALE", max_scale)):
        if not _positive_number(value):
            raise ValueError(f"INPUT.SCALE_JITTER.{key} = {value!r}: must be a positive number (a factor of "
                             "the image size at which it fits SIZE x SIZE, e.g. 0.5 or 1.5)")
    if min_scale > max_scale:
        raise ValueError(f"INPUT.SCALE_JITTER.MIN_SCALE = {min_scale!r} is above MAX_SCALE = {max_scale!r}")
    if not (isinstance(size, int) and not isinstance(size, bool) and size >= MIN_SCALE_JITTER_SIZE):
        raise ValueError(f"INPUT.SCALE_JITTER.SIZE = {size!r}: must be a whole number of pixels >= "
                         f"{MIN_SCALE_JITTER_SIZE} (the side of the square training images, e.g. 416)")


def check_scale_jitter_config(cfg) -> None:
    """:func:`check_scale_jitter_args` on ``cfg.INPUT.SCALE_JITTER`` when ``ENABLED`` (nothing is
    checked otherwise). Called by the trainer before the model is built.

    Raises:
        ValueError: see :func:`check_scale_jitter_args`.
    """
    jitter = cfg.INPUT.SCALE_JITTER
    if jitter.ENABLED:
        check_scale_jitter_args(jitter.MIN_SCALE, jitter.MAX_SCALE, jitter.SIZE)


def build_train_augmentations(cfg) -> List[T.Augmentation]:
    """The training augmentations of ``cfg``, in the order they apply.

    Without ``INPUT.SCALE_JITTER.ENABLED``: exactly detectron2's ``DatasetMapper`` list
    (``INPUT.CROP`` first when enabled, then ``ResizeShortestEdge`` over ``INPUT.MIN_SIZE_TRAIN``
    and ``MAX_SIZE_TRAIN``, then ``RandomFlip`` per ``INPUT.RANDOM_FLIP``). With it: the crop when
    enabled, ``ResizeScale(MIN_SCALE, MAX_SCALE, SIZE, SIZE)``, ``FixedSizeCrop((SIZE, SIZE))``
    padded with 114, then the flip (see the module docstring); ``INPUT.MIN_SIZE_TRAIN`` and
    ``MAX_SIZE_TRAIN`` are not used.

    Raises:
        ValueError: a bad ``INPUT.SCALE_JITTER`` value (:func:`check_scale_jitter_args`), or
            detectron2's errors for a bad ``INPUT.RANDOM_FLIP`` / ``INPUT.CROP``.
    """
    jitter = cfg.INPUT.SCALE_JITTER
    if not jitter.ENABLED:
        augmentations = utils.build_augmentation(cfg, is_train=True)
    else:
        check_scale_jitter_args(jitter.MIN_SCALE, jitter.MAX_SCALE, jitter.SIZE)
        size = int(jitter.SIZE)
        augmentations = [T.ResizeScale(min_scale=float(jitter.MIN_SCALE), max_scale=float(jitter.MAX_SCALE),
                                       target_height=size, target_width=size),
                         T.FixedSizeCrop(crop_size=(size, size), pad=True, pad_value=float(MOSAIC_FILL))]
        # detectron2's flip, from the same config keys (build_augmentation appends it last).
        augmentations += [aug for aug in utils.build_augmentation(cfg, is_train=True) if isinstance(aug, T.RandomFlip)]
    if cfg.INPUT.CROP.ENABLED:
        augmentations.insert(0, T.RandomCrop(cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE))
    return augmentations

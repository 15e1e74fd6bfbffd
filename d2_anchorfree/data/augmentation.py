"""The training augmentations of the config: detectron2's (``INPUT.MIN_SIZE_TRAIN`` resize,
``INPUT.RANDOM_FLIP``, ``INPUT.CROP``), or, with ``INPUT.SCALE_JITTER.ENABLED``, a random-scale
resize and a fixed-size crop in place of the resize; and, with ``INPUT.HSV.ENABLED``, random
hue, saturation and value gains (:class:`RandomHSV`).

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
from typing import List, Tuple

import cv2
import numpy as np

from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from ..checks import is_number, is_whole_number
from .mosaic import MOSAIC_FILL

__all__ = ["HSV_FORMATS", "MIN_SCALE_JITTER_SIZE", "RandomHSV", "build_train_augmentations", "check_hsv_args",
           "check_hsv_config", "check_scale_jitter_args", "check_scale_jitter_config", "hsv_gain"]

# INPUT.FORMAT values that RandomHSV can convert to HSV (OpenCV's conversion codes).
HSV_FORMATS = {"BGR": (cv2.COLOR_BGR2HSV, cv2.COLOR_HSV2BGR), "RGB": (cv2.COLOR_RGB2HSV, cv2.COLOR_HSV2RGB)}

# INPUT.SCALE_JITTER.SIZE below this is refused (the coarsest FPN level of the presets is stride 128).
MIN_SCALE_JITTER_SIZE = 32


def check_scale_jitter_args(min_scale: float, max_scale: float, size: int) -> None:
    """Check the values of ``INPUT.SCALE_JITTER.MIN_SCALE``, ``MAX_SCALE`` and ``SIZE``.

    Raises:
        ValueError: naming the first offending key and its value: MIN_SCALE or MAX_SCALE not a
            positive number, MIN_SCALE > MAX_SCALE, SIZE not a whole number of pixels >= 32.
    """
    for key, value in (("MIN_SCALE", min_scale), ("MAX_SCALE", max_scale)):
        if not (is_number(value) and value > 0):
            raise ValueError(f"INPUT.SCALE_JITTER.{key} = {value!r}: must be a positive number (a factor of "
                             "the image size at which it fits SIZE x SIZE, e.g. 0.5 or 1.5)")
    if min_scale > max_scale:
        raise ValueError(f"INPUT.SCALE_JITTER.MIN_SCALE = {min_scale!r} is above MAX_SCALE = {max_scale!r}")
    if not (is_whole_number(size) and size >= MIN_SCALE_JITTER_SIZE):
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
    ``MAX_SIZE_TRAIN`` are not used. With ``INPUT.HSV.ENABLED``, :class:`RandomHSV` last.

    Raises:
        ValueError: a bad ``INPUT.SCALE_JITTER`` or ``INPUT.HSV`` value (:func:`check_scale_jitter_args`,
            :func:`check_hsv_args`), or detectron2's errors for a bad ``INPUT.RANDOM_FLIP`` / ``INPUT.CROP``.
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
    hsv = cfg.INPUT.HSV
    if hsv.ENABLED:
        augmentations.append(RandomHSV(hsv.HUE, hsv.SATURATION, hsv.VALUE, cfg.INPUT.FORMAT))
    return augmentations


def check_hsv_args(hue: float, saturation: float, value: float, image_format: str) -> None:
    """Check ``INPUT.HSV.HUE``, ``SATURATION``, ``VALUE`` (each a number in [0, 1]) and that
    ``INPUT.FORMAT`` is a colour format (:data:`HSV_FORMATS`).

    Raises:
        ValueError: naming the first offending key and its value.
    """
    for key, gain in (("HUE", hue), ("SATURATION", saturation), ("VALUE", value)):
        if not (is_number(gain) and 0 <= gain <= 1):
            raise ValueError(f"INPUT.HSV.{key} = {gain!r}: must be a number in [0, 1] (the largest relative "
                             "change, e.g. 0.4: gains from 0.6 to 1.4)")
    if image_format not in HSV_FORMATS:
        raise ValueError(f"INPUT.HSV.ENABLED with INPUT.FORMAT = {image_format!r}: the HSV augmentation needs "
                         f"colour images, one of {sorted(HSV_FORMATS)}")


def check_hsv_config(cfg) -> None:
    """:func:`check_hsv_args` on ``cfg.INPUT.HSV`` and ``cfg.INPUT.FORMAT`` when ``INPUT.HSV.ENABLED``
    (nothing is checked otherwise). Called by the trainer before the model is built.

    Raises:
        ValueError: see :func:`check_hsv_args`.
    """
    hsv = cfg.INPUT.HSV
    if hsv.ENABLED:
        check_hsv_args(hsv.HUE, hsv.SATURATION, hsv.VALUE, cfg.INPUT.FORMAT)


def hsv_gain(image: np.ndarray, gains: Tuple[float, float, float], image_format: str = "BGR") -> np.ndarray:
    """Multiply the hue, saturation and value of ``image`` by ``gains`` in OpenCV's 8-bit HSV (hue
    in [0, 180), wrapping around; saturation and value clipped to [0, 255]).

    Args:
        image: [H, W, 3] uint8 in ``image_format`` ("BGR" or "RGB").
        gains: (hue, saturation, value) factors, e.g. (1.01, 0.5, 1.2); (1, 1, 1) returns the
            image itself (OpenCV's 8-bit HSV round trip alone moves pixels by up to 4 levels).

    Returns:
        [H, W, 3] uint8, the same format.

    Raises:
        ValueError: an image that is not [H, W, 3] uint8, or an unknown format.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"hsv_gain takes [H, W, 3] uint8 images, got {image.shape} {image.dtype}")
    if image_format not in HSV_FORMATS:
        raise ValueError(f"hsv_gain: image_format = {image_format!r}, use one of {sorted(HSV_FORMATS)}")
    if tuple(gains) == (1, 1, 1):
        return image
    to_hsv, from_hsv = HSV_FORMATS[image_format]
    levels = np.arange(256, dtype=np.float64)
    tables = [(levels * gains[0]).astype(np.int64) % 180, np.clip(levels * gains[1], 0, 255),
              np.clip(levels * gains[2], 0, 255)]
    hue, sat, val = cv2.split(cv2.cvtColor(np.ascontiguousarray(image), to_hsv))
    hsv = cv2.merge([cv2.LUT(channel, table.astype(np.uint8)) for channel, table in zip((hue, sat, val), tables)])
    return cv2.cvtColor(hsv, from_hsv)


class RandomHSV(T.Augmentation):
    """Random hue, saturation and value gains (YOLO's HSV augmentation): per image, gains
    1 + u * (hue, saturation, value) with u uniform in [-1, 1] for each, drawn from numpy's global
    generator (seeded per sample by the resumable training loader), applied by :func:`hsv_gain`.
    Boxes do not move. Ultralytics' defaults are 0.015, 0.7, 0.4 (``hsv_h``, ``hsv_s``, ``hsv_v``
    in ``ultralytics/cfg/default.yaml``; ``ultralytics/data/augment.py`` ``RandomHSV``).
    """

    def __init__(self, hue: float, saturation: float, value: float, image_format: str = "BGR"):
        """
        Args:
            hue, saturation, value: largest relative change of each, in [0, 1].
            image_format: "BGR" or "RGB", the mapper's image format.

        Raises:
            ValueError: see :func:`check_hsv_args`.
        """
        super().__init__()
        check_hsv_args(hue, saturation, value, image_format)
        self.amplitudes = (float(hue), float(saturation), float(value))
        self.image_format = image_format

    def get_transform(self, image: np.ndarray) -> T.Transform:
        gains = tuple(1.0 + np.random.uniform(-1, 1, 3) * self.amplitudes)
        return T.ColorTransform(lambda img: hsv_gain(img, gains, self.image_format))

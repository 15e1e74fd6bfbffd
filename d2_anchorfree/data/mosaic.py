"""Geometry of the 4-image mosaic augmentation (YOLO's mosaic), as pure functions of numpy arrays.

Four images, each resized so that its longer side is S pixels (:func:`resize_longer_side`), are
laid around a centre (xc, yc) on a 2S x 2S canvas filled with grey 114 (:func:`mosaic4`):

    image 0 (top left):     bottom-right corner at (xc, yc)
    image 1 (top right):    bottom-left corner at (xc, yc)
    image 2 (bottom left):  top-right corner at (xc, yc)
    image 3 (bottom right): top-left corner at (xc, yc)

so each image fills its quadrant of the canvas against the centre, and what lies outside the
canvas is cut off. The centre is drawn uniformly in [S/2, 3S/2] in both axes
(:func:`sample_mosaic_center`; Ultralytics' ``border = -S // 2``). The result is either the S x S
middle of the canvas (``"crop"``, rows and columns [S//2, S//2 + S): Ultralytics'
``RandomPerspective`` border crop with no translation; every quadrant is visible, the centre
at a random place inside the crop) or the whole 2S x 2S canvas (``"full"``: about four images'
objects in one training image, DEIM's dense one-to-one positives, once the ordinary resize
shrinks it). With a scale s (``INPUT.MOSAIC.MIN_SCALE`` / ``MAX_SCALE``, :func:`sample_mosaic_scale`)
the "crop" window is the W x W middle of the canvas, W = round(S / s) (``crop_size`` of
:func:`mosaic4`), which the mapper then resizes to S x S: objects at s times their size, the
scale of Ultralytics' ``RandomPerspective`` (about the canvas centre, no translation), and since
s >= 0.5 keeps the window inside the canvas, no padding. Boxes move with their image and are clipped to what is visible of it; a box is kept
when at least ``min_visible`` of its area stays visible and it stays at least 2 px wide and high.

Conventions: images [H, W, C] uint8 (any channel count, the same for the four), boxes XYXY in
continuous pixel coordinates (pixel (x, y) covers [x, x + 1) x [y, y + 1)), offsets in whole
pixels.

Sources: Ultralytics ``ultralytics/data/augment.py`` (``Mosaic._mosaic4``, ``RandomPerspective``'s
border crop, ``box_candidates``); Bochkovskiy et al., "YOLOv4", 2020, Sec. 3.3 (mosaic); Huang et
al., "DEIM: DETR with Improved Matching for Fast Convergence", CVPR 2025, Sec. 3.2 (Dense O2O:
mosaic to raise the number of positives per image).
"""
from typing import NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np

from ..checks import is_number, is_whole_number

__all__ = ["MOSAIC_OUTPUTS", "MOSAIC_FILL", "MIN_BOX_SIDE", "MIN_MOSAIC_SCALE", "MosaicResult", "check_mosaic_args",
           "check_mosaic_config", "config_at_iteration", "mosaic4", "mosaic_close_iter", "resize_longer_side",
           "sample_mosaic_center", "sample_mosaic_scale"]

# INPUT.MOSAIC.OUTPUT values.
MOSAIC_OUTPUTS = ("crop", "full")
# The value of canvas pixels that no image covers (YOLO's grey).
MOSAIC_FILL = 114
# Boxes narrower or lower than this (pixels) after clipping are dropped.
MIN_BOX_SIDE = 2.0
# INPUT.MOSAIC.SIZE below this is refused.
MIN_MOSAIC_SIZE = 32
# INPUT.MOSAIC.MIN_SCALE below this is refused: the crop window (S / scale) would leave the 2S canvas.
MIN_MOSAIC_SCALE = 0.5


def check_mosaic_args(prob: float, size: int, output: str, min_visible: float, min_scale: float = 1.0,
                      max_scale: float = 1.0) -> None:
    """Check the values of ``INPUT.MOSAIC.PROB``, ``SIZE``, ``OUTPUT``, ``MIN_VISIBLE``, ``MIN_SCALE``
    and ``MAX_SCALE``.

    Raises:
        ValueError: naming the first offending key and its value: PROB or MIN_VISIBLE not a number
            in [0, 1], SIZE not a whole number >= 32 (pixels), OUTPUT not one of :data:`MOSAIC_OUTPUTS`,
            MIN_SCALE not a number >= 0.5 or above MAX_SCALE, MAX_SCALE not finite, a scale other
            than 1 with OUTPUT "full".
    """
    if not (is_number(prob) and 0 <= prob <= 1):
        raise ValueError(f"INPUT.MOSAIC.PROB = {prob!r}: must be a number in [0, 1] (the probability that a "
                         "training sample is a mosaic)")
    if not (is_whole_number(size) and size >= MIN_MOSAIC_SIZE):
        raise ValueError(f"INPUT.MOSAIC.SIZE = {size!r}: must be a whole number of pixels >= {MIN_MOSAIC_SIZE} "
                         "(the longer side of each of the 4 images, e.g. 416)")
    if output not in MOSAIC_OUTPUTS:
        raise ValueError(f"INPUT.MOSAIC.OUTPUT = {output!r}: use one of {list(MOSAIC_OUTPUTS)} ('crop': the "
                         "S x S middle of the canvas; 'full': the whole 2S x 2S canvas)")
    if not (is_number(min_visible) and 0 <= min_visible <= 1):
        raise ValueError(f"INPUT.MOSAIC.MIN_VISIBLE = {min_visible!r}: must be a number in [0, 1] (the fraction "
                         "of a clipped box's area that must stay visible to keep it)")
    if not (is_number(min_scale) and min_scale >= MIN_MOSAIC_SCALE):
        raise ValueError(f"INPUT.MOSAIC.MIN_SCALE = {min_scale!r}: must be a number >= {MIN_MOSAIC_SCALE} (the "
                         "crop shows SIZE / scale pixels of the 2 SIZE canvas)")
    if not (is_number(max_scale) and max_scale >= min_scale):
        raise ValueError(f"INPUT.MOSAIC.MAX_SCALE = {max_scale!r}: must be a finite number >= MIN_SCALE "
                         f"= {min_scale!r}")
    if output == "full" and (min_scale, max_scale) != (1, 1):
        raise ValueError(f"INPUT.MOSAIC.MIN_SCALE / MAX_SCALE = {min_scale!r} / {max_scale!r} scale the 'crop' "
                         "output; with OUTPUT 'full' leave them at 1.0 (the ordinary resize sets its scale)")


def check_mosaic_config(cfg) -> None:
    """:func:`check_mosaic_args` on ``cfg.INPUT.MOSAIC`` when ``ENABLED``, and its ``CLOSE_ITERS``
    (nothing is checked otherwise). Called by the trainer before the model is built.

    Raises:
        ValueError: see :func:`check_mosaic_args`; ``CLOSE_ITERS`` not a whole number >= 0, or not
            below ``SOLVER.MAX_ITER`` (the mosaic would never be used).
    """
    mosaic = cfg.INPUT.MOSAIC
    if not mosaic.ENABLED:
        return
    check_mosaic_args(mosaic.PROB, mosaic.SIZE, mosaic.OUTPUT, mosaic.MIN_VISIBLE, mosaic.MIN_SCALE,
                      mosaic.MAX_SCALE)
    close = mosaic.CLOSE_ITERS
    if not (is_whole_number(close) and close >= 0):
        raise ValueError(f"INPUT.MOSAIC.CLOSE_ITERS = {close!r}: must be a whole number >= 0 (the last "
                         "iterations trained without the mosaic; 0: mosaic to the end)")
    if close >= cfg.SOLVER.MAX_ITER:
        raise ValueError(f"INPUT.MOSAIC.CLOSE_ITERS = {close} is not below SOLVER.MAX_ITER = "
                         f"{cfg.SOLVER.MAX_ITER}, so no iteration would use the mosaic; set "
                         "INPUT.MOSAIC.ENABLED False instead")


def mosaic_close_iter(cfg) -> Optional[int]:
    """The first training iteration without the mosaic (``SOLVER.MAX_ITER - INPUT.MOSAIC.CLOSE_ITERS``;
    Ultralytics' ``close_mosaic``), or None when the mosaic is off or never closed.

    Returns:
        Optional[int]: an iteration index in [1, SOLVER.MAX_ITER), or None.
    """
    mosaic = cfg.INPUT.MOSAIC
    if not mosaic.ENABLED or mosaic.CLOSE_ITERS <= 0:
        return None
    return cfg.SOLVER.MAX_ITER - mosaic.CLOSE_ITERS


def config_at_iteration(cfg, iteration: int):
    """``cfg`` as the training loader for iterations from ``iteration`` on must read it: a copy with
    ``INPUT.MOSAIC.ENABLED`` False once ``iteration`` has reached :func:`mosaic_close_iter`, else
    ``cfg`` itself (not copied)."""
    close = mosaic_close_iter(cfg)
    if close is None or iteration < close:
        return cfg
    closed = cfg.clone()
    closed.defrost()
    closed.INPUT.MOSAIC.ENABLED = False
    return closed


def sample_mosaic_center(size: int) -> Tuple[int, int]:
    """Draw the mosaic centre (xc, yc), whole pixels of the 2S x 2S canvas, each uniform in
    [S // 2, S // 2 + S] (both ends included: for even S, [S/2, 3S/2]), from numpy's global
    generator (x first), the generator detectron2's augmentations and the resumable training loader
    seed per sample."""
    low = size // 2
    xc, yc = np.random.randint(low, low + size + 1, size=2)
    return int(xc), int(yc)


def sample_mosaic_scale(min_scale: float, max_scale: float) -> float:
    """The scale of one mosaic: uniform in [min_scale, max_scale] from numpy's global generator
    (drawn after the centre), or ``min_scale`` without a draw when the two are equal (so a run
    without scale jitter draws exactly the numbers it drew before the option existed)."""
    if min_scale == max_scale:
        return float(min_scale)
    return float(np.random.uniform(min_scale, max_scale))


def crop_side(size: int, scale: float) -> int:
    """W = round(S / scale), the side in canvas pixels of the "crop" window at ``scale``, kept in
    [1, 2S]."""
    return int(min(max(round(size / scale), 1), 2 * size))


def resize_longer_side(image: np.ndarray, size: int) -> Tuple[np.ndarray, Tuple[float, float]]:
    """Resize ``image`` so that its longer side is ``size`` pixels, aspect kept (the shorter side
    ``max(1, round(side * size / longer))``); area interpolation when shrinking, bilinear when
    enlarging (OpenCV).

    Args:
        image: [H, W, C] uint8.
        size: the longer side of the result, pixels (>= 1).

    Returns:
        (resized [H', W', C] uint8, (sx, sy)): ``sx = W' / W``, ``sy = H' / H``, the factors that
        map box x and y coordinates to the resized image.
    """
    h, w = image.shape[:2]
    scale = size / max(h, w)
    new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
    if (new_w, new_h) != (w, h):
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
        image = resized.reshape(new_h, new_w, image.shape[2])  # OpenCV drops a single channel
    return image, (new_w / w, new_h / h)


class MosaicResult(NamedTuple):
    """The output of :func:`mosaic4`.

    Attributes:
        image: [W, W, C] ("crop", W = ``crop_size``, by default S) or [2S, 2S, C] ("full"), the
            images' dtype.
        boxes: float64 [M, 4], the kept boxes, XYXY pixels of ``image``, clipped to what is
            visible of their own image.
        image_index: int64 [M], which of the four images each kept box comes from (0 to 3).
        box_index: int64 [M], its row in that image's ``boxes``.
    """

    image: np.ndarray
    boxes: np.ndarray
    image_index: np.ndarray
    box_index: np.ndarray


def _clip(boxes: np.ndarray, window: Sequence[float]) -> np.ndarray:
    x0, y0, x1, y1 = window
    return np.stack([boxes[:, 0].clip(x0, x1), boxes[:, 1].clip(y0, y1),
                     boxes[:, 2].clip(x0, x1), boxes[:, 3].clip(y0, y1)], axis=1)


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]).clip(min=0) * (boxes[:, 3] - boxes[:, 1]).clip(min=0)


def mosaic4(images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], center: Tuple[int, int], size: int,
            output: str = "crop", min_visible: float = 0.25, fill: int = MOSAIC_FILL,
            crop_size: Optional[int] = None) -> MosaicResult:
    """Lay four images around ``center`` on a 2S x 2S canvas and cut out the result (see the
    module docstring for the layout).

    Image i of size h x w is placed with its top-left corner at (xc - w or xc, yc - h or yc) and
    shows only where it overlaps its quadrant ([0, xc] or [xc, 2S] by [0, yc] or [yc, 2S]); images
    whose longer side is at most S never reach another quadrant, so only the canvas edge cuts them.
    Box j of image i moves by the same offset; its reference area is its area clipped to the image
    itself, its visible part the box clipped to the image, its quadrant and the output window
    ([(2S - W)//2, (2S - W)//2 + W]^2 for "crop", W = ``crop_size``, by default S, so [S//2, S//2 + S]^2;
    [0, 2S]^2 for "full"). It is kept when the visible part is at
    least :data:`MIN_BOX_SIDE` (2) pixels wide and high and its area at least ``min_visible`` of the
    reference area; kept boxes are the visible parts, in the output's pixels.

    Args:
        images: four [h_i, w_i, C] arrays (usually uint8, already resized by
            :func:`resize_longer_side`), the same C and dtype; top-left, top-right, bottom-left,
            bottom-right.
        boxes: four float arrays [N_i, 4] (N_i may be 0), XYXY pixels of the matching image.
        center: (xc, yc), whole pixels of the canvas, each in [0, 2S] (:func:`sample_mosaic_center`
            draws them in [S//2, S//2 + S]).
        size: S, pixels (>= 1).
        output: "crop" or "full".
        min_visible: in [0, 1].
        fill: the value of canvas pixels that no image covers.
        crop_size: W, the side of the "crop" window in canvas pixels, in [1, 2S] (None: S).

    Returns:
        MosaicResult: the image (W x W for "crop"), the kept boxes and where each came from, in image
        order then box order.

    Raises:
        ValueError: not four images and four box arrays, channel counts or dtypes that differ, a
            centre outside the canvas, an unknown ``output``, ``min_visible`` outside [0, 1], a
            ``crop_size`` outside [1, 2S] or given with "full".
    """
    if len(images) != 4 or len(boxes) != 4:
        raise ValueError(f"mosaic4 takes 4 images and 4 box arrays, got {len(images)} and {len(boxes)}")
    if len({(im.shape[2:], im.dtype) for im in images}) != 1 or any(im.ndim != 3 for im in images):
        raise ValueError("mosaic4: the 4 images must be [H, W, C] arrays of the same C and dtype, got "
                         f"{[(im.shape, str(im.dtype)) for im in images]}")
    if output not in MOSAIC_OUTPUTS:
        raise ValueError(f"mosaic4: output = {output!r}, use one of {list(MOSAIC_OUTPUTS)}")
    if not 0 <= min_visible <= 1:
        raise ValueError(f"mosaic4: min_visible = {min_visible!r}, must be in [0, 1]")
    side = 2 * size
    xc, yc = (int(c) for c in center)
    if not (0 <= xc <= side and 0 <= yc <= side):
        raise ValueError(f"mosaic4: center {tuple(center)} lies outside the {side} x {side} canvas")
    canvas = np.full((side, side, images[0].shape[2]), fill, dtype=images[0].dtype)
    if crop_size is not None and (output != "crop" or not 1 <= int(crop_size) <= side):
        raise ValueError(f"mosaic4: crop_size = {crop_size!r} with output {output!r}: a 'crop' window of 1 to "
                         f"{side} pixels")
    window = size if crop_size is None else int(crop_size)
    start, stop = ((side - window) // 2, (side - window) // 2 + window) if output == "crop" else (0, side)
    quadrants = [(0, 0, xc, yc), (xc, 0, side, yc), (0, yc, xc, side), (xc, yc, side, side)]
    kept_boxes, image_index, box_index = [], [], []
    for i, (image, quadrant) in enumerate(zip(images, quadrants)):
        h, w = image.shape[:2]
        ox = xc - w if i in (0, 2) else xc  # top-left corner of the placed image
        oy = yc - h if i in (0, 1) else yc
        x0, y0 = max(ox, quadrant[0]), max(oy, quadrant[1])  # the part of the image shown
        x1, y1 = min(ox + w, quadrant[2]), min(oy + h, quadrant[3])
        if x1 > x0 and y1 > y0:
            canvas[y0:y1, x0:x1] = image[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
        placed = np.asarray(boxes[i], dtype=np.float64).reshape(-1, 4) + [ox, oy, ox, oy]
        reference = _area(_clip(placed, (ox, oy, ox + w, oy + h)))
        window = (max(x0, start), max(y0, start), min(x1, stop), min(y1, stop))
        visible = _clip(placed, window)
        keep = ((visible[:, 2] - visible[:, 0] >= MIN_BOX_SIDE) & (visible[:, 3] - visible[:, 1] >= MIN_BOX_SIDE)
                & (_area(visible) >= min_visible * reference * (1 - 1e-9)))
        kept_boxes.append(visible[keep] - start)
        image_index.append(np.full(int(keep.sum()), i, dtype=np.int64))
        box_index.append(np.flatnonzero(keep).astype(np.int64))
    image = np.ascontiguousarray(canvas[start:stop, start:stop])
    return MosaicResult(image, np.concatenate(kept_boxes).reshape(-1, 4), np.concatenate(image_index),
                        np.concatenate(box_index))

"""The one image reader of d2_anchorfree: training, evaluation (``CheckedDatasetMapper``), the
up-front dataset check (``validate_images``) and ``tools/predict.py`` all decode images here, so a
file gives the same pixels everywhere or the same error everywhere.

Rules (:func:`read_image`):

* decoding is PIL's, as in detectron2 v0.6's ``detection_utils.read_image``: EXIF orientation is
  applied (``PIL.ImageOps.exif_transpose``, the same rotation/flip as detectron2's
  ``_apply_exif_orientation``), grayscale ("L", "1"), palette ("P"), RGBA/LA (alpha dropped,
  no compositing) and CMYK images are converted to RGB by PIL; TIFF, PNG, JPEG, BMP, WebP work;
* only 8 bits per channel are accepted. A 16-bit (PNG/TIFF "I;16", or 48/64-bit RGB(A) PNG),
  32-bit integer ("I") or float ("F") image is rejected with an error naming the file and its
  mode. There is no conversion rule that is right for every sensor (a 0-4095 camera, a 0-65535
  scan, a depth map), and PIL and OpenCV disagree silently (PIL clips "I;16" to 255, keeps the
  high byte of 16-bit RGB; OpenCV divides by 256): convert such images to 8 bits yourself, with the
  scaling your data needs, before training or prediction;
* the whole file is decoded, so a truncated or corrupt file raises naming the file instead of
  being filled with grey (this relies on PIL's default ``ImageFile.LOAD_TRUNCATED_IMAGES = False``;
  code that sets it to True turns truncated files into partly grey images again).
"""
import os

import numpy as np
from PIL import Image, ImageOps

__all__ = ["read_image", "image_size", "SUPPORTED_FORMATS", "EIGHT_BIT_MODES", "IMAGE_EXTENSIONS"]

#: ``format`` values of :func:`read_image`: channel order of the returned array.
SUPPORTED_FORMATS = ("BGR", "RGB", "L")

#: File name endings (lower case) taken as images when a folder is listed (``d2af predict``, ``d2af import``).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

#: PIL modes with 8 bits (or 1 bit) per channel; every other mode is refused.
EIGHT_BIT_MODES = ("1", "L", "P", "LA", "PA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr")


def _raw_mode(image: Image.Image):
    """The decoder's raw mode of the first tile (e.g. ``"RGB;16B"``), or None. Only before
    ``image.load()`` (loading empties ``image.tile``)."""
    for tile in getattr(image, "tile", None) or []:
        args = tile[3] if len(tile) > 3 else None
        rawmode = args[0] if isinstance(args, tuple) and args else args
        return rawmode if isinstance(rawmode, str) else None
    return None


def _more_than_8_bits(image: Image.Image) -> bool:
    """True when PIL would hand us more than 8 bits per channel, or silently reduce them to 8.

    16-bit-per-channel RGB/RGBA PNGs and TIFFs open in mode "RGB"/"RGBA" (PIL keeps the high
    byte), so the mode alone does not tell; the decoder's raw mode (``"RGB;16B"``) does.
    """
    if image.mode not in EIGHT_BIT_MODES:
        return True
    raw = _raw_mode(image)
    return raw is not None and any(s in raw for s in (";16", ";32", ";64"))


def read_image(path: str, format: str = "BGR") -> np.ndarray:
    """Decode an image file completely and return its pixels.

    Args:
        path (str): the image file (any format PIL reads: JPEG, PNG, TIFF, BMP, WebP, ...).
        format (str): ``"BGR"`` (detectron2's default ``INPUT.FORMAT``, OpenCV order), ``"RGB"``
            or ``"L"`` (grayscale).

    Returns:
        np.ndarray: uint8, values 0-255, shape [H, W, 3] for "BGR"/"RGB" and [H, W, 1] for "L";
        H, W after the EXIF orientation is applied (as detectron2 does).

    Raises:
        FileNotFoundError: ``path`` does not exist (naming it).
        ValueError: ``"cannot read image <path>: <reason>"`` when the file is not an image, is
            truncated or corrupt, or has more than 8 bits per channel (16-bit, 32-bit integer or
            float; the reason names PIL's mode, e.g. ``'I;16'``); or ``format`` is not one of
            :data:`SUPPORTED_FORMATS`.
    """
    if format not in SUPPORTED_FORMATS:
        raise ValueError(f"read_image format {format!r} is not one of {SUPPORTED_FORMATS}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        with open(path, "rb") as f, Image.open(f) as image:
            if _more_than_8_bits(image):
                raw = _raw_mode(image)
                raise _BitDepthError(
                    f"PIL mode {image.mode!r}" + (f" (raw mode {raw!r})" if raw else "")
                    + " has more than 8 bits per channel (16-bit, 32-bit or float image); only "
                    "8-bit images are read: convert it to 8 bits with the scaling your data needs"
                )
            image.load()  # decode everything now: truncation and corruption raise here
            try:
                image = ImageOps.exif_transpose(image)
            except Exception:  # unreadable EXIF: detectron2 ignores it too (its issue 1885)
                pass
            image = image.convert("L" if format == "L" else "RGB")
            array = np.asarray(image)
    except _BitDepthError as e:
        raise ValueError(f"cannot read image {path}: {e}") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, zlib.error, ...
        raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
    if array.dtype != np.uint8:  # defensive: every accepted mode converts to uint8
        raise ValueError(f"cannot read image {path}: decoded as {array.dtype}, expected uint8")
    if format == "L":
        return array[:, :, None]
    if format == "BGR":
        return np.ascontiguousarray(array[:, :, ::-1])
    return array


# EXIF orientations (tag 0x0112) that turn the image by 90 or 270 degrees: width and height swap.
_EXIF_ORIENTATION_TAG = 0x0112
_TRANSPOSING_ORIENTATIONS = (5, 6, 7, 8)


def image_size(path: str):
    """The ``(width, height)`` in pixels that :func:`read_image` returns for ``path``, from the
    file's header (the pixels are not decoded): the stored size, swapped when the EXIF orientation
    (5-8) turns the image by 90 or 270 degrees.

    Raises:
        FileNotFoundError: ``path`` does not exist (naming it).
        ValueError: ``"cannot read image <path>: <reason>"`` when PIL cannot open the file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file {path} does not exist")
    try:
        with Image.open(path) as image:
            width, height = image.size
            try:
                orientation = image.getexif().get(_EXIF_ORIENTATION_TAG)
            except Exception:  # unreadable EXIF: read_image ignores it too
                orientation = None
    except Exception as e:
        raise ValueError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
    return (height, width) if orientation in _TRANSPOSING_ORIENTATIONS else (width, height)


class _BitDepthError(Exception):
    pass

"""Windowed reading of large images and georeferenced rasters (GeoTIFF, ...) through rasterio.

Sliced inference (``d2af predict --slice``) reads only the windows it runs on, so an orthomosaic
of any size never sits in memory whole. :class:`RasterWindows` wraps a rasterio dataset:

* **pixels**: 8-bit bands only (``uint8``); a 16-bit, 32-bit or float raster is refused with the
  message of :func:`~d2_anchorfree.data.image_io.read_image` (convert it to 8 bits with the
  scaling your sensor needs). Three bands are read as red, green, blue: ``bands`` (1-based, as
  GDAL numbers them; repeats allowed, e.g. ``(1, 1, 1)`` for a gray band), else the bands whose
  colour interpretation is red, green and blue, else bands 1, 2, 3 of a 3-band raster (4 bands
  when the 4th is alpha). Anything else (fewer than 3 bands, or more without RGB colour
  interpretation) needs ``bands``;
* **nodata / alpha**: ``valid(window)`` is GDAL's dataset mask over the window (nodata value,
  alpha band or internal mask); a window with no valid pixel is skipped by sliced inference;
* **georeferencing**: ``crs`` and ``transform`` (affine, pixel -> map units; ``None`` / identity
  for a plain image); overview ``overview_level`` (0 = first overview, half resolution or as the
  file says) reads a reduced-resolution copy stored in the file, with its own transform.

Source: rasterio (GDAL inside the manylinux wheels), https://rasterio.readthedocs.io.
"""
from typing import Optional, Sequence, Tuple

import numpy as np

__all__ = ["RasterWindows", "parse_bands", "WINDOWED_EXTENSIONS", "needs_windowed_reading", "read_georeference",
           "is_georeferenced"]

#: Extensions read window by window with ``--slice`` whatever their size (GDAL rasters). Other
#: images (JPEG, PNG, ...) keep the training reader (PIL, the same pixels as training) unless
#: they are larger than PIL accepts (:func:`needs_windowed_reading`).
WINDOWED_EXTENSIONS = (".tif", ".tiff", ".vrt", ".jp2", ".img")

#: GDAL block cache while a :class:`RasterWindows` is open, MiB (see its ``cache_mb``).
DEFAULT_CACHE_MB = 128


def parse_bands(text: Optional[str]) -> Optional[Tuple[int, int, int]]:
    """``"R,G,B"`` (1-based band numbers, e.g. ``"4,3,2"``) -> ``(4, 3, 2)``; None/"" -> None.

    Raises:
        ValueError: not three comma-separated integers >= 1 (naming the value).
    """
    if not text:
        return None
    parts = [p.strip() for p in str(text).split(",")]
    try:
        bands = tuple(int(p) for p in parts)
    except ValueError:
        bands = ()
    if len(bands) != 3 or min(bands) < 1:
        raise ValueError(f"--bands {text!r}: expected three band numbers R,G,B (1-based, e.g. 1,2,3 or 4,3,2)")
    return bands


def needs_windowed_reading(path: str) -> bool:
    """Whether ``--slice`` reads ``path`` window by window: a GDAL raster extension
    (:data:`WINDOWED_EXTENSIONS`), or an image PIL refuses as too large
    (``PIL.Image.MAX_IMAGE_PIXELS``; only its header is read here, with PIL's own check)."""
    import os
    import warnings

    from PIL import Image

    if path.lower().endswith(WINDOWED_EXTENSIONS):
        return True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path):
                return False
    except Image.DecompressionBombError:
        return True
    except Exception:  # not an image PIL knows: let the training reader name the problem
        return not os.path.isfile(path)


def is_georeferenced(crs, transform) -> bool:
    """True when ``crs`` is set and ``transform`` is not the identity (GDAL's transform of a
    plain image)."""
    return crs is not None and transform is not None and not transform.is_identity


def read_georeference(path: str, overview_level: Optional[int] = None):
    """``(crs, transform)`` of ``path`` as GDAL sees it (a GeoTIFF's tags, or sidecar files GDAL
    reads next to an image), reading only the header; ``(None, None)``
    when rasterio is not installed or GDAL cannot open the file.

    Args:
        path: the file. overview_level: the transform of that overview (as :class:`RasterWindows`).

    Returns:
        (``rasterio.crs.CRS`` or None, ``affine.Affine`` or None); pixel (col, row) -> map (x, y).
    """
    import warnings

    try:
        rasterio = _rasterio()
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
    except ImportError:
        return None, None
    kwargs = {} if overview_level is None else {"overview_level": int(overview_level)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path, **kwargs) as ds:
                return ds.crs, ds.transform
    except RasterioIOError:
        return None, None


def _rasterio():
    try:
        import rasterio
    except ImportError as e:  # pragma: no cover - rasterio is pinned in requirements-extra.txt
        raise ImportError("windowed reading of large images and GeoTIFFs needs rasterio: "
                          "pip install 'd2_anchorfree[geo]' (or rasterio)") from e
    return rasterio


class RasterWindows:
    """An image file opened for window-by-window reading (see the module docstring).

    Attributes:
        path (str), height, width (int, pixels of the level read), bands (tuple of 3 band
        numbers, 1-based), crs (``rasterio.crs.CRS`` or None), transform (``affine.Affine``,
        pixel (col, row) -> map (x, y); identity without georeferencing), georeferenced (bool).
    """

    def __init__(self, path: str, bands: Optional[Sequence[int]] = None, overview_level: Optional[int] = None,
                 cache_mb: int = DEFAULT_CACHE_MB):
        """
        Args:
            path: the file (GeoTIFF, any GDAL raster, or a JPEG/PNG).
            bands: 3 band numbers (1-based) read as R, G, B; None: chosen as the module says.
            overview_level: read the file's overview of that index (0 = the first, largest
                reduced level) instead of full resolution; None: full resolution.
            cache_mb: GDAL's block cache (``GDAL_CACHEMAX``) while the file is open, MiB, >= 1.
                GDAL keeps decoded blocks up to this size (its default, 5% of the machine's
                memory, would let the cache, not the windows, set the peak memory); 128 MiB
                holds the tiles of one row of 400 px windows of a 30000 px wide RGB raster, so
                the overlap of the next row is not decoded again.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file is not a raster GDAL reads; bands not 8-bit; fewer than 3 bands
                (or more, without RGB colour interpretation) and no ``bands``; a band number out
                of range; an overview level the file does not have. Each names the file and value.
        """
        import os
        import warnings

        rasterio = _rasterio()
        from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

        if not os.path.isfile(path):
            raise FileNotFoundError(f"image file {path} does not exist")
        if int(cache_mb) < 1:
            raise ValueError(f"cache_mb must be >= 1 MiB, got {cache_mb}")
        self.path = path
        kwargs = {} if overview_level is None else {"overview_level": int(overview_level)}
        self._env = rasterio.Env(GDAL_CACHEMAX=int(cache_mb) * 2**20)  # bytes: a small int would mean MB
        self._env.__enter__()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                self._ds = rasterio.open(path, **kwargs)
        except RasterioIOError as e:
            self._env.__exit__(None, None, None)
            if overview_level is not None:
                with rasterio.open(path) as full:
                    levels = full.overviews(1)
                raise ValueError(f"cannot read overview level {overview_level} of {path}: it has "
                                 f"{len(levels)} overview(s) (factors {levels})") from None
            raise ValueError(f"cannot read image {path}: {e}") from None
        try:
            self.bands = self._choose_bands(bands)
            dtypes = {self._ds.dtypes[b - 1] for b in self.bands}
            if dtypes != {"uint8"}:
                raise ValueError(
                    f"cannot read image {path}: bands {list(self.bands)} are {sorted(dtypes)}, more than 8 bits "
                    "per channel (16-bit, 32-bit or float image); only 8-bit images are read: convert it "
                    "to 8 bits with the scaling your data needs")
        except BaseException:
            self.close()
            raise
        self.height, self.width = int(self._ds.height), int(self._ds.width)
        self.crs = self._ds.crs
        self.transform = self._ds.transform
        self.georeferenced = is_georeferenced(self.crs, self.transform)

    def _choose_bands(self, bands) -> Tuple[int, int, int]:
        from rasterio.enums import ColorInterp

        count, interp = self._ds.count, list(self._ds.colorinterp)
        described = ", ".join(f"{i + 1}:{c.name}" for i, c in enumerate(interp))
        if bands is not None:
            bands = tuple(int(b) for b in bands)
            if len(bands) != 3:
                raise ValueError(f"{self.path}: bands {list(bands)}: expected 3 band numbers R,G,B")
            bad = [b for b in bands if not 1 <= b <= count]
            if bad:
                raise ValueError(f"{self.path}: band {bad[0]} is out of range: the raster has {count} "
                                 f"band(s), numbered 1 to {count} ({described})")
            return bands
        rgb = [interp.index(c) + 1 for c in (ColorInterp.red, ColorInterp.green, ColorInterp.blue) if c in interp]
        if len(rgb) == 3:
            return tuple(rgb)
        if count == 3 or (count == 4 and interp[3] == ColorInterp.alpha):
            return (1, 2, 3)
        raise ValueError(
            f"{self.path} has {count} band(s) ({described}) and no red/green/blue colour interpretation: "
            "choose the bands to read as R,G,B with --bands (e.g. --bands 1,1,1 for a gray band, "
            "--bands 3,2,1 for a B,G,R raster)")

    def check_window(self, window: Sequence[int]) -> Tuple[int, int, int, int]:
        """``window`` (x0, y0, x1, y1 pixels, x1/y1 exclusive) as ints, checked.

        Raises:
            ValueError: empty, or not inside the ``width`` x ``height`` raster (naming both).
        """
        x0, y0, x1, y1 = (int(v) for v in window)
        if not (0 <= x0 < x1 <= self.width and 0 <= y0 < y1 <= self.height):
            raise ValueError(f"window (x0={x0}, y0={y0}, x1={x1}, y1={y1}) is empty or not inside the "
                             f"{self.width} x {self.height} image {self.path}")
        return x0, y0, x1, y1

    def read(self, window: Sequence[int]) -> np.ndarray:
        """The pixels of ``window`` (x0, y0, x1, y1), as [y1 - y0, x1 - x0, 3] uint8 RGB.

        Raises:
            ValueError: see :meth:`check_window`.
        """
        from rasterio.windows import Window

        x0, y0, x1, y1 = self.check_window(window)
        data = self._ds.read(list(self.bands), window=Window(x0, y0, x1 - x0, y1 - y0))
        return np.ascontiguousarray(data.transpose(1, 2, 0))

    def valid(self, window: Sequence[int]) -> np.ndarray:
        """GDAL's dataset mask over ``window``: [h, w] bool, False where nodata / alpha 0.

        Raises:
            ValueError: see :meth:`check_window`.
        """
        from rasterio.windows import Window

        x0, y0, x1, y1 = self.check_window(window)
        return self._ds.dataset_mask(window=Window(x0, y0, x1 - x0, y1 - y0)) > 0

    @property
    def all_valid(self) -> bool:
        """True when the raster has no nodata value, alpha band or mask (nothing to skip)."""
        from rasterio.enums import MaskFlags

        return all(flags == [MaskFlags.all_valid] for flags in self._ds.mask_flag_enums)

    def thumbnail(self, max_size: int) -> Tuple[np.ndarray, float]:
        """The whole raster reduced so that its longer side is at most ``max_size`` pixels
        (GDAL's decimated read: overviews when the file has them; nearest neighbour).

        Returns:
            (image [h, w, 3] uint8 RGB, scale = thumbnail pixels per raster pixel, <= 1).
        """
        scale = min(1.0, max_size / max(self.height, self.width))
        h, w = max(1, round(self.height * scale)), max(1, round(self.width * scale))
        data = self._ds.read(list(self.bands), out_shape=(3, h, w))
        return np.ascontiguousarray(data.transpose(1, 2, 0)), scale

    def close(self) -> None:
        """Close the file and restore GDAL's cache size (also on leaving a ``with`` block)."""
        if not self._ds.closed:
            self._ds.close()
            self._env.__exit__(None, None, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

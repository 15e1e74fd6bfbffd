"""Run a trained detector on an image, a folder, a glob or a registered dataset with detectron2's DefaultPredictor.

    d2af predict --config-file configs/FCOS/FCOS_tiny_R_18_cpu.yaml \
        --input trees_val --output output/predictions \
        MODEL.WEIGHTS output/fcos_tiny/model_final.pth

Every input gets a unique relative name: its path relative to the input root (the folder given,
the folder part of a glob before its first wildcard, the dataset's ``image_root``, or the folder of
a single file), e.g. ``a/x.png`` and ``b/x.png`` for ``--input "imgs/*/x.png"``. Writes
``<output>/<relative name>.jpg`` (the extension is kept, so ``a.png`` and ``a.tif`` give
``a.png.jpg`` and ``a.tif.jpg``; sub-folders are mirrored) with the detections of score >=
``--min-score`` drawn as 1-pixel boxes coloured by class, with ``--labels none|class|score`` text
(default none for a single-class model): the drawing of ``d2af predict-onnx``. ``--min-score``
defaults to the best-F1 threshold saved beside the weights (by training, ``d2af evaluate`` or
``d2af report --weights``), else 0.3; ``--min-score best`` requires the saved one. Also writes
``<output>/results.json``: a COCO-style results list (file_name = the relative
name, category_id, bbox [x, y, w, h] in pixels, score). Images are read by the reader used in
training (``d2_anchorfree.data.image_io.read_image``); an image it refuses (missing, corrupt,
truncated, 16-bit or float) is skipped with a warning, the run goes on, results.json is written
for all the others, the skipped files are listed at the end and the exit code is 1. Shows a
progress bar over the images (and, with ``--slice``, one over the windows of each image).

Large images (aerial orthophotos): ``--slice`` runs the detector on overlapping windows at full
resolution instead of resizing the whole image to ``INPUT.MAX_SIZE_TEST`` (``--slice-size``,
``--slice-overlap``, ``--slice-batch`` set ``TEST.SLICE.SIZE``, ``OVERLAP``, ``BATCH_SIZE``);
``--tta`` adds test-time augmentation (``TEST.AUG.*``: sizes, flip, merge), per window when
sliced. See ``d2_anchorfree.inference``.

    d2af predict --config-file configs/FCOS/FCOS_tiny_R_18_cpu.yaml \
        --input orthophoto.tif --output output/ortho --slice --slice-size 400 --slice-overlap 100 \
        MODEL.WEIGHTS output/fcos_tiny/model_final.pth TEST.DETECTIONS_PER_IMAGE 2000

With ``--slice``, GeoTIFFs and other GDAL rasters (``.tif``, ``.tiff``, ``.vrt``, ``.jp2``,
``.img``) and images larger than PIL accepts are read window by window through rasterio
(``d2_anchorfree.data.raster``): memory holds one window batch, never the image; windows with no
valid pixel (nodata, alpha 0) are skipped; ``--bands R,G,B`` picks the bands of a multi-band
raster, ``--overview-level`` reads a stored overview; the drawing is a reduced copy
(``--draw-max-size``). Smaller JPEG/PNG files keep the training reader. For a georeferenced
input (a CRS and geotransform as GDAL reads them, e.g. GeoTIFF tags) ``<output>/<name>.geojson`` holds the
detections as box polygons in its CRS (score, category_id, class_name); ``--vector-format
gpkg|shp`` also writes a GeoPackage / Shapefile; ``--geojson`` makes map coordinates required
(an input without CRS is skipped, naming why). Class names come from the weights file.

(``python tools/predict.py`` takes the same arguments as ``d2af predict``.)
"""
import argparse
import glob
import json
import os
import sys
from typing import Optional, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from detectron2.data import DatasetCatalog, MetadataCatalog

from d2_anchorfree.checkpoint.classes import classes_metadata, generic_classes, load_dataset_classes
from d2_anchorfree.checkpoint.score_threshold import DEFAULT_MIN_SCORE, parse_min_score, resolve_min_score
from d2_anchorfree.data.datasets import config_num_classes
from d2_anchorfree.data.geo import (VECTOR_DRIVERS, detections_feature_collection, require_georeference,
                                    write_geojson, write_vector)
from d2_anchorfree.data.image_io import IMAGE_EXTENSIONS, read_image
from d2_anchorfree.data.raster import (RasterWindows, is_georeferenced, needs_windowed_reading, parse_bands,
                                       read_georeference)
from d2_anchorfree.engine import build_predictor, setup_cfg
from d2_anchorfree.runtime.predict_onnx import LABEL_MODES, default_labels, draw

IMAGE_EXTS = IMAGE_EXTENSIONS


def _unique(paths):
    seen = set()
    return [p for p in paths if not (p in seen or seen.add(p))]


def list_images(spec: str):
    """Files named by ``spec``: an image file, a folder (its images, sorted), a glob, or the name
    of a dataset registered in ``DatasetCatalog`` (e.g. ``trees_val``: its images).

    Returns:
        list[str]: the paths, without repetitions, in order.

    Raises:
        FileNotFoundError: nothing matches ``spec``.
    """
    if spec in DatasetCatalog.list():
        files = [d["file_name"] for d in DatasetCatalog.get(spec)]
    elif os.path.isdir(spec):
        files = sorted(os.path.join(spec, f) for f in os.listdir(spec) if f.lower().endswith(IMAGE_EXTS))
    elif os.path.isfile(spec):
        files = [spec]
    else:
        files = sorted(f for f in glob.glob(spec) if f.lower().endswith(IMAGE_EXTS))
    if not files:
        raise FileNotFoundError(f"no images found for --input {spec!r}")
    return _unique(files)


def input_root(spec: str, files) -> str:
    """The folder that output names are relative to: the folder ``spec`` names, the registered
    dataset's ``image_root``, the folder of a single file, or the part of a glob before its first
    wildcard component. Falls back to the files' common folder when some file lies outside it.

    Args:
        spec (str): the ``--input`` value.
        files (list[str]): :func:`list_images` of ``spec``.

    Returns:
        str: a folder path.
    """
    if spec in DatasetCatalog.list():
        root = getattr(MetadataCatalog.get(spec), "image_root", None)
    elif os.path.isdir(spec):
        root = spec
    elif os.path.isfile(spec):
        root = os.path.dirname(spec)
    else:
        parts, static = spec.replace("\\", "/").split("/"), []
        for part in parts[:-1]:
            if glob.has_magic(part):
                break
            static.append(part)
        root = "/".join(static) if static else "."
        if spec.startswith("/") and not root:
            root = "/"
    root = os.path.abspath(root or ".")
    inside = all(not os.path.relpath(os.path.abspath(f), root).startswith(os.pardir) for f in files)
    if not inside:
        root = os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files])
    return root


def relative_names(files, root: str):
    """Each file's path relative to ``root``, with "/" separators; unique for distinct files.

    Raises:
        ValueError: two inputs map to the same name (naming both), which would overwrite outputs.
    """
    names, owner = [], {}
    for f in files:
        name = os.path.relpath(os.path.abspath(f), root).replace(os.sep, "/")
        if name in owner:
            raise ValueError(f"inputs {owner[name]} and {f} would both be written as {name!r}")
        owner[name] = f
        names.append(name)
    return names


class ReadOptions:
    """How :func:`predict_files` reads each image and what it writes besides results.json.

    Args:
        windowed (bool): read window by window (``--slice``; needs ``TEST.SLICE.ENABLED``) the
            files :func:`~d2_anchorfree.data.raster.needs_windowed_reading` selects (GDAL rasters,
            images larger than PIL accepts); the others are read whole by ``read_image``.
        bands (tuple of 3 int or None): ``--bands``, raster bands read as R, G, B (1-based).
        overview_level (int or None): ``--overview-level``: read that overview of each raster.
        require_geo (bool): ``--geojson``: every input must be georeferenced (else it is skipped,
            naming why); without it GeoJSON is written for the georeferenced ones.
        vector_format (str or None): ``--vector-format`` ("gpkg" or "shp"): also write that file.
        draw_max_size (int): longest side, pixels, of the drawing of a windowed image (a
            reduced copy; the others are drawn at full size). The drawing is a uint8 BGR copy,
            3 bytes per pixel.
    """

    def __init__(self, windowed: bool = False, bands: Optional[Tuple[int, int, int]] = None,
                 overview_level: Optional[int] = None, require_geo: bool = False,
                 vector_format: Optional[str] = None, draw_max_size: int = 2000):
        self.windowed, self.bands, self.overview_level = windowed, bands, overview_level
        self.require_geo, self.vector_format, self.draw_max_size = require_geo, vector_format, draw_max_size


def predict_one(predictor, path: str, options: ReadOptions, windowed: bool, draw: bool):
    """Run ``predictor`` on one file, read window by window (``windowed``) or whole.

    Returns:
        (instances on the CPU in the file's pixels, drawing (BGR uint8 image, or None without
        ``draw``), (sx, sy) drawing pixels per image pixel: 1 for a whole image, below 1 for the
        reduced drawing of a windowed one).

    Raises:
        FileNotFoundError, ValueError: the file cannot be read (naming it and the reason).
    """
    if not windowed:
        img = read_image(path, format="BGR")
        return predictor(img)["instances"].to("cpu"), img, (1.0, 1.0)
    with RasterWindows(path, bands=options.bands, overview_level=options.overview_level) as raster:
        inst = predictor.predict_windows(raster)["instances"].to("cpu")
        if not draw:
            return inst, None, (1.0, 1.0)
        rgb, _ = raster.thumbnail(options.draw_max_size)
        scale = (rgb.shape[1] / raster.width, rgb.shape[0] / raster.height)
        return inst, np.ascontiguousarray(rgb[:, :, ::-1]), scale


def _draw(image, inst, names, scale, min_score, labels, out_path):
    """Draw ``inst`` scoring at least ``min_score`` on ``image`` (BGR; boxes scaled by ``scale``
    = (sx, sy)) with ``runtime.predict_onnx.draw`` (as ``d2af predict-onnx``: 1-pixel boxes
    coloured by class, ``labels`` "none" | "class" | "score") and write it to ``out_path``."""
    boxes = inst.pred_boxes.tensor.numpy() * np.array([scale[0], scale[1]] * 2, dtype=np.float32)
    out = draw(image, boxes, inst.scores.numpy(), inst.pred_classes.numpy(), names, min_score, labels)
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    if not cv2.imwrite(out_path, out):
        raise OSError(f"could not write {out_path}")


def predict_files(predictor, files, output_dir, metadata, min_score=DEFAULT_MIN_SCORE, draw=True, names=None,
                  options: Optional[ReadOptions] = None, labels: Optional[str] = None):
    """Run ``predictor`` on ``files``; write drawn images (and map outputs) and return COCO-style results.

    Args:
        predictor: an ``AnchorFreePredictor`` (takes a BGR uint8 [H, W, 3] array; its
            ``predict_windows`` reads a raster window by window).
        files (list[str]): image paths.
        output_dir (str): drawn images go to ``<output_dir>/<name>.jpg`` (folders created); for a
            georeferenced raster also ``<name>.geojson`` (box polygons in its CRS, see
            ``d2_anchorfree.data.geo``) and, with ``options.vector_format``, ``<name>.gpkg`` / ``.shp``.
        metadata: detectron2 ``Metadata`` (class names for drawing; the category id map).
        min_score (float): boxes with at least this score are drawn (all go to the results).
        labels (str or None): text beside drawn boxes, "none", "class" or "score"; None: "none"
            for a single-class model, else "class".
        draw (bool): write the drawn images.
        names (list[str] or None): unique relative names, one per file (:func:`relative_names`);
            default: the files' paths relative to their common folder.
        options (ReadOptions or None): how to read (default: whole images, GeoJSON when georeferenced).

    Returns:
        (results, skipped): ``results`` a list of dict(file_name = the file's name, category_id,
        bbox [x, y, w, h] pixels, score), ``category_id`` being the contiguous class index unless
        the metadata maps it back to a dataset id; ``skipped`` a list of (path, reason) for the
        images that could not be read, or not georeferenced with ``options.require_geo`` (each
        also written to stderr as a warning when it happens).
    """
    options = options or ReadOptions()
    if labels is not None and labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES}, got {labels!r}")
    if names is None:
        names = relative_names(files, os.path.commonpath([os.path.dirname(os.path.abspath(f)) for f in files]))
    if len(names) != len(files):
        raise ValueError(f"{len(names)} names for {len(files)} files")
    os.makedirs(output_dir, exist_ok=True)
    id_map = {v: k for k, v in getattr(metadata, "thing_dataset_id_to_contiguous_id", {}).items()}
    class_names = list(getattr(metadata, "thing_classes", None) or [])
    labels = labels or default_labels(len(class_names))
    results, skipped = [], []
    for path, name in zip(tqdm(files, desc="predict", unit="img", file=sys.stderr), names):
        try:
            windowed = options.windowed and needs_windowed_reading(path)
            crs, transform = read_georeference(path, options.overview_level if windowed else None)
            georef = (crs, transform) if is_georeferenced(crs, transform) else None
            if options.require_geo:
                require_georeference(path, crs, transform)  # before the (long) prediction
            inst, image, scale = predict_one(predictor, path, options, windowed, draw)
        except (FileNotFoundError, ValueError) as e:
            skipped.append((path, str(e)))
            tqdm.write(f"WARNING: skipping {path}: {e}", file=sys.stderr)  # above the progress bar
            continue
        boxes = inst.pred_boxes.tensor.numpy()
        for box, score, cls in zip(boxes, inst.scores.tolist(), inst.pred_classes.tolist()):
            x0, y0, x1, y1 = box.tolist()
            results.append({"file_name": name, "category_id": id_map.get(cls, cls),
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
        base = os.path.join(output_dir, *name.split("/"))
        if georef is not None:
            os.makedirs(os.path.dirname(base), exist_ok=True)
            num = int(inst.pred_classes.max()) + 1 if len(inst) else 0
            names_k = class_names + [f"class_{i}" for i in range(len(class_names), num)]
            ids_k = [id_map.get(i, i) for i in range(len(names_k))]
            collection = detections_feature_collection(boxes, inst.scores.tolist(), inst.pred_classes.tolist(),
                                                       names_k, ids_k, *georef, image=name)
            write_geojson(base + ".geojson", collection)
            if options.vector_format:
                write_vector(base + VECTOR_DRIVERS[options.vector_format][1], collection, georef[0],
                             options.vector_format)
        if draw:
            _draw(image, inst, class_names, scale, min_score, labels, base + ".jpg")
    return results, skipped


def prediction_classes(cfg, checkpoint_classes: Optional[dict], dataset: Optional[str] = None) -> dict:
    """The class names (and category ids) for drawing and ``results.json``.

    In this order: the dataset named by ``--dataset`` (loaded); the weights file's (training
    writes them, ``checkpoint_classes``); ``DATASETS.TEST[0]``'s if its files are there (weights
    written before class names were stored); else ``class_0`` ... with a warning.

    Args:
        cfg: the config. checkpoint_classes: ``build_predictor(...).classes``.
        dataset: the ``--dataset`` value, or None.

    Returns:
        dict: ``{"thing_classes": [str], "category_ids": [int]}``.

    Raises:
        KeyError: ``dataset`` is not registered. FileNotFoundError, ValueError: ``dataset``'s
            files are missing or wrong (the loader's checks).
    """
    if dataset:
        return load_dataset_classes(dataset)
    if checkpoint_classes is not None:
        return checkpoint_classes
    if cfg.DATASETS.TEST:
        try:
            found = load_dataset_classes(cfg.DATASETS.TEST[0])
            if found is not None:
                return found
        except (KeyError, FileNotFoundError, ValueError) as e:
            print(f"WARNING: the weights name no classes and DATASETS.TEST[0] cannot give them ({e})",
                  file=sys.stderr)
    num = config_num_classes(cfg) or 1
    print(f"WARNING: no class names: writing class_0 ... class_{num - 1} (pass --dataset, or use weights "
          "written by this version's training, which stores them)", file=sys.stderr)
    return generic_classes(num)


def _min_score_arg(text: str):
    try:
        return parse_min_score(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a score in [0, 1] or 'best', got {text!r}") from None


def inference_opts(args) -> list:
    """Config opts ("KEY", "VALUE", ...) of the ``--slice*`` and ``--tta`` flags (the KEY VALUE
    pairs given after the flags come later and win)."""
    opts = []
    if args.slice:
        opts += ["TEST.SLICE.ENABLED", "True"]
    for flag, key in (("slice_size", "SIZE"), ("slice_overlap", "OVERLAP"), ("slice_batch", "BATCH_SIZE")):
        if getattr(args, flag) is not None:
            opts += [f"TEST.SLICE.{key}", str(getattr(args, flag))]
    if args.tta:
        opts += ["TEST.AUG.ENABLED", "True"]
    return opts


def main(argv=None, prog=None) -> int:
    """Command-line entry point (see the module docstring).

    Args:
        argv (list[str], optional): the arguments (default: ``sys.argv[1:]``).
        prog (str, optional): the program name shown in the usage (default: the script's name).

    Returns:
        int: 0 when every image was processed, 1 when some were skipped (``sys.exit`` of it when
        run as a script).

    Raises:
        FileNotFoundError: no image matches ``--input``.
        ValueError: two inputs would get the same output name.
        SystemExit: code 2 for bad arguments, e.g. ``--min-score best`` when the weights have no
            (valid) saved best-F1 threshold (argparse's usage error, naming what to run).
    """
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", required=True,
                        help="an image, a folder, a quoted glob, or a registered dataset name")
    parser.add_argument("--output", required=True, help="folder for drawn images and results.json")
    parser.add_argument("--min-score", type=_min_score_arg, default=None,
                        help="draw boxes with at least this score; 'best': the best-F1 threshold saved beside "
                             "the weights by training / d2af evaluate / d2af report --weights (default: that "
                             f"when there is one, else {DEFAULT_MIN_SCORE})")
    parser.add_argument("--labels", choices=LABEL_MODES, default=None,
                        help="text beside each drawn box (default: none for a single-class model, else class)")
    parser.add_argument("--dataset", default=None,
                        help="registered dataset whose class names to use (default: those stored in the "
                             "weights by training; for older weights DATASETS.TEST[0]'s)")
    parser.add_argument("--allow-untrained", action="store_true",
                        help="predict even without MODEL.WEIGHTS (an untrained model)")
    parser.add_argument("--slice", action="store_true",
                        help="sliced inference over overlapping windows at full resolution (TEST.SLICE.ENABLED)")
    parser.add_argument("--slice-size", type=int, default=None, help="window side, pixels (TEST.SLICE.SIZE)")
    parser.add_argument("--slice-overlap", type=int, default=None,
                        help="minimum window overlap, pixels (TEST.SLICE.OVERLAP)")
    parser.add_argument("--slice-batch", type=int, default=None, help="windows per forward (TEST.SLICE.BATCH_SIZE)")
    parser.add_argument("--bands", default=None,
                        help="raster bands read as R,G,B, 1-based (e.g. 4,3,2; 1,1,1 for a gray band); "
                             "default: the RGB colour interpretation, else 1,2,3 of a 3-band raster")
    parser.add_argument("--overview-level", type=int, default=None,
                        help="with --slice, read this overview of each raster (0: the first reduced level)")
    parser.add_argument("--geojson", action="store_true",
                        help="require map coordinates: every input must be georeferenced (GeoJSON is "
                             "written for georeferenced rasters anyway)")
    parser.add_argument("--vector-format", choices=sorted(VECTOR_DRIVERS), default=None,
                        help="also write the georeferenced detections as GeoPackage or Shapefile (fiona)")
    parser.add_argument("--draw-max-size", type=int, default=2000,
                        help="longest side (pixels) of the drawing of an image read window by window "
                             "(a uint8 copy: 3 bytes per pixel)")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: TEST.AUG.MIN_SIZES x FLIP (TEST.AUG.ENABLED)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    args = parser.parse_args(argv)
    if (args.bands or args.overview_level is not None) and not args.slice:
        parser.error("--bands and --overview-level apply to rasters read window by window: add --slice")
    if args.overview_level is not None and args.overview_level < 0:
        parser.error(f"--overview-level must be >= 0 (0: the first reduced level), got {args.overview_level}")
    if args.draw_max_size < 1:
        parser.error(f"--draw-max-size must be >= 1 pixel, got {args.draw_max_size}")
    # Unreadable images are skipped and listed here, not refused up front for the whole dataset.
    opts = inference_opts(args) + list(args.opts) + ["DATASETS.VALIDATE_IMAGES", "never"]
    cfg = setup_cfg(argparse.Namespace(config_file=args.config_file, opts=opts), default_setup_logging=False)
    files = list_images(args.input)
    names = relative_names(files, input_root(args.input, files))
    try:  # before the model is built: "best" may fail
        min_score, why = resolve_min_score(args.min_score, cfg.MODEL.WEIGHTS)
    except ValueError as e:
        parser.error(str(e))  # exits with code 2
    print(f"drawing detections with score >= {min_score:.3f} ({why})")
    predictor = build_predictor(cfg, allow_untrained=args.allow_untrained, progress=True)
    metadata = classes_metadata(prediction_classes(cfg, predictor.classes, args.dataset))
    options = ReadOptions(windowed=args.slice, bands=parse_bands(args.bands), overview_level=args.overview_level,
                          require_geo=args.geojson, vector_format=args.vector_format,
                          draw_max_size=args.draw_max_size)
    results, skipped = predict_files(predictor, files, args.output, metadata, min_score,
                                     names=names, options=options, labels=args.labels)
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(results, f)
    print(f"wrote {len(files) - len(skipped)} images and {len(results)} detections to {args.output}")
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s):", file=sys.stderr)
        for path, reason in skipped:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

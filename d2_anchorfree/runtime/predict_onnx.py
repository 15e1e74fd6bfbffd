"""Run an exported detector (``d2af export --format onnx``) with onnxruntime or OpenVINO: no
torch, no detectron2; numpy, OpenCV, Pillow, tqdm and one runtime (onnxruntime, or OpenVINO with
``--runtime openvino``) only. The module imports nothing else from d2_anchorfree: on a deployment
machine, either install d2_anchorfree without its dependencies (``pip install --no-deps``) or copy
this one file next to model.onnx and run it (``python predict_onnx.py ...``).

    d2af predict-onnx --model output/defcn_onnx/model.onnx \
        --input "photos/*.jpg" --output output/onnx_predictions
    d2af predict-onnx --runtime openvino --model model.onnx --input photos/ --output out/
    python -m d2_anchorfree.runtime.predict_onnx --model model.onnx --coco-json datasets/trees/val.json \
        --output out/ --evaluate        # COCO AP with pycocotools, as d2af evaluate

(``python tools/predict_onnx.py`` takes the same arguments.)

Per image, as detectron2's ``DefaultPredictor`` + ``detector_postprocess``: read as BGR uint8
(OpenCV), resize the shorter side to the model's ``min_size_test`` with the longer at most
``max_size_test`` (detectron2's ``ResizeShortestEdge`` rule and its Pillow bilinear resize),
run the graph, scale the boxes back to the original image, clip them to it and drop empty ones.
Outputs like ``d2af predict``: ``<output>/<relative name>.jpg`` with the detections of score
>= ``--min-score`` drawn (default: the best-F1 threshold saved in the model's metadata, else 0.3;
``--labels none|class|score``, default none for a single-class model), ``<output>/results.json``
(COCO-style: file_name, category_id = the dataset's id, bbox [x, y, w, h] pixels, score; plus image_id with ``--coco-json``), a progress
bar; unreadable images are skipped, listed, and make the exit code 1.

Runtimes (:func:`load_model`): ``onnxruntime`` (``CPUExecutionProvider``) and ``openvino``
(OpenVINO's ONNX reader, CPU plugin, float32 inference precision, latency hint); both read the
same file, the INT8 QDQ files of ``d2af quantize`` included. ``openvino`` also reads OpenVINO IR
(``--model model_int8.xml``, its ``.bin`` beside it: ``d2af quantize --quantizer nncf``), with
the same metadata, pre- and post-processing.
"""
import argparse
import glob
import json
import math
import os
import sys
from typing import Callable, Dict, List, Tuple

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: What :func:`draw` writes beside each box: nothing, the class name, or class name and score.
LABEL_MODES = ("none", "class", "score")
#: Drawing threshold of a model without a saved best-F1 threshold.
DEFAULT_MIN_SCORE = 0.3
#: Box colours (BGR), one per class index, cycling: saturated colours that stand out on photos and
#: aerial imagery (yellow first: a single-class model's boxes).
PALETTE = ((0, 255, 255), (255, 0, 255), (255, 255, 0), (0, 0, 255), (0, 255, 0), (0, 140, 255), (255, 120, 0),
           (255, 255, 255), (128, 0, 255), (0, 128, 128))

#: The runtimes of --runtime.
RUNTIMES = ("onnxruntime", "openvino")
METADATA_KEY = "d2af_metadata"
# what installs each runtime (extras of d2_anchorfree's pyproject.toml)
RUNTIME_EXTRAS = {"onnxruntime": "export", "openvino": "openvino"}

# A session: fn(image uint8 [H, W, 3]) -> {output name: array} ("boxes", "scores", "classes").
Session = Callable[[np.ndarray], Dict[str, np.ndarray]]


def _import_runtime(runtime: str):
    """The module of ``runtime`` (one of :data:`RUNTIMES`), imported on first use so that
    either runtime alone is enough.

    Raises:
        ImportError: it is not installed, with the extra that installs it.
    """
    import importlib

    try:
        return importlib.import_module(runtime)
    except ImportError as e:
        raise ImportError(f"--runtime {runtime} needs the {runtime} package: pip install "
                          f"'d2_anchorfree[{RUNTIME_EXTRAS[runtime]}]' (or the pinned requirements-extra.txt)") from e


def _onnxruntime_session(path: str, threads: int) -> Tuple[Session, Dict[str, str]]:
    """(session, the file's metadata_props) with onnxruntime's ``CPUExecutionProvider``;
    ``threads``: intra-op threads (0: onnxruntime's default, one per core).

    Raises:
        ValueError: ``path`` is an OpenVINO IR ``.xml``, which onnxruntime cannot read.
    """
    if path.lower().endswith(".xml"):
        raise ValueError(f"{path} is OpenVINO IR (e.g. from d2af quantize --quantizer nncf), which onnxruntime "
                         "cannot read: run it with --runtime openvino")
    onnxruntime = _import_runtime("onnxruntime")
    options = onnxruntime.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    feed = session.get_inputs()[0].name

    def run(image: np.ndarray) -> Dict[str, np.ndarray]:
        return dict(zip(names, session.run(None, {feed: image})))

    return run, dict(session.get_modelmeta().custom_metadata_map)


def _openvino_session(path: str, threads: int) -> Tuple[Session, Dict[str, str]]:
    """(session, the file's metadata_props) with OpenVINO's CPU plugin: the ONNX file, or an
    OpenVINO IR ``.xml`` (its ``.bin`` beside it), read by ``Core.read_model`` (an ONNX file's
    metadata_props land in the model's rt_info under "framework", where IR keeps them),
    compiled with ``INFERENCE_NUM_THREADS`` = ``threads`` (0: OpenVINO's default), float32
    inference precision (OpenVINO would otherwise pick bfloat16 on CPUs that have it) and the
    latency hint (one image per call).

    Raises:
        ValueError: the graph has ONNX ``DeformConv`` (VFNet, TOOD, DCN towers), which OpenVINO's
            ONNX reader (2026.4) does not convert.
    """
    ov = _import_runtime("openvino")
    core = ov.Core()
    try:
        model = core.read_model(path)
    except RuntimeError as e:
        if "DeformConv" not in str(e):
            raise
        raise ValueError(f"{path} has deformable convolutions (ONNX DeformConv: VFNet, TOOD, DCN towers), which "
                         f"OpenVINO {ov.__version__.split('-')[0]} cannot read from ONNX; run it with --runtime "
                         "onnxruntime") from e
    props = {}
    if model.has_rt_info(["framework", METADATA_KEY]):
        props[METADATA_KEY] = str(model.get_rt_info(["framework", METADATA_KEY]).astype(str))
    config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    names = [o.get_any_name() for o in compiled.outputs]

    def run(image: np.ndarray) -> Dict[str, np.ndarray]:
        results = request.infer([image])  # copies the outputs out of the request's buffers
        return {name: results[i] for i, name in enumerate(names)}

    return run, props


def open_session(path: str, threads: int = 0, runtime: str = "onnxruntime") -> Tuple[Session, Dict[str, str]]:
    """A CPU session of any single-input ONNX file (or OpenVINO IR ``.xml`` with runtime
    "openvino") in ``runtime``, and the file's ``metadata_props`` (empty when it has none).

    Args:
        path: the ``.onnx`` file, or a ``.xml`` with runtime "openvino". threads: intra-op threads (onnxruntime) or
            ``INFERENCE_NUM_THREADS`` (OpenVINO); 0: the runtime's default.
        runtime: one of :data:`RUNTIMES`.

    Returns:
        (session, metadata_props): ``session(x)`` runs the graph on its one input ``x`` and
        returns {output name: array} in the graph's output order.

    Raises:
        ValueError: an unknown runtime; deformable convolutions with OpenVINO; an IR ``.xml``
            with onnxruntime.
        ImportError: the runtime is not installed (naming the extra that installs it).
    """
    loaders = {"onnxruntime": _onnxruntime_session, "openvino": _openvino_session}
    if runtime not in loaders:
        raise ValueError(f"--runtime must be one of {list(RUNTIMES)}, got {runtime!r}")
    return loaders[runtime](path, threads)


def load_model(path: str, threads: int = 0, runtime: str = "onnxruntime") -> Tuple[Session, dict]:
    """A CPU session of a ``d2af export`` file in ``runtime`` (:func:`open_session`) and the
    metadata that export embedded (``d2_anchorfree.export.graph.graph_metadata``: class_names,
    category_ids, min/max_size_test, score_thresh, coco_max_dets_per_image, ...).

    Args:
        path: the ``.onnx`` file, or the ``.xml`` of ``d2af quantize --quantizer nncf`` with
            runtime "openvino". threads: intra-op threads (onnxruntime) or
            ``INFERENCE_NUM_THREADS`` (OpenVINO); 0: the runtime's default.
        runtime: one of :data:`RUNTIMES`.

    Returns:
        (session, metadata): ``session(image)`` takes a uint8 BGR [H, W, 3] array at the test
        size and returns {"boxes": [D, 4] float32, "scores": [D] float32, "classes": [D] int64}.

    Raises:
        ValueError: an unknown runtime; the file has no d2_anchorfree metadata (not written by
            ``d2af export``); deformable convolutions with OpenVINO; an IR ``.xml`` with
            onnxruntime.
        ImportError: the runtime is not installed (naming the extra that installs it).
    """
    session, props = open_session(path, threads, runtime)
    if METADATA_KEY not in props:
        raise ValueError(f"{path} has no d2af_metadata: export it with d2af export (tools/export_model.py)")
    return session, json.loads(props[METADATA_KEY])


def test_size(height: int, width: int, min_size: int, max_size: int) -> Tuple[int, int]:
    """(new_height, new_width) of detectron2's ``ResizeShortestEdge.get_output_shape``: the
    shorter side becomes ``min_size``, then both shrink so that the longer is at most
    ``max_size``; rounded half up. ``min_size`` 0: no resize."""
    if min_size <= 0:
        return height, width
    scale = min_size / min(height, width)
    new_h, new_w = (min_size, scale * width) if height < width else (scale * height, min_size)
    if max(new_h, new_w) > max_size:
        shrink = max_size / max(new_h, new_w)
        new_h, new_w = new_h * shrink, new_w * shrink
    return int(new_h + 0.5), int(new_w + 0.5)


def resize(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """``image`` (uint8 [H, W, 3]) resized to ``size`` (height, width) with Pillow's bilinear
    filter, as detectron2's ``ResizeTransform`` does for uint8 images."""
    if image.shape[:2] == tuple(size):
        return image
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def read_bgr(path: str) -> np.ndarray:
    """``path`` as a uint8 BGR [H, W, 3] array (EXIF orientation applied, gray and alpha images
    converted), refusing what the reader of ``d2af predict`` refuses.

    Raises:
        ValueError: unreadable or not an image, or not 8-bit (16-bit / float images are refused
            rather than silently rescaled: convert them to 8 bits first).
    """
    image = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if image is None:
        raise ValueError("not a readable image")
    if image.dtype != np.uint8:
        raise ValueError(f"{image.dtype} pixels (e.g. a 16-bit image): convert it to 8 bits per channel")
    return image


def predict(session, meta: dict, image: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections of one BGR uint8 image [H, W, 3] in its own pixels.

    Args:
        session: a session of :func:`load_model` (any runtime).
        meta: its metadata (``min_size_test`` and ``max_size_test`` are used).
        image: uint8 BGR [H, W, 3], any size.

    Returns:
        (boxes [D, 4] float32 XYXY pixels clipped to the image, scores [D] float32,
        classes [D] int64 contiguous indices), sorted by score; boxes empty after clipping are
        dropped (detectron2's ``detector_postprocess``).
    """
    height, width = image.shape[:2]
    new_h, new_w = test_size(height, width, meta["min_size_test"], meta["max_size_test"])
    out = session(np.ascontiguousarray(resize(image, (new_h, new_w))))
    boxes, scores, classes = out["boxes"], out["scores"], out["classes"]
    scale = np.array([width / new_w, height / new_h] * 2, dtype=np.float32)
    boxes = np.minimum(np.maximum(boxes * scale, 0), np.array([width, height] * 2, dtype=np.float32))
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return boxes[keep], scores[keep], classes[keep]


def coco_results(boxes, scores, classes, meta: dict, **fields) -> List[dict]:
    """COCO-style result entries of one image's detections (:func:`predict`): ``category_id`` =
    the dataset's id of each class (``meta["category_ids"]``), ``bbox`` [x, y, w, h] pixels,
    ``score``, plus ``fields`` (e.g. file_name, image_id) in every entry."""
    return [{**fields, "category_id": meta["category_ids"][cls], "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score}
            for (x0, y0, x1, y1), score, cls in zip(boxes.tolist(), scores.tolist(), classes.tolist())]


def default_labels(num_classes: int) -> str:
    """The default of ``--labels``: "none" for a single-class model (every box is that class),
    else "class"."""
    return "none" if num_classes <= 1 else "class"


def draw(image: np.ndarray, boxes, scores, classes, names: List[str], min_score: float,
         labels: str = "class") -> np.ndarray:
    """A copy of ``image`` with the detections of score >= ``min_score`` drawn: 1-pixel boxes
    coloured by class (:data:`PALETTE`) and, per ``labels``, a small text above each box (OpenCV
    drawing; ``d2af predict`` draws with this function too).

    Args:
        image: uint8 BGR [H, W, 3]. boxes: [D, 4] XYXY pixels. scores: [D]. classes: [D] indices
            into ``names``. min_score: in [0, 1]. labels: one of :data:`LABEL_MODES`: "none",
            "class" (the class name) or "score" (name and score).

    Raises:
        ValueError: ``labels`` not one of :data:`LABEL_MODES`.
    """
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {LABEL_MODES}, got {labels!r}")
    out = np.ascontiguousarray(image).copy()
    for box, score, cls in zip(boxes, scores, classes):
        if score < min_score:
            continue
        x0, y0, x1, y1 = (int(round(float(v))) for v in box)
        color = PALETTE[int(cls) % len(PALETTE)]
        cv2.rectangle(out, (x0, y0), (x1, y1), color, 1)
        if labels != "none":
            name = names[int(cls)] if int(cls) < len(names) else f"class_{int(cls)}"
            text = name if labels == "class" else f"{name} {float(score):.2f}"
            cv2.putText(out, text, (x0, max(y0 - 2, 8)), cv2.FONT_HERSHEY_SIMPLEX, 0.3, color, 1, cv2.LINE_AA)
    return out


def min_score_of(value, meta: dict) -> Tuple[float, str]:
    """The drawing threshold for ``--min-score value`` and the model's metadata.

    Args:
        value: a float (used as is), "best" (``meta["best_f1_score_threshold"]``, required) or
            None (that when present, else :data:`DEFAULT_MIN_SCORE`).
        meta: :func:`load_model`'s metadata.

    Returns:
        (float, str): the threshold and where it comes from.

    Raises:
        ValueError: "best" and the model has no saved threshold (naming what to run).
    """
    if isinstance(value, float):
        return value, f"--min-score {value:g}"
    best = meta.get("best_f1_score_threshold")
    if best is not None:
        return float(best), f"the model's best-F1 threshold ({float(best):.3f})"
    if value == "best":
        raise ValueError("--min-score best: the model has no saved best-F1 threshold: run 'd2af report ... "
                         "--weights <weights.pth>' (training's final evaluation and d2af evaluate write it too), "
                         "then export those weights again with d2af export")
    return DEFAULT_MIN_SCORE, f"the default {DEFAULT_MIN_SCORE} (the model has no saved best-F1 threshold)"


def _min_score_arg(text: str):
    if text == "best":
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a score in [0, 1] or 'best', got {text!r}")
    return value


def list_inputs(spec: str, coco_json: str, image_root: str) -> Tuple[List[str], List[str], Dict[str, int]]:
    """(paths, relative names, name -> COCO image id) of the images to run.

    ``coco_json``: the images listed there (file_name relative to ``image_root``, default
    ``<json folder>/images``); else ``spec``: an image file, a folder (its images, sorted) or a
    quoted glob; names are relative to the folder (the glob's folder part before a wildcard).

    Raises:
        FileNotFoundError: nothing to run.
    """
    if coco_json:
        data = json.load(open(coco_json))
        root = image_root or os.path.join(os.path.dirname(coco_json), "images")
        names = [im["file_name"] for im in data["images"]]
        return [os.path.join(root, n) for n in names], names, {im["file_name"]: im["id"] for im in data["images"]}
    if os.path.isdir(spec):
        root = spec
        files = sorted(os.path.join(spec, f) for f in os.listdir(spec) if f.lower().endswith(IMAGE_EXTS))
    elif os.path.isfile(spec):
        root, files = os.path.dirname(spec), [spec]
    else:
        files = sorted(f for f in glob.glob(spec) if f.lower().endswith(IMAGE_EXTS))
        static = []
        for part in spec.split("/")[:-1]:
            if glob.has_magic(part):
                break
            static.append(part)
        root = "/".join(static) or "."
    if not files:
        raise FileNotFoundError(f"no images found for --input {spec!r}")
    names = [os.path.relpath(os.path.abspath(f), os.path.abspath(root)).replace(os.sep, "/") for f in files]
    return files, names, {}


def evaluate(coco_json: str, results: List[dict], max_dets: int) -> Dict[str, float]:
    """COCO box AP of ``results`` (with image_id) against ``coco_json`` with pycocotools,
    ``maxDets = [1, 10, max_dets]`` as ``d2af evaluate``; AP and AP50 in percent."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not results:  # as detectron2's COCOEvaluator: no numbers rather than a real-looking 0
        print("WARNING: no detections to evaluate", file=sys.stderr)
        return {"AP": math.nan, "AP50": math.nan, "AP75": math.nan}
    gt = COCO(coco_json)
    dt = gt.loadRes(results)
    ev = COCOeval(gt, dt, "bbox")
    ev.params.maxDets = [1, 10, max_dets]
    ev.evaluate()
    ev.accumulate()
    # precision [T, R, K, A, M] at area "all" and the largest maxDets (pycocotools' summarize()
    # hard-codes maxDets 100 for AP in recent versions; detectron2 reads the array too)
    precision = ev.eval["precision"][:, :, :, 0, -1]

    def mean(x):
        x = x[x > -1]
        return float(x.mean()) * 100 if x.size else math.nan

    stats = [mean(precision), mean(precision[0]), mean(precision[5])]  # IoU .5:.95, .5, .75
    return {"AP": stats[0], "AP50": stats[1], "AP75": stats[2]}


def main(argv=None, prog=None) -> int:
    """Command-line entry point (see the module docstring).

    Args:
        argv (list[str], optional): the arguments (default: ``sys.argv[1:]``).
        prog (str, optional): the program name shown in the usage (default: the script's name).

    Returns:
        int: 0, or 1 when some images were skipped.

    Raises:
        ValueError: the model has no d2_anchorfree metadata (:func:`load_model`).
        SystemExit: code 2 for bad arguments, e.g. ``--min-score best`` for a model without a
            saved best-F1 threshold (argparse's usage error, naming what to run), or an OpenVINO
            IR ``.xml`` without ``--runtime openvino``.
        ImportError: the ``--runtime`` is not installed (naming the extra).
        FileNotFoundError: no image matches ``--input``.
    """
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True,
                   help="model.onnx written by d2af export (or d2af quantize's .onnx / .xml; .xml: --runtime openvino)")
    p.add_argument("--input", default="", help="an image, a folder or a quoted glob")
    p.add_argument("--coco-json", default="", help="run the images of this COCO json instead of --input")
    p.add_argument("--image-root", default="", help="image folder of --coco-json (default: <json dir>/images)")
    p.add_argument("--output", required=True, help="folder for drawn images and results.json")
    p.add_argument("--min-score", type=_min_score_arg, default=None,
                   help="draw boxes with at least this score; 'best': the model's saved best-F1 threshold "
                        f"(default: that when the model has one, else {DEFAULT_MIN_SCORE})")
    p.add_argument("--labels", choices=LABEL_MODES, default=None,
                   help="text beside each drawn box (default: none for a single-class model, else class)")
    p.add_argument("--no-draw", action="store_true", help="write results.json only")
    p.add_argument("--evaluate", action="store_true", help="with --coco-json: print COCO AP (pycocotools)")
    p.add_argument("--runtime", choices=RUNTIMES, default="onnxruntime",
                   help="onnxruntime (default) or openvino (pip install 'd2_anchorfree[openvino]')")
    p.add_argument("--threads", type=int, default=0,
                   help="onnxruntime intra-op threads / OpenVINO INFERENCE_NUM_THREADS (0: the runtime's default)")
    args = p.parse_args(argv)
    if not args.input and not args.coco_json:
        p.error("give --input or --coco-json")
    if args.evaluate and not args.coco_json:
        p.error("--evaluate needs --coco-json")
    if args.model.lower().endswith(".xml") and args.runtime != "openvino":
        p.error(f"{args.model} is OpenVINO IR (e.g. from d2af quantize --quantizer nncf): run it with --runtime openvino")
    session, meta = load_model(args.model, args.threads, args.runtime)
    try:
        min_score, why = min_score_of(args.min_score, meta)
    except ValueError as e:
        p.error(f"{args.model}: {e}")  # exits with code 2
    labels = args.labels or default_labels(len(meta["class_names"]))
    if not args.no_draw:
        print(f"drawing detections with score >= {min_score:.3f} ({why})")
    files, names, image_ids = list_inputs(args.input, args.coco_json, args.image_root)
    os.makedirs(args.output, exist_ok=True)
    results, skipped = [], []
    for path, name in zip(tqdm(files, desc="predict", unit="img", file=sys.stderr), names):
        try:
            image = read_bgr(path)
        except ValueError as e:
            skipped.append(path)
            tqdm.write(f"WARNING: skipping {path}: {e}", file=sys.stderr)  # above the progress bar
            continue
        boxes, scores, classes = predict(session, meta, image)
        extra = {"file_name": name, **({"image_id": image_ids[name]} if name in image_ids else {})}
        results += coco_results(boxes, scores, classes, meta, **extra)
        if not args.no_draw:
            out_path = os.path.join(args.output, *(name + ".jpg").split("/"))
            os.makedirs(os.path.dirname(out_path), exist_ok=True)
            if not cv2.imwrite(out_path, draw(image, boxes, scores, classes, meta["class_names"], min_score, labels)):
                raise OSError(f"could not write {out_path}")
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(results, f)
    print(f"wrote {len(files) - len(skipped)} images and {len(results)} detections to {args.output}")
    if args.evaluate:
        metrics = evaluate(args.coco_json, results, meta["coco_max_dets_per_image"])
        print("COCO bbox: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
        with open(os.path.join(args.output, "metrics.json"), "w") as f:
            json.dump(metrics, f)
    if skipped:
        print(f"skipped {len(skipped)} unreadable image(s):", file=sys.stderr)
        for path in skipped:
            print(f"  {path}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

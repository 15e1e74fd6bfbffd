"""Export a trained detector (any preset or YAML composition) to ONNX or TorchScript.

    d2af export --config-file configs/DeFCN/DeFCN_tiny_R_18_cpu.yaml \
        --format onnx --output output/defcn_onnx MODEL.WEIGHTS output/defcn/model_final.pth
    d2af predict-onnx --model output/defcn_onnx/model.onnx --input image.png --output out/

(``python tools/export_model.py`` takes the same arguments as ``d2af export``.)

The file takes one uint8 BGR image [H, W, 3] of any height and width (dynamic axes; one image
per call) and returns boxes [D, 4] (XYXY pixels of that image), scores [D] and classes [D];
normalization, padding, backbone, head, decoding, candidate selection and NMS (class-aware) or
the NMS-free top-k are inside (``d2_anchorfree/export/graph.py``). Resizing to the test size
is the runtime's job (``d2af predict-onnx`` does it as detectron2's ``DefaultPredictor``).
Writes ``<output>/model.onnx`` or ``model.ts`` and ``metadata.json`` (also embedded in the file:
class names, test sizes, score threshold, and the best-F1 score threshold saved beside the
weights, for ``d2af predict-onnx --min-score best``). The class names come from the weights file (training
stores them), so the training data is not needed.

The trace uses ``--sample-image`` (default: the first image of ``DATASETS.TEST[0]``, or a
synthetic noise image of the test size when that dataset's files are not there); then the
file is checked against the PyTorch model on that image at the test size and on a crop of
another size (same detections, boxes within 0.01 px, scores within 1e-4); exit code 1 if not.
"""
import argparse
import logging
import sys
from typing import Optional

import numpy as np
import torch

from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from d2_anchorfree.checkpoint import load_inference_weights
from d2_anchorfree.checkpoint.score_threshold import load_best_f1
from d2_anchorfree.data.image_io import read_image
from d2_anchorfree.engine import setup_cfg
from d2_anchorfree.engine.predictor import model_classes
from d2_anchorfree.export import DEFAULT_OPSET, InferenceGraph, export_model
from d2_anchorfree.export.verify import match_detections, run_exported


def parse_args(argv=None, prog=None) -> argparse.Namespace:
    """Command-line arguments (see the module docstring); ``prog``: the program name of the usage."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--config-file", required=True)
    p.add_argument("--format", required=True, choices=["onnx", "torchscript"])
    p.add_argument("--output", required=True, help="folder for model.onnx / model.ts and metadata.json")
    p.add_argument("--sample-image", default="", help="image to trace with (default: first of DATASETS.TEST[0])")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (>= 19 for deformable convs)")
    p.add_argument("--allow-untrained", action="store_true", help="export without MODEL.WEIGHTS (random model)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides, KEY VALUE pairs")
    return p.parse_args(argv)


def synthetic_sample(cfg, seed: int = 0) -> np.ndarray:
    """A seeded noise image (uint8 BGR) of the test size, ``INPUT.MIN_SIZE_TEST`` x
    ``min(INPUT.MAX_SIZE_TEST, 4/3 of it)`` pixels (not resized again by the test resize): the
    tracing image when neither ``--sample-image`` nor the test dataset's files are there. The
    graph does not depend on the pixels; the verification then compares the two runtimes on noise."""
    h = int(cfg.INPUT.MIN_SIZE_TEST)
    w = min(int(cfg.INPUT.MAX_SIZE_TEST), (4 * h) // 3) if cfg.INPUT.MAX_SIZE_TEST else (4 * h) // 3
    return np.random.default_rng(seed).integers(0, 256, size=(h, max(1, w), 3), dtype=np.uint8)


def sample_image(cfg, path: str) -> np.ndarray:
    """The tracing image: ``path``, else the first image of ``DATASETS.TEST[0]``, else (no test
    dataset, or its files are not on this machine) :func:`synthetic_sample` with a warning;
    resized to the test size as ``DefaultPredictor`` does (uint8 BGR [H, W, 3]).

    Raises:
        FileNotFoundError, ValueError: ``path`` cannot be read (``read_image``).
    """
    if not path:
        name = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None
        try:
            if name is None or name not in DatasetCatalog.list():
                raise ValueError("no registered DATASETS.TEST dataset")
            path = DatasetCatalog.get(name)[0]["file_name"]
        except (FileNotFoundError, ValueError, IndexError) as e:
            logging.getLogger(__name__).warning(
                "no --sample-image and no test image to take (%s): tracing and verifying on a "
                "synthetic noise image; pass --sample-image for a check on a real image", e)
            return synthetic_sample(cfg)
    image = read_image(path, format="BGR")
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    return np.array(resize.get_transform(image).apply_image(image))  # writable, for torch.from_numpy


def verification_images(image: np.ndarray):
    """``image`` and a crop of it of another size (about 3/4 x 5/8, not a multiple of 32)."""
    h, w = image.shape[:2]
    crop = image[: max(1, (3 * h) // 4 | 1), : max(1, (5 * w) // 8 | 1)]
    return [image, np.ascontiguousarray(crop)]


def saved_score_threshold(weights: str) -> Optional[float]:
    """The best-F1 threshold saved beside ``weights`` (``checkpoint.score_threshold``) to embed in
    the export, or None (none saved; a stale or malformed one is left out with a warning)."""
    try:
        entry = load_best_f1(weights)
    except ValueError as e:
        logging.getLogger(__name__).warning("not embedding a best-F1 threshold: %s", e)
        return None
    if entry is None:
        logging.getLogger(__name__).info("no best-F1 threshold saved beside %s: predict-onnx --min-score best "
                                         "will refuse this export", weights or "the weights")
        return None
    return float(entry["score_threshold"])


def main(argv=None, prog=None) -> int:
    """Export and verify.

    Args:
        argv (list[str], optional): the arguments (default: ``sys.argv[1:]``).
        prog (str, optional): the program name shown in the usage (default: the script's name).

    Returns:
        int: 0, or 1 when the exported file disagrees with PyTorch or the export fails (with an
        ``error:`` line).
    """
    args = parse_args(argv, prog)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = setup_cfg(args, default_setup_logging=False)
    model = build_model(cfg).eval()
    try:
        checkpoint = load_inference_weights(model, cfg.MODEL.WEIGHTS, allow_untrained=args.allow_untrained)
        classes = model_classes(cfg, checkpoint, cfg.MODEL.WEIGHTS)
        image = sample_image(cfg, args.sample_image)
        path = export_model(cfg, model, args.format, args.output, torch.from_numpy(image), args.opset, classes,
                            saved_score_threshold(cfg.MODEL.WEIGHTS))
    except (ValueError, FileNotFoundError, RuntimeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    graph, status = InferenceGraph(model), 0
    for img in verification_images(image):
        with torch.no_grad():
            ref = graph(torch.from_numpy(img))
        report = match_detections(ref, run_exported(path, img))
        print(f"check at {img.shape[0]}x{img.shape[1]}: {'OK' if report.ok else 'MISMATCH'}: {report.summary()}")
        status |= 0 if report.ok else 1
    return status


if __name__ == "__main__":
    sys.exit(main())

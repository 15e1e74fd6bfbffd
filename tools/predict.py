#!/usr/bin/env python
"""Run a trained detector on an image, a folder, a glob or a registered dataset with detectron2's DefaultPredictor.

    python tools/predict.py --config-file configs/FCOS/FCOS_tiny_R_18_cpu.yaml \
        --input trees_val --output output/predictions \
        MODEL.WEIGHTS output/fcos_tiny/model_final.pth

Writes ``<output>/<image name>.jpg`` with the detections drawn (detectron2 ``Visualizer``) and
``<output>/results.json``: a COCO-style results list (file_name, category_id, bbox [x, y, w, h]
in pixels, score). Shows a progress bar over the images.
"""
import argparse
import glob
import json
import os
import sys

import cv2
import numpy as np
from tqdm import tqdm

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import Visualizer

from d2_anchorfree.engine import setup_cfg

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def list_images(spec: str):
    """Files named by ``spec``: an image file, a folder (its images, sorted), a glob, or the name
    of a dataset registered in ``DatasetCatalog`` (e.g. ``trees_val``: its images).

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
    return files


def read_bgr(path: str) -> np.ndarray:
    """Read an image as BGR uint8 [H, W, 3]. Raises ValueError naming an unreadable file."""
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read image {path} (missing, corrupt or unsupported format)")
    return img


def predict_files(predictor, files, output_dir, metadata, min_score=0.3, draw=True):
    """Run ``predictor`` on ``files``; write drawn images and return COCO-style results.

    Returns:
        list of dict(file_name, category_id, bbox [x, y, w, h] pixels, score). ``category_id``
        is the contiguous class index unless the metadata maps it back to a dataset id.
    """
    os.makedirs(output_dir, exist_ok=True)
    id_map = {v: k for k, v in getattr(metadata, "thing_dataset_id_to_contiguous_id", {}).items()}
    results = []
    for path in tqdm(files, desc="predict", unit="img", file=sys.stderr):
        img = read_bgr(path)
        inst = predictor(img)["instances"].to("cpu")
        boxes = inst.pred_boxes.tensor.numpy()
        for box, score, cls in zip(boxes, inst.scores.tolist(), inst.pred_classes.tolist()):
            x0, y0, x1, y1 = box.tolist()
            results.append({"file_name": os.path.basename(path), "category_id": id_map.get(cls, cls),
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "score": score})
        if draw:
            vis = Visualizer(img[:, :, ::-1], metadata, scale=1.0)
            out = vis.draw_instance_predictions(inst[inst.scores >= min_score]).get_image()[:, :, ::-1]
            name = os.path.splitext(os.path.basename(path))[0] + ".jpg"
            cv2.imwrite(os.path.join(output_dir, name), out)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--input", required=True,
                        help="an image, a folder, a quoted glob, or a registered dataset name")
    parser.add_argument("--output", required=True, help="folder for drawn images and results.json")
    parser.add_argument("--min-score", type=float, default=0.3, help="score for drawing boxes")
    parser.add_argument("--dataset", default=None,
                        help="dataset whose metadata (class names) to use; default DATASETS.TEST[0]")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config KEY VALUE pairs")
    args = parser.parse_args(argv)
    cfg = setup_cfg(argparse.Namespace(config_file=args.config_file, opts=args.opts),
                    default_setup_logging=False)
    files = list_images(args.input)
    name = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else None)
    metadata = MetadataCatalog.get(name) if name else MetadataCatalog.get("__unused")
    if name:  # loading the json fills thing_classes and the category id map in the metadata
        DatasetCatalog.get(name)
    results = predict_files(DefaultPredictor(cfg), files, args.output, metadata, args.min_score)
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(results, f)
    print(f"wrote {len(files)} images and {len(results)} detections to {args.output}")


if __name__ == "__main__":
    main()

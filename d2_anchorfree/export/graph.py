"""The exported computation: one module from a uint8 image to final detections.

``InferenceGraph`` wraps a built :class:`~d2_anchorfree.modeling.detector.AnchorFreeDetector`
(any preset or YAML composition) and runs, as plain tensor code with no data-dependent Python
branch (so that one trace serves every input size):

    uint8 BGR image [H, W, 3]
    -> float CHW, channel order of ``INPUT.FORMAT``, normalized by PIXEL_MEAN / PIXEL_STD and
       padded with zeros (after normalization) to the backbone's size divisibility: what the
       model's ``preprocess_image`` computes for one image, with the padded size computed by
       :func:`padded_to_divisibility` (a float ceil, which every ONNX runtime evaluates alike)
    -> backbone + FPN -> head -> per level the head's scoring rule, candidates, box decoding
       (``AnchorFreeDetector.detect_image``, the code eager inference runs)
    -> class-aware NMS or NMS-free top-k (``postprocessing.dense_detections``)
    -> boxes clipped to the image, empty boxes dropped (detectron2's ``detector_postprocess`` at
       scale 1)
    -> boxes [D, 4] XYXY float32 pixels of the input image, scores [D] float32 in [0, 1],
       classes [D] int64 (contiguous class index), sorted by score; D = 0 is fine.

Not inside: resizing to the test size (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``) and mapping
the boxes back to the original image; the runtime does both, exactly as detectron2's
``DefaultPredictor`` (:mod:`d2_anchorfree.runtime.predict_onnx`). One image per call (batch of one).
"""
import json
from typing import Dict, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from detectron2.data import DatasetCatalog
from detectron2.layers.wrappers import shapes_to_tensor

from ..checkpoint.classes import load_dataset_classes

from ..modeling.geometry import clip_boxes_to_image, nonempty_boxes

__all__ = ["InferenceGraph", "graph_metadata", "padded_to_divisibility", "GRAPH_INPUT", "GRAPH_OUTPUTS"]

GRAPH_INPUT = "image"
GRAPH_OUTPUTS = ("boxes", "scores", "classes")


def padded_to_divisibility(image: torch.Tensor, divisibility: int) -> torch.Tensor:
    """``image`` [C, H, W] zero-padded at the bottom and right to the next multiples of
    ``divisibility`` and batched: [1, C, ceil(H / d) d, ceil(W / d) d]. The same tensor as
    detectron2's ``ImageList.from_tensors([image], d)`` (pad value 0), which computes the padded
    size as ``(H + d - 1) // d * d``.

    Here the size is ``ceil(float32(H) / d) * d`` instead: traced, the integer floor division
    becomes an int64 ONNX ``Div`` chained with the ``Add`` and ``Mul`` around it, and OpenVINO's
    CPU plugin (2026.4) fuses that chain into one float kernel that rounds the quotient instead
    of truncating it (H = 384 was padded to 416, and 416 to 448). A float division of an integer
    below 2^24 by ``d`` is exact when the quotient is an integer, so the ceil is exact too and
    onnxruntime, OpenVINO and eager PyTorch agree.

    Args:
        image: [C, H, W] float; H, W >= 1 (traced sizes while tracing).
        divisibility: the backbone's ``size_divisibility``; <= 1 pads nothing.

    Returns:
        [1, C, H', W'] float, H' and W' the smallest multiples of ``divisibility`` >= H and W.
    """
    batched = image.unsqueeze(0)
    if divisibility <= 1:
        return batched
    size = shapes_to_tensor([image.shape[-2], image.shape[-1]])
    padded = (torch.ceil(size.to(torch.float32) / divisibility) * divisibility).to(size.dtype)
    extra = padded - size
    return F.pad(batched, [0, extra[1], 0, extra[0]], value=0.0)


class InferenceGraph(nn.Module):
    """A detector's whole inference on one uint8 BGR image (see the module docstring).

    The wrapped model is used as is (its parameters are shared, not copied) and both are put in
    ``eval()`` mode: ``torch.onnx.export`` restores the wrapper's mode afterwards, and a wrapper
    left in its default training mode would switch the detector to training (BatchNorm with
    batch statistics) after the export.
    """

    def __init__(self, model: nn.Module):
        """
        Args:
            model: an ``AnchorFreeDetector`` (has ``preprocess_image``, ``backbone``,
                ``head_in_features``, ``head``, ``shift_generator``, ``detect_image`` and
                ``input_format``).

        Raises:
            TypeError: ``model`` lacks ``detect_image`` (not one of our detectors), naming its type.
        """
        super().__init__()
        if not hasattr(model, "detect_image"):
            raise TypeError(f"InferenceGraph needs a d2_anchorfree detector, got {type(model).__name__}")
        self.model = model
        self.eval()

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            image: [H, W, 3] uint8, BGR (OpenCV's order, as ``DefaultPredictor``), any H, W >= 1,
                already at the test size.

        Returns:
            (boxes [D, 4] float32 XYXY pixels of ``image``, clipped to it; scores [D] float32 in
            [0, 1]; classes [D] int64 in [0, K)), sorted by score, D <= TEST.DETECTIONS_PER_IMAGE.
        """
        model = self.model
        chw = image.permute(2, 0, 1)
        if model.input_format == "RGB":
            chw = chw.flip(0)
        # model.preprocess_image for one image (normalize, then pad with zeros), with the padded
        # size computed so that OpenVINO agrees (padded_to_divisibility); the equality of the
        # whole graph with the model's forward is tested (tests/export/test_export.py)
        normalized = (chw.to(model.pixel_mean.dtype) - model.pixel_mean) / model.pixel_std
        image_size = (normalized.shape[-2], normalized.shape[-1])  # ints, or 0-dim tensors traced
        features = model.backbone(padded_to_divisibility(normalized, model.backbone.size_divisibility))
        features = [features[f] for f in model.head_in_features]
        predictions = model.head(features)
        boxes, scores, classes = model.detect_image(predictions, 0, model.shift_generator(features), image_size)
        boxes = clip_boxes_to_image(boxes, image_size)
        keep = nonempty_boxes(boxes)
        return boxes[keep], scores[keep], classes[keep]


def graph_metadata(cfg, model: nn.Module, fmt: str, classes: Optional[dict] = None,
                   best_f1_score_threshold: Optional[float] = None) -> Dict[str, str]:
    """What a runtime needs besides the graph, as string key/values (stored in the ONNX file's
    ``metadata_props`` and the TorchScript file's extra file ``d2af_metadata.json``).

    Keys: ``d2af_metadata`` (JSON): ``format`` ("onnx" | "torchscript"), ``input`` ("uint8 BGR
    [H, W, 3]"), ``outputs``, ``min_size_test`` / ``max_size_test`` (pixels: the runtime resizes
    the shorter side to min_size_test, the longer at most to max_size_test, as detectron2's
    ``ResizeShortestEdge``; 0 means no resize), ``meta_architecture``, ``nms_thresh`` (class-aware
    NMS IoU threshold, or null: NMS-free top-k), ``score_voting_sigma`` (score voting after NMS, or
    null), ``peak_kernel`` and ``non_peak_score_factor`` (NMS-free by score peaks, or null),
    ``score_thresh``, ``class_names`` and ``category_ids`` (contiguous index -> dataset category
    id): ``classes`` when given (the weights file's, see ``d2_anchorfree.checkpoint.classes``),
    else from the metadata of ``DATASETS.TEST[0]`` when registered and its files are there (loaded
    for it unless already loaded), else "class_<i>" and 0..K-1;
    ``coco_max_dets_per_image`` (``TEST.COCO_MAX_DETS_PER_IMAGE``, for COCO AP as evaluation);
    ``best_f1_score_threshold`` (the weights' saved best-F1 threshold in [0, 1], see
    ``d2_anchorfree.checkpoint.score_threshold``, or null: ``predict-onnx --min-score best``).

    Args:
        cfg: the detector's config. model: the detector built from it. fmt: "onnx" or "torchscript".
        classes: ``{"thing_classes": [str], "category_ids": [int]}`` (K each) or None.
        best_f1_score_threshold: the weights' best-F1 score threshold, or None.
    """
    num_classes = cfg.MODEL.DENSE.NUM_CLASSES
    names = [f"class_{i}" for i in range(num_classes)]
    ids = list(range(num_classes))
    if classes is None and cfg.DATASETS.TEST and cfg.DATASETS.TEST[0] in DatasetCatalog.list():
        try:
            classes = load_dataset_classes(cfg.DATASETS.TEST[0])
        except FileNotFoundError:  # a config naming data this machine does not have
            classes = None
    if classes is not None and len(classes["thing_classes"]) == num_classes:
        names, ids = list(classes["thing_classes"]), [int(i) for i in classes["category_ids"]]
    peak_kernel = getattr(model, "test_peak_kernel", None)  # None: not NMS-free by score peaks
    info = {
        "format": fmt,
        "input": f"{GRAPH_INPUT}: uint8 BGR [H, W, 3] at the test size",
        "outputs": list(GRAPH_OUTPUTS),
        "min_size_test": int(cfg.INPUT.MIN_SIZE_TEST),
        "max_size_test": int(cfg.INPUT.MAX_SIZE_TEST),
        "meta_architecture": cfg.MODEL.META_ARCHITECTURE,
        "nms_thresh": model.test_nms_thresh,
        "score_voting_sigma": getattr(model, "test_score_voting_sigma", None),
        "peak_kernel": peak_kernel,
        "non_peak_score_factor": None if peak_kernel is None else model.test_non_peak_factor,
        "score_thresh": float(cfg.MODEL.DENSE.SCORE_THRESH_TEST),
        "coco_max_dets_per_image": int(cfg.TEST.COCO_MAX_DETS_PER_IMAGE),
        "class_names": names,
        "category_ids": ids,
        "best_f1_score_threshold": None if best_f1_score_threshold is None else float(best_f1_score_threshold),
    }
    return {"d2af_metadata": json.dumps(info)}

"""Test-time augmentation for every dense detector: multi-scale and horizontal flip, merged by
class-aware NMS across augmentations or weighted boxes fusion.

detectron2's ``GeneralizedRCNNWithTTA`` asserts a ``GeneralizedRCNN`` (and AdelaiDet's TTA only
supports it too); this wrapper needs only a model that takes ``[{"image", "height", "width"}]``
and returns ``[{"instances"}]`` in ``height`` x ``width`` pixels, as every ``AnchorFreeDetector``
does (``DenseDetector.forward`` rescales). Keys: detectron2's ``TEST.AUG.ENABLED``,
``MIN_SIZES``, ``MAX_SIZE``, ``FLIP``, and ours ``TEST.AUG.MERGE``, ``MERGE_IOU``.
"""
from typing import List, Sequence, Tuple

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.structures import Boxes, Instances

from ..modeling.postprocessing import detections_to_instances
from .merge import check_merge, fuse_clusters, greedy_clusters, same_class_iou_pairs
from .slicing import resize_shortest_edge, resize_to

__all__ = ["TTA_MERGE_METHODS", "hflip_boxes", "augmented_inputs", "merge_augmentations", "DenseTTA"]

#: "nms": clusters of matching detections from different augmentations keep their best one;
#: "wbf": ensemble-boxes' weighted boxes fusion of all augmentations.
TTA_MERGE_METHODS = ("nms", "wbf")


def hflip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """Boxes of a horizontally flipped image, mapped back (or forth: the map is its own inverse).

    Args:
        boxes: [N, 4] XYXY pixels of an image ``width`` pixels wide (continuous coordinates,
            x in [0, width]).

    Returns:
        [N, 4]: ``(width - x1, y0, width - x0, y1)``; exact in floating point for the integer
        and half-integer coordinates of pixel grids.
    """
    x0, y0, x1, y1 = boxes.unbind(dim=1)
    return torch.stack([width - x1, y0, width - x0, y1], dim=1)


def augmented_inputs(image: torch.Tensor, height: int, width: int, min_sizes: Sequence[int],
                     max_size: int, flip: bool) -> Tuple[List[dict], List[bool]]:
    """The model inputs of every augmentation of one image: for each shortest-edge size in
    ``min_sizes`` (detectron2's ``ResizeShortestEdge(size, max_size)``, the test resize), the
    resized image and, with ``flip``, its horizontal flip. Each asks for output size
    ``height`` x ``width`` (the original image).

    Args:
        image: [C, H, W] uint8; resized to ``height`` x ``width`` first when it has another size
            (detectron2's ``DatasetMapperTTA`` does the same), so pass the original image to avoid
            a second interpolation.

    Returns:
        (inputs, flipped): detectron2 input dicts and, per input, whether it is flipped.
    """
    original = resize_to(image, height, width)
    inputs, flipped = [], []
    for size in min_sizes:
        resized = resize_shortest_edge(original, size, max_size)
        for f in ([False, True] if flip else [False]):
            inputs.append({"image": resized.flip(dims=[2]) if f else resized, "height": height, "width": width})
            flipped.append(f)
    return inputs, flipped


def _wbf(boxes, scores, classes, groups, num_groups, image_size, iou_thresh):
    """ensemble-boxes' ``weighted_boxes_fusion`` (Solovyev et al., "Weighted boxes fusion",
    Image and Vision Computing 2021) on pixel boxes: normalized to [0, 1] by the image size, one
    list per group, equal weights, ``conf_type="avg"`` (a box found by k of T augmentations gets
    its mean score times k / T), no score threshold. Returns (boxes, scores, classes) in pixels."""
    try:
        from ensemble_boxes import weighted_boxes_fusion
    except ImportError as e:  # pragma: no cover - an install without requirements-extra.txt
        raise ImportError("TEST.AUG.MERGE 'wbf' needs ensemble-boxes (pip install ensemble-boxes==1.0.9, "
                          "listed in requirements-extra.txt)") from e
    h, w = image_size
    scale = torch.tensor([w, h, w, h], dtype=torch.float64)
    b64 = boxes.double() / scale
    lists = [(b64[groups == g].numpy(), scores[groups == g].double().numpy(), classes[groups == g].numpy())
             for g in range(num_groups)]
    fb, fs, fc = weighted_boxes_fusion([x[0] for x in lists], [x[1] for x in lists], [x[2] for x in lists],
                                       iou_thr=iou_thresh, skip_box_thr=0.0, conf_type="avg")
    out_boxes = (torch.as_tensor(fb, dtype=torch.float64).reshape(-1, 4) * scale).to(boxes.dtype)
    return out_boxes, torch.as_tensor(fs).to(scores.dtype), torch.as_tensor(fc).long()


def merge_augmentations(per_aug: Sequence[Instances], image_size: Tuple[int, int], method: str = "nms",
                        iou_thresh: float = 0.6, max_detections: int = 100) -> Instances:
    """Merge the detections of the augmentations of one image (all in original-image pixels).

    "nms": pairs of the same class from *different* augmentations with IoU >= ``iou_thresh``
    are clustered greedily by score and each cluster keeps its best detection
    (``merge.greedy_clusters``); detections of one augmentation never suppress each other, so an
    NMS-free detector's own output is kept as it is and only the copies that the augmentations
    make are removed. "wbf": weighted boxes fusion over all augmentations (ensemble-boxes: it
    clusters every box, whatever augmentation it came from). A single augmentation is returned
    unchanged (at most ``max_detections``), whatever the method.

    Args:
        per_aug: T ``Instances`` with ``pred_boxes`` (XYXY pixels), ``scores``, ``pred_classes``.
        image_size: (height, width) pixels. method: "nms" or "wbf". iou_thresh: in (0, 1].
        max_detections: >= 1, the best detections kept.

    Returns:
        ``Instances`` of ``image_size``, sorted by score.

    Raises:
        ValueError: unknown ``method`` or ``iou_thresh`` outside (0, 1].
    """
    check_merge("TEST.AUG.MERGE", method, iou_thresh, TTA_MERGE_METHODS)
    boxes = torch.cat([x.pred_boxes.tensor for x in per_aug])
    scores = torch.cat([x.scores for x in per_aug])
    classes = torch.cat([x.pred_classes for x in per_aug])
    groups = torch.cat([torch.full((len(x),), g, dtype=torch.long) for g, x in enumerate(per_aug)])
    if len(per_aug) == 1:
        order = scores.argsort(descending=True, stable=True)[:max_detections]
        boxes, scores, classes = boxes[order], scores[order], classes[order]
    elif method == "nms":
        owner = greedy_clusters(scores, same_class_iou_pairs(boxes, classes, groups, iou_thresh))
        keep, boxes = fuse_clusters(boxes, scores, owner, "nms")
        keep, boxes = keep[:max_detections], boxes[:max_detections]
        scores, classes = scores[keep], classes[keep]
    else:
        boxes, scores, classes = _wbf(boxes, scores, classes, groups, len(per_aug), image_size, iou_thresh)
        order = scores.argsort(descending=True, stable=True)[:max_detections]
        boxes, scores, classes = boxes[order], scores[order], classes[order]
    return detections_to_instances(tuple(image_size), boxes, scores, classes)


class DenseTTA(nn.Module):
    """Multi-scale + horizontal-flip test-time augmentation around a dense detector.

    ``forward(batched_inputs)`` (detectron2 eval-mode API, like ``GeneralizedRCNNWithTTA``):
    per input, the augmented inputs of :func:`augmented_inputs`, one model forward per
    augmentation (memory of one augmented image at a time), flipped boxes flipped back
    (:func:`hflip_boxes`), then :func:`merge_augmentations`. Returns ``[{"instances"}]`` in
    ``height`` x ``width`` pixels. With ``min_sizes = (INPUT.MIN_SIZE_TEST,)``, ``max_size =
    INPUT.MAX_SIZE_TEST`` and no flip it equals plain inference (``DefaultPredictor``).
    """

    @configurable
    def __init__(self, model: nn.Module, *, min_sizes: Sequence[int], max_size: int, flip: bool = True,
                 merge: str = "nms", merge_iou: float = 0.6, max_detections: int = 100):
        """
        Args:
            model: the detector (a submodule of this one).
            min_sizes: shortest-edge sizes, pixels, each >= 1 (``TEST.AUG.MIN_SIZES``).
            max_size: longest-edge limit, pixels (``TEST.AUG.MAX_SIZE``).
            flip: add the horizontal flip of every size (``TEST.AUG.FLIP``).
            merge, merge_iou: ``TEST.AUG.MERGE`` ("nms" or "wbf"), ``TEST.AUG.MERGE_IOU``.
            max_detections: detections kept per image (``TEST.DETECTIONS_PER_IMAGE``).

        Raises:
            ValueError: empty ``min_sizes`` or a size < 1, ``max_size`` < 1, or see
                :func:`merge_augmentations`; naming the key.
        """
        super().__init__()
        if not min_sizes or any(int(s) < 1 for s in min_sizes):
            raise ValueError(f"TEST.AUG.MIN_SIZES must be a non-empty list of sizes >= 1, got {min_sizes}")
        if int(max_size) < 1:
            raise ValueError(f"TEST.AUG.MAX_SIZE must be >= 1, got {max_size}")
        check_merge("TEST.AUG.MERGE", merge, merge_iou, TTA_MERGE_METHODS)
        self.model = model
        self.min_sizes, self.max_size, self.flip = [int(s) for s in min_sizes], int(max_size), bool(flip)
        self.merge, self.merge_iou, self.max_detections = merge, float(merge_iou), int(max_detections)

    @classmethod
    def from_config(cls, cfg, model):
        a = cfg.TEST.AUG
        return {"model": model, "min_sizes": list(a.MIN_SIZES), "max_size": a.MAX_SIZE, "flip": a.FLIP,
                "merge": a.MERGE, "merge_iou": a.MERGE_IOU, "max_detections": cfg.TEST.DETECTIONS_PER_IMAGE}

    def run_augmentations(self, image: torch.Tensor, height: int, width: int) -> List[Instances]:
        """The detections of every augmentation of one image [C, H, W] uint8, each in original
        (``height`` x ``width``) pixels, flipped ones flipped back; one forward per augmentation."""
        inputs, flipped = augmented_inputs(image, height, width, self.min_sizes, self.max_size, self.flip)
        per_aug = []
        for aug, f in zip(inputs, flipped):
            inst = self.model([aug])[0]["instances"].to("cpu")
            if f:
                inst.pred_boxes = Boxes(hflip_boxes(inst.pred_boxes.tensor, width))
            per_aug.append(inst)
        return per_aug

    def predict(self, image: torch.Tensor, height: int, width: int) -> Instances:
        """TTA of one image [C, H, W] uint8: :meth:`run_augmentations`, then
        :func:`merge_augmentations`; ``Instances`` of (``height``, ``width``)."""
        per_aug = self.run_augmentations(image, height, width)
        return merge_augmentations(per_aug, (height, width), self.merge, self.merge_iou, self.max_detections)

    def forward(self, batched_inputs: List[dict]) -> List[dict]:
        """``[{"instances"}]`` per input (``"image"`` [C, H, W] uint8, optional ``"height"``,
        ``"width"``: the output size, default the image's)."""
        results = []
        for inputs in batched_inputs:
            image = inputs["image"].cpu()
            h, w = inputs.get("height", image.shape[1]), inputs.get("width", image.shape[2])
            results.append({"instances": self.predict(image, h, w)})
        return results

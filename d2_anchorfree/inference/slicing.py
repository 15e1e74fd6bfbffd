"""Sliced inference: a detector run over an image of any size in overlapping windows.

Geometry (:func:`window_origins`, :func:`slice_windows`), the mapping of window detections back
to the image (:func:`windows_to_image`), the matching of detections across windows
(:func:`cross_window_pairs`, :func:`cut_sides`) and the module that does it all
(:class:`SlicedDetector`). Idea from SAHI (Akyon et al., "Slicing Aided Hyper Inference and
Fine-tuning for Small Object Detection", ICIP 2022); the ``sahi`` package itself is not used: it
requires ``opencv-python`` (which would sit next to our ``opencv-python-headless``), its
detectron2 wrapper builds the config from detectron2's ``get_cfg()`` without our keys and
``DefaultPredictor`` without our weight checks, and it runs one window per forward.
"""
import math
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from detectron2.config import configurable
from detectron2.data import transforms as T
from detectron2.structures import Instances

from ..modeling.postprocessing import detections_to_instances
from .merge import check_merge, fuse_clusters, greedy_clusters

__all__ = ["window_origins", "slice_windows", "check_slice_config", "windows_to_image",
           "cross_window_pairs", "cut_sides", "merge_windows", "resize_to", "resize_shortest_edge", "SlicedDetector"]


def check_slice_config(size: int, overlap: int, batch_size: int = 1, merge: str = "nmm",
                       merge_iou: float = 0.5) -> None:
    """Validate the ``TEST.SLICE`` values.

    Raises:
        ValueError: ``SIZE`` < 1, ``OVERLAP`` < 0, ``SIZE <= OVERLAP`` (windows would not advance),
            ``BATCH_SIZE`` < 1, unknown ``MERGE`` or ``MERGE_IOU`` outside (0, 1]; naming the key
            and the value.
    """
    if int(size) < 1:
        raise ValueError(f"TEST.SLICE.SIZE must be >= 1 pixel, got {size}")
    if int(overlap) < 0:
        raise ValueError(f"TEST.SLICE.OVERLAP must be >= 0 pixels, got {overlap}")
    if int(size) <= int(overlap):
        raise ValueError(f"TEST.SLICE.SIZE ({size}) must be larger than TEST.SLICE.OVERLAP ({overlap})")
    if int(batch_size) < 1:
        raise ValueError(f"TEST.SLICE.BATCH_SIZE must be >= 1, got {batch_size}")
    check_merge("TEST.SLICE.MERGE", merge, merge_iou)


def window_origins(length: int, size: int, overlap: int) -> List[int]:
    """Start coordinates (pixels) of windows of ``size`` covering ``[0, length)`` along one axis.

    ``n = ceil((length - size) / (size - overlap)) + 1`` windows spread evenly: origin
    ``i * (length - size) // (n - 1)``, so the first starts at 0, the last ends exactly at
    ``length`` and neighbours overlap by at least ``overlap`` pixels (the same rule as the data
    preparation's tiles, ``d2_anchorfree.data.trees.tile_origins``, whose stride is ``size - overlap``).
    ``length <= size`` gives ``[0]`` (one window, cut to ``length``).
    Example: length 1035, size 400, overlap 100 -> [0, 211, 423, 635].

    Raises:
        ValueError: see :func:`check_slice_config`, or ``length`` < 1.
    """
    check_slice_config(size, overlap)
    if length < 1:
        raise ValueError(f"image side must be >= 1 pixel, got {length}")
    if length <= size:
        return [0]
    n = math.ceil((length - size) / (size - overlap)) + 1
    return [i * (length - size) // (n - 1) for i in range(n)]


def slice_windows(height: int, width: int, size: int, overlap: int) -> torch.Tensor:
    """The windows covering an ``height`` x ``width`` image, row by row.

    Returns:
        [W, 4] long XYXY pixels (``x1``, ``y1`` exclusive), each ``min(size, width)`` x
        ``min(size, height)``; their union is exactly the image.

    Raises:
        ValueError: see :func:`window_origins`.
    """
    ys, xs = window_origins(height, size, overlap), window_origins(width, size, overlap)
    h, w = min(size, height), min(size, width)
    return torch.tensor([[x, y, x + w, y + h] for y in ys for x in xs], dtype=torch.long).reshape(-1, 4)


def windows_to_image(per_window: Sequence[Instances], windows: torch.Tensor) -> Tuple[torch.Tensor, ...]:
    """Concatenate detections of windows, shifted from window to image pixels.

    Args:
        per_window: W ``Instances`` with ``pred_boxes`` (XYXY pixels of the window), ``scores``,
            ``pred_classes``. windows: [W, 4] XYXY image pixels.

    Returns:
        (boxes [N, 4] float image pixels, scores [N], classes [N] long, window_ids [N] long).
    """
    boxes, scores, classes, ids = [], [], [], []
    for k, inst in enumerate(per_window):
        offset = windows[k, :2].to(inst.pred_boxes.tensor).repeat(2)
        boxes.append(inst.pred_boxes.tensor + offset)
        scores.append(inst.scores)
        classes.append(inst.pred_classes)
        ids.append(torch.full((len(inst),), k, dtype=torch.long))
    if not boxes:
        return torch.zeros((0, 4)), torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(boxes), torch.cat(scores), torch.cat(classes), torch.cat(ids)


def _clip(boxes: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    lo, hi = region[:2].to(boxes).repeat(2), region[2:].to(boxes).repeat(2)
    return torch.maximum(torch.minimum(boxes, hi), lo)


def _area(boxes: torch.Tensor) -> torch.Tensor:
    return (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)


def cross_window_pairs(boxes: torch.Tensor, classes: torch.Tensor, window_ids: torch.Tensor,
                       windows: torch.Tensor, iou_thresh: float) -> torch.Tensor:
    """Pairs of detections from two different, overlapping windows that show the same object.

    Two detections of windows a and b match when they have the same class and their parts inside
    the windows' common region (where both windows see the image) have IoU >= ``iou_thresh``.
    Inside that region both windows see the same pixels, so two detections of one object agree
    there even when a window edge cuts one of them (the half box of a crown cut by window a's
    right edge and the whole box seen by window b give IoU ~1 there, plain IoU ~0.5).

    Memory: per pair of overlapping windows, [n_a, n_b] for the detections touching their common
    region; never the [N, N] matrix of all detections.

    Args:
        boxes: [N, 4] XYXY image pixels. classes, window_ids: [N] long.
        windows: [W, 4] XYXY image pixels. iou_thresh: in (0, 1].

    Returns:
        [P, 2] long pairs of indices into the N detections.
    """
    from torchvision.ops import box_iou

    w = windows.to(boxes)
    lo = torch.maximum(w[:, None, :2], w[None, :, :2])
    hi = torch.minimum(w[:, None, 2:], w[None, :, 2:])
    overlapping = ((hi - lo) > 0).all(dim=2)
    members = [torch.nonzero(window_ids == k).squeeze(1) for k in range(len(windows))]
    pairs = []
    for a, b in torch.nonzero(torch.triu(overlapping, diagonal=1)).tolist():
        region = torch.cat([lo[a, b], hi[a, b]])
        ia, ib = members[a], members[b]
        if len(ia) == 0 or len(ib) == 0:
            continue
        ca, cb = _clip(boxes[ia], region), _clip(boxes[ib], region)
        ia, ca = ia[_area(ca) > 0], ca[_area(ca) > 0]
        ib, cb = ib[_area(cb) > 0], cb[_area(cb) > 0]
        if len(ia) == 0 or len(ib) == 0:
            continue
        iou = box_iou(ca, cb)
        ok = (iou >= iou_thresh) & (classes[ia][:, None] == classes[ib][None, :])
        i, j = torch.nonzero(ok, as_tuple=True)
        pairs.append(torch.stack([ia[i], ib[j]], dim=1))
    return torch.cat(pairs) if pairs else torch.zeros((0, 2), dtype=torch.long)


def cut_sides(boxes: torch.Tensor, window_ids: torch.Tensor, windows: torch.Tensor,
              image_size: Tuple[int, int], tolerance: float = 1.0) -> torch.Tensor:
    """Which sides of each box lie on an edge of its window that is inside the image (the window
    cut the object there, or may have).

    Args:
        boxes: [N, 4] XYXY image pixels. window_ids: [N] long. windows: [W, 4] XYXY image pixels.
        image_size: (height, width) pixels. tolerance: pixels.

    Returns:
        [N, 4] bool, sides (x0, y0, x1, y1).
    """
    h, w = image_size
    win = windows[window_ids].to(boxes)
    inner = torch.stack([win[:, 0] > 0, win[:, 1] > 0, win[:, 2] < w, win[:, 3] < h], dim=1)
    return inner & ((boxes - win).abs() <= tolerance)


def merge_windows(boxes: torch.Tensor, scores: torch.Tensor, classes: torch.Tensor, window_ids: torch.Tensor,
                  windows: torch.Tensor, image_size: Tuple[int, int], method: str = "nmm",
                  iou_thresh: float = 0.5, max_detections: Optional[int] = None) -> Instances:
    """Merge the detections of all windows of one image into one ``Instances``.

    Matching pairs (:func:`cross_window_pairs`, only between different windows) are clustered
    greedily by score (``merge.greedy_clusters``) and each cluster becomes one detection
    (``merge.fuse_clusters``; "nmm" repairs sides cut by window edges, see :func:`cut_sides`).

    Args:
        boxes [N, 4] XYXY image pixels, scores [N], classes [N] long, window_ids [N] long.
        windows: [W, 4]. image_size: (height, width). method: "nmm" or "nms".
        iou_thresh: in (0, 1]. max_detections: keep at most this many (best scores); None: all.

    Returns:
        ``Instances`` of ``image_size`` with ``pred_boxes``, ``scores``, ``pred_classes``, sorted
        by score.

    Raises:
        ValueError: unknown ``method`` or ``iou_thresh`` outside (0, 1].
    """
    check_merge("TEST.SLICE.MERGE", method, iou_thresh)
    pairs = cross_window_pairs(boxes, classes, window_ids, windows, iou_thresh)
    owner = greedy_clusters(scores, pairs)
    cut = cut_sides(boxes, window_ids, windows, image_size) if method == "nmm" else None
    keep, fused = fuse_clusters(boxes, scores, owner, method, cut)
    if max_detections is not None:
        keep, fused = keep[:max_detections], fused[:max_detections]
    return detections_to_instances(tuple(image_size), fused, scores[keep], classes[keep])


def resize_to(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[C, H, W] uint8 -> [C, height, width] uint8 with detectron2's ``ResizeTransform`` (PIL
    bilinear, the resize of ``ResizeShortestEdge``); unchanged when the size already matches."""
    if tuple(image.shape[1:]) == (height, width):
        return image
    array = image.permute(1, 2, 0).numpy()
    out = T.ResizeTransform(array.shape[0], array.shape[1], height, width).apply_image(array)
    return torch.as_tensor(np.ascontiguousarray(out.transpose(2, 0, 1)))


def resize_shortest_edge(image: torch.Tensor, min_size: int, max_size: int) -> torch.Tensor:
    """``image`` [C, H, W] uint8 resized as detectron2's test mapper does
    (``ResizeShortestEdge(min_size, max_size)``: shortest side ``min_size`` pixels, longest at
    most ``max_size``); the input unchanged when that is its size."""
    h, w = image.shape[1:]
    newh, neww = T.ResizeShortestEdge.get_output_shape(h, w, min_size, max_size)
    return resize_to(image, newh, neww)


class SlicedDetector(nn.Module):
    """A detector run over overlapping windows of each image, its outputs merged.

    ``forward(batched_inputs)`` takes detectron2 inputs (``"image"`` [C, H, W] uint8 in the
    model's ``INPUT.FORMAT``, at full resolution; optional ``"height"``/``"width"``, the output
    size) and returns ``[{"instances": Instances}]`` in output pixels, like a detectron2 model in
    eval mode, so that ``inference_on_dataset``, ``build_predictor`` and ``tools/predict.py`` use it
    alike. Each window gets the test resize (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``, as a tile
    would) and ``batch_size`` windows go through the window model at once: memory holds the image,
    the detections and one batch's feature maps, never the whole image's.
    """

    @configurable
    def __init__(self, model: nn.Module, *, size: int, overlap: int, batch_size: int = 4,
                 merge: str = "nmm", merge_iou: float = 0.5, max_detections: int = 100,
                 min_size_test: int = 0, max_size_test: int = 0,
                 window_model: Optional[Callable] = None, progress: bool = False):
        """
        Args:
            model: the detector (``AnchorFreeDetector``; any detectron2 model that takes
                ``[{"image", "height", "width"}]`` works), a submodule of this one.
            size, overlap: window side and minimum overlap, pixels (``TEST.SLICE.SIZE``/``OVERLAP``).
            batch_size: windows per forward (``TEST.SLICE.BATCH_SIZE``).
            merge, merge_iou: ``TEST.SLICE.MERGE`` ("nmm" or "nms") and ``MERGE_IOU``.
            max_detections: detections kept per image after merging.
            min_size_test, max_size_test: the resize of each window (``min_size_test`` 0: none,
                for a ``window_model`` that resizes itself).
            window_model: what runs on a batch of window inputs (default ``model``; a
                :class:`~d2_anchorfree.inference.tta.DenseTTA` for sliced + TTA).
            progress: show a tqdm bar over the windows of each image.

        Raises:
            ValueError: see :func:`check_slice_config`; ``max_detections`` < 1.
        """
        super().__init__()
        check_slice_config(size, overlap, batch_size, merge, merge_iou)
        if int(max_detections) < 1:
            raise ValueError(f"TEST.SLICE.DETECTIONS_PER_IMAGE must be >= 0 (0: TEST.DETECTIONS_PER_IMAGE), "
                             f"giving at least 1 detection per image; got {max_detections}")
        self.model = model
        self.window_model = window_model if window_model is not None else model
        self.size, self.overlap, self.batch_size = int(size), int(overlap), int(batch_size)
        self.merge, self.merge_iou = merge, float(merge_iou)
        self.max_detections = int(max_detections)
        self.min_size_test, self.max_size_test = int(min_size_test), int(max_size_test)
        self.progress = progress

    @classmethod
    def from_config(cls, cfg, model, window_model=None, progress=False):
        s = cfg.TEST.SLICE
        return {"model": model, "size": s.SIZE, "overlap": s.OVERLAP, "batch_size": s.BATCH_SIZE,
                "merge": s.MERGE, "merge_iou": s.MERGE_IOU,
                "max_detections": s.DETECTIONS_PER_IMAGE or cfg.TEST.DETECTIONS_PER_IMAGE,
                # a window model such as DenseTTA resizes each window itself
                "min_size_test": 0 if window_model is not None else cfg.INPUT.MIN_SIZE_TEST,
                "max_size_test": cfg.INPUT.MAX_SIZE_TEST,
                "window_model": window_model, "progress": progress}

    def window_input(self, image: torch.Tensor, window: torch.Tensor) -> dict:
        """The detectron2 input of one window: its pixels, test-resized; output size = the
        window's size in image pixels."""
        x0, y0, x1, y1 = window.tolist()
        return self.crop_input(image[:, y0:y1, x0:x1])

    def crop_input(self, crop: torch.Tensor) -> dict:
        """The detectron2 input of a window's pixels ``crop`` [C, h, w] uint8: test-resized;
        output size = ``(h, w)``."""
        h, w = crop.shape[1:]
        if self.min_size_test > 0:
            crop = resize_shortest_edge(crop, self.min_size_test, self.max_size_test)
        return {"image": crop, "height": h, "width": w}

    def predict(self, image: torch.Tensor) -> Instances:
        """Sliced inference on one image.

        Args:
            image: [C, H, W] uint8 tensor in the model's input format, full resolution.

        Returns:
            ``Instances`` of (H, W): ``pred_boxes`` XYXY image pixels, ``scores``, ``pred_classes``.
        """
        h, w = image.shape[1:]
        return self.predict_windows(h, w, lambda win: image[:, win[1]:win[3], win[0]:win[2]])

    def predict_windows(self, height: int, width: int,
                        read_window: Callable[[Tuple[int, int, int, int]], Optional[torch.Tensor]]) -> Instances:
        """Sliced inference on an image that is read one window at a time (never whole).

        The windows are those of :func:`slice_windows`, read in row order, ``batch_size`` at a
        time; memory holds one batch of windows, its feature maps and the detections so far.

        Args:
            height, width: the image size, pixels.
            read_window: ``(x0, y0, x1, y1)`` (ints, x1/y1 exclusive) -> that window's pixels,
                [C, y1 - y0, x1 - x0] uint8 in the model's input format, or None to skip the
                window (e.g. only nodata: no forward, no detection there).

        Returns:
            ``Instances`` of (height, width): ``pred_boxes`` XYXY image pixels, ``scores``,
            ``pred_classes``; windows read from an in-memory image give exactly :meth:`predict`'s.
        """
        from tqdm import tqdm

        windows = slice_windows(height, width, self.size, self.overlap)
        per_window, kept, batch = [], [], []
        bar = tqdm(total=len(windows), desc="windows", unit="win", leave=False, disable=not self.progress)
        for k, win in enumerate(windows):
            crop = read_window(tuple(win.tolist()))
            if crop is not None:
                batch.append(self.crop_input(crop))
                kept.append(k)
            if len(batch) == self.batch_size or (k == len(windows) - 1 and batch):
                per_window.extend(out["instances"].to("cpu") for out in self.window_model(batch))
                batch = []
            bar.update(1)
        bar.close()
        windows = windows[torch.tensor(kept, dtype=torch.long)]
        boxes, scores, classes, ids = windows_to_image(per_window, windows)
        return merge_windows(boxes, scores, classes, ids, windows, (height, width), self.merge, self.merge_iou,
                             self.max_detections)

    def forward(self, batched_inputs: List[dict]) -> List[dict]:
        """detectron2 eval-mode API: ``[{"instances"}]`` per input, in ``height`` x ``width``
        pixels (boxes scaled from the image given when it has another size)."""
        results = []
        for inputs in batched_inputs:
            image = inputs["image"]
            inst = self.predict(image.cpu() if image.device.type != "cpu" else image)
            h, w = image.shape[1:]
            out_h, out_w = inputs.get("height", h), inputs.get("width", w)
            if (out_h, out_w) != (h, w):
                scale = torch.tensor([out_w / w, out_h / h, out_w / w, out_h / h])
                inst = detections_to_instances((out_h, out_w), inst.pred_boxes.tensor * scale, inst.scores,
                                               inst.pred_classes)
            results.append({"instances": inst})
        return results


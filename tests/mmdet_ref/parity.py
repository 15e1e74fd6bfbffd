"""Compare our converted model with an MMDetection reference dump (``dump_reference.py``).

Used by ``tests/checkpoint/test_mmdet_parity.py``; runs in the project venv. For one dump: convert its
checkpoint with :func:`d2_anchorfree.checkpoint.conversion.convert_checkpoint`, build our model
from the matching ``configs/zoo/mmdet/*.yaml``, and on every image compare

* the FPN features (our backbone on the reference's own preprocessed, padded input),
* the head's per-level outputs (through :data:`HEAD_OUTPUTS`, which says how each of the
  reference's outputs reads in our head's terms),
* the final detections of our full model (our preprocessing, NMS / top-k, rescaling) with the
  reference's ``predict``: same number, and matched one to one with the same class, boxes within
  ``BOX_ATOL`` pixels and scores within ``SCORE_ATOL``. Like every detectron2 model, ours clips
  its final boxes to the image and drops empty ones; the reference's boxes are clipped the same
  way, and those entirely outside the image (TOOD's reference clips nothing) are left out and
  counted in ``result["outside"]``.
"""
import os
import re
from typing import Callable, Dict, List, Optional, Tuple

import cv2
import numpy as np
import torch

from detectron2.config import get_cfg

from d2_anchorfree.checkpoint.conversion import convert_checkpoint
from d2_anchorfree.config import add_anchorfree_config

FEATURE_ATOL = 1e-4
HEAD_ATOL = 1e-4
BOX_ATOL = 0.01  # pixels
SCORE_ATOL = 1e-4

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def zoo_config(name: str, opts=()):
    """Our config for the MMDetection config ``name`` (e.g. "gfl/gfl_r50_fpn_1x_coco.py"), with
    the ``KEY, VALUE`` overrides ``opts``."""
    cfg = get_cfg()
    add_anchorfree_config(cfg)
    base = os.path.splitext(os.path.basename(name))[0]
    cfg.merge_from_file(os.path.join(REPO, "configs", "zoo", "mmdet", base + ".yaml"))
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def _sig(x):
    return torch.sigmoid(x)


def _points(h: int, w: int, stride: int, offset: float) -> torch.Tensor:
    """[2, h, w] (x, y) pixels of one level's points."""
    ys = (torch.arange(h, dtype=torch.float32) + offset) * stride
    xs = (torch.arange(w, dtype=torch.float32) + offset) * stride
    return torch.stack([xs[None].expand(h, w), ys[:, None].expand(h, w)])


def _tood_boxes(ours: Dict[str, torch.Tensor], stride: int, offset: float) -> torch.Tensor:
    """Our TOOD "ltrb" [1, 4, h, w] as the reference's boxes in stride units (x0, y0, x1, y1)."""
    ltrb = ours["ltrb"]
    p = _points(*ltrb.shape[-2:], stride, offset)[None]
    return torch.cat([p - ltrb[:, :2], p + ltrb[:, 2:]], dim=1) / stride


# Per head, (reference output name, function(our per-level outputs, stride, offset) -> the same
# quantity). Anchor-based ATSS regresses deltas: its box is checked through the detections only.
HEAD_OUTPUTS: Dict[str, List[Tuple[str, Callable]]] = {
    "FCOSHead": [("cls_scores", lambda o, s, off: o["logits"]),
                 ("bbox_preds", lambda o, s, off: o["ltrb"]),
                 ("score_factors", lambda o, s, off: o["centerness"])],
    "ATSSHead": [("cls_scores", lambda o, s, off: o["logits"]),
                 ("score_factors", lambda o, s, off: o["centerness"])],
    "GFLHead": [("cls_scores", lambda o, s, off: o["logits"]),
                ("bbox_preds", lambda o, s, off: o["box_logits"])],
    "VFNetHead": [("cls_scores", lambda o, s, off: o["logits"]),
                  ("bbox_preds", lambda o, s, off: o["ltrb"])],
    "TOODHead": [("cls_scores", lambda o, s, off: torch.sqrt(_sig(o["logits"]) * _sig(o["prob"]))),
                 ("bbox_preds", _tood_boxes)],
}


def read_bgr(path: str) -> np.ndarray:
    """The image as the reference read it: cv2, BGR uint8 HWC."""
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(path)
    return img


def match_detections(ours, ref) -> Tuple[int, float, float]:
    """Match detections one to one (same class, every box coordinate within BOX_ATOL, score within
    SCORE_ATOL), greedily in the reference's order.

    Args:
        ours: (boxes [D, 4], scores [D], classes [D]); ref: the same for the reference.

    Returns:
        (number of reference detections without a match, worst box difference and worst score
        difference over the matched pairs).
    """
    boxes, scores, classes = ours
    ref_boxes, ref_scores, ref_classes = ref
    taken = torch.zeros(len(boxes), dtype=torch.bool)
    unmatched, worst_box, worst_score = 0, 0.0, 0.0
    for b, s, c in zip(ref_boxes, ref_scores, ref_classes):
        box_diff = (boxes - b).abs().max(dim=1).values if len(boxes) else boxes.new_zeros(0)
        score_diff = (scores - s).abs()
        ok = (~taken) & (classes == c) & (box_diff <= BOX_ATOL) & (score_diff <= SCORE_ATOL)
        idx = torch.nonzero(ok).flatten()
        if len(idx) == 0:
            unmatched += 1
            continue
        j = idx[box_diff[idx].argmin()]
        taken[j] = True
        worst_box, worst_score = max(worst_box, float(box_diff[j])), max(worst_score, float(score_diff[j]))
    return unmatched, worst_box, worst_score


def compare(dump_dir: str, edit_state: Optional[Callable[[dict], None]] = None,
            images: Optional[List[str]] = None, opts=()) -> Dict[str, object]:
    """Convert the dump's checkpoint, run our model, compare; returns the measured differences.

    Args:
        dump_dir: a ``dump_reference.py`` output folder.
        images: where the dump's images are now (matched by file name; a cached dump may have
            been made from files that are gone); default: the paths recorded in the dump.
        opts: overrides of our zoo config (``KEY, VALUE, ...``), e.g. to match the dump's
            ``--cfg-options``.
        edit_state: optional, called on the converted state dict before loading (negative
            controls: a perturbed tensor must be caught).

    Returns:
        dict with "features" (max abs difference over the FPN levels of all images), "head"
        ({reference output name: max abs difference}), per image "detections" (count ours,
        count reference, unmatched, worst box, worst score), and the conversion report.
    """
    ref = torch.load(os.path.join(dump_dir, "outputs.pt"), weights_only=False)
    cfg = zoo_config(ref["config"], opts)
    state, report = convert_checkpoint(os.path.join(dump_dir, "checkpoint.pth"), cfg)
    from detectron2.modeling import build_model

    model = build_model(cfg).eval()
    if edit_state is not None:
        edit_state(state)
    model.load_state_dict(state, strict=True)
    head_type = re.search(r"type='(\w+Head)'", ref["config_text"].split("bbox_head=", 1)[1]).group(1)
    result = {"report": report.summary(), "features": 0.0, "head": {}, "detections": []}
    offset = cfg.MODEL.SHIFT_GENERATOR.OFFSET
    by_name = {os.path.basename(p): p for p in images or []}
    with torch.no_grad():
        for image in ref["images"]:
            feats = model.backbone(image["batch_input"].float())
            ours_feats = [feats[f] for f in model.head_in_features]
            for a, b in zip(ours_feats, image["fpn_features"]):
                result["features"] = max(result["features"], float((a - b).abs().max()))
            # the head on the reference's own features isolates the head from the backbone
            per_level = model.head([f.float() for f in image["fpn_features"]])
            names = image["head_output_names"]
            for name, ours_fn in HEAD_OUTPUTS[head_type]:
                ref_levels = image["head_outputs"][names.index(name)]
                for level, ref_t in enumerate(ref_levels):
                    ours_t = ours_fn({k: v[level] for k, v in per_level.items()},
                                     model.head.strides[level], offset)
                    diff = float((ours_t - ref_t).abs().max())
                    result["head"][name] = max(result["head"].get(name, 0.0), diff)
            bgr = read_bgr(by_name.get(os.path.basename(image["path"]), image["path"]))
            h, w = bgr.shape[:2]
            arr = bgr if cfg.INPUT.FORMAT == "BGR" else bgr[:, :, ::-1]
            inp = torch.as_tensor(np.ascontiguousarray(arr.transpose(2, 0, 1)))
            inst = model([{"image": inp, "height": h, "width": w}])[0]["instances"]
            ours = (inst.pred_boxes.tensor, inst.scores, inst.pred_classes)
            det = image["detections"]
            ref_boxes = det["bboxes"].clone()
            ref_boxes[:, 0::2] = ref_boxes[:, 0::2].clamp(0, w)  # detectron2 clips the final boxes
            ref_boxes[:, 1::2] = ref_boxes[:, 1::2].clamp(0, h)
            # ... and drops those left empty (detector_postprocess): a reference box entirely
            # outside the image (TOOD's reference never clips) has no detectron2 counterpart.
            kept = (ref_boxes[:, 2] > ref_boxes[:, 0]) & (ref_boxes[:, 3] > ref_boxes[:, 1])
            result["outside"] = result.get("outside", 0) + int((~kept).sum())
            unmatched, worst_box, worst_score = match_detections(
                ours, (ref_boxes[kept], det["scores"][kept], det["labels"][kept]))
            result["detections"].append((len(inst), int(kept.sum()), unmatched, worst_box, worst_score))
    return result


if __name__ == "__main__":
    import sys

    for d in sys.argv[1:]:
        print(d, compare(d))

#!/usr/bin/env python
"""Count duplicate detections (same class, IoU > threshold) in COCO-format results files.

    python tools/count_duplicates.py --gt datasets/trees/val.json \
        output/fcos_nonms/inference/trees_val/coco_instances_results.json \
        output/defcn_tiny/inference/trees_val/coco_instances_results.json

Two selections per file, so that models with differently calibrated scores compare fairly:
  * ``top-GT``: per image the k highest-scoring detections, k = the image's number of GT boxes;
  * ``score>S``: detections scoring above ``--score`` (default 0.3).
A duplicate pair is two selected detections of one class with IoU > ``--iou`` (default 0.7).
Prints detections per image and duplicate pairs per image for each file.
"""
import argparse
import json
from collections import defaultdict

import torch
from torchvision.ops import box_iou


def xywh_to_xyxy(boxes):
    """[N, 4] (x, y, w, h) pixels -> [N, 4] (x0, y0, x1, y1)."""
    b = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    return torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)


def duplicate_pairs(dets, iou_thresh: float) -> int:
    """Same-class pairs with IoU > iou_thresh among ``dets`` (dicts with category_id, bbox)."""
    by_class = defaultdict(list)
    for d in dets:
        by_class[d["category_id"]].append(d["bbox"])
    pairs = 0
    for boxes in by_class.values():
        if len(boxes) > 1:
            xyxy = xywh_to_xyxy(boxes)
            pairs += int(torch.triu(box_iou(xyxy, xyxy) > iou_thresh, diagonal=1).sum())
    return pairs


def count(results, gt_counts, iou_thresh: float, score: float):
    """Returns {selection: (detections per image, duplicate pairs per image)}."""
    per_image = defaultdict(list)
    for r in results:
        per_image[r["image_id"]].append(r)
    out = {}
    for name in ("top-GT", f"score>{score}"):
        dets = pairs = 0
        for image_id, n_gt in gt_counts.items():
            ranked = sorted(per_image.get(image_id, []), key=lambda r: -r["score"])
            chosen = ranked[:n_gt] if name == "top-GT" else [r for r in ranked if r["score"] > score]
            dets += len(chosen)
            pairs += duplicate_pairs(chosen, iou_thresh)
        n = max(len(gt_counts), 1)
        out[name] = (dets / n, pairs / n)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", help="coco_instances_results.json files")
    p.add_argument("--gt", required=True, help="the COCO json the results were evaluated on")
    p.add_argument("--iou", type=float, default=0.7)
    p.add_argument("--score", type=float, default=0.3)
    args = p.parse_args(argv)
    gt = json.load(open(args.gt))
    gt_counts = {im["id"]: 0 for im in gt["images"]}
    for a in gt["annotations"]:
        gt_counts[a["image_id"]] += 1
    print(f"| results | selection | dets/img | duplicate pairs/img (IoU > {args.iou}) |")
    print("|---|---|---|---|")
    for path in args.results:
        for name, (dets, pairs) in count(json.load(open(path)), gt_counts, args.iou, args.score).items():
            print(f"| {path} | {name} | {dets:.1f} | {pairs:.2f} |")


if __name__ == "__main__":
    main()

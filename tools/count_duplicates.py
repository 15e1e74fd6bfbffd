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

Then what the ``top-GT`` detections are (:func:`error_kinds`), in score order per image: a
detection is ``true`` when an unmatched GT box of its class overlaps it at IoU >= ``--match-iou``
(default 0.5, COCO AP50's rule; that GT is then matched), a ``duplicate`` when only GT boxes
already matched by higher-scored detections do, ``mislocated`` when its best IoU with a GT box
of its class is in [0.1, ``--match-iou``), else ``background``. Duplicates that overlap each
other at IoU 0.5-0.7, or score below 0.3, are missed by the pair count but not here.
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


ERROR_KINDS = ("true", "duplicate", "mislocated", "background")


def error_kinds(dets, gts, match_iou: float = 0.5, near_iou: float = 0.1):
    """Sort one image's detections into :data:`ERROR_KINDS` by greedy matching in score order.

    Args:
        dets: detections (dicts with ``bbox`` [x, y, w, h] pixels, ``score``, ``category_id``),
            any order; all are classified.
        gts: GT annotations (dicts with ``bbox``, ``category_id``; ``iscrowd`` ones are skipped).
        match_iou: IoU at which a detection matches a GT box, in (0, 1].
        near_iou: IoU below which a detection is ``background``, in [0, match_iou).

    Returns:
        {kind: count} over :data:`ERROR_KINDS`, the counts summing to ``len(dets)``.

    Raises:
        ValueError: ``match_iou`` or ``near_iou`` out of range (naming the value).
    """
    if not 0 < match_iou <= 1 or not 0 <= near_iou < match_iou:
        raise ValueError(f"need 0 <= near_iou < match_iou <= 1, got near_iou {near_iou} and match_iou {match_iou}")
    counts = dict.fromkeys(ERROR_KINDS, 0)
    gts = [g for g in gts if not g.get("iscrowd", 0)]
    matched = [False] * len(gts)
    for d in sorted(dets, key=lambda r: -r["score"]):
        same = [i for i, g in enumerate(gts) if g["category_id"] == d["category_id"]]
        if not same:
            counts["background"] += 1
            continue
        ious = box_iou(xywh_to_xyxy([d["bbox"]]), xywh_to_xyxy([gts[i]["bbox"] for i in same]))[0].tolist()
        free = [(iou, i) for iou, i in zip(ious, same) if not matched[i] and iou >= match_iou]
        if free:
            matched[max(free)[1]] = True
            counts["true"] += 1
        elif max(ious) >= match_iou:
            counts["duplicate"] += 1
        elif max(ious) >= near_iou:
            counts["mislocated"] += 1
        else:
            counts["background"] += 1
    return counts


def kinds_of_top_gt(results, gt, match_iou: float = 0.5):
    """:func:`error_kinds` of each image's top-k detections (k = its number of GT boxes), summed
    over the images of ``gt`` (a COCO dict). Returns {kind: count}."""
    dets_by_image, gts_by_image = defaultdict(list), defaultdict(list)
    for r in results:
        dets_by_image[r["image_id"]].append(r)
    for a in gt["annotations"]:
        gts_by_image[a["image_id"]].append(a)
    total = dict.fromkeys(ERROR_KINDS, 0)
    for im in gt["images"]:
        gts = gts_by_image[im["id"]]
        ranked = sorted(dets_by_image[im["id"]], key=lambda r: -r["score"])[:len(gts)]
        for kind, n in error_kinds(ranked, gts, match_iou).items():
            total[kind] += n
    return total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("results", nargs="+", help="coco_instances_results.json files")
    p.add_argument("--gt", required=True, help="the COCO json the results were evaluated on")
    p.add_argument("--iou", type=float, default=0.7)
    p.add_argument("--score", type=float, default=0.3)
    p.add_argument("--match-iou", type=float, default=0.5, help="IoU of a true detection in the kinds table")
    args = p.parse_args(argv)
    gt = json.load(open(args.gt))
    gt_counts = {im["id"]: 0 for im in gt["images"]}
    for a in gt["annotations"]:
        gt_counts[a["image_id"]] += 1
    print(f"| results | selection | dets/img | duplicate pairs/img (IoU > {args.iou}) |")
    print("|---|---|---|---|")
    results = {path: json.load(open(path)) for path in args.results}
    for path, dets_of_file in results.items():
        for name, (dets, pairs) in count(dets_of_file, gt_counts, args.iou, args.score).items():
            print(f"| {path} | {name} | {dets:.1f} | {pairs:.2f} |")
    print(f"\nThe top-GT detections of all images (true / duplicate: IoU >= {args.match_iou} with an unmatched / "
          "a matched GT box; mislocated: best IoU 0.1 to that; background: below 0.1):\n")
    print("| results | " + " | ".join(ERROR_KINDS) + " |")
    print("|---|" + "---|" * len(ERROR_KINDS))
    for path, dets_of_file in results.items():
        kinds = kinds_of_top_gt(dets_of_file, gt, args.match_iou)
        print(f"| {path} | " + " | ".join(str(kinds[k]) for k in ERROR_KINDS) + " |")


if __name__ == "__main__":
    main()

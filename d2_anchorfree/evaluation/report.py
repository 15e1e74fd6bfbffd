"""The evaluation report: where a detector fails and which score threshold to deploy it with.

From a COCO-style results list (detectron2's ``coco_instances_results.json`` or ``d2af predict``'s
``results.json``) and the COCO json of the ground truth, :func:`build_report` computes

* COCO AP, AP50, AP75 per class and over all classes;
* precision-recall curves per class at IoU 0.5 and averaged over IoU 0.50:0.95;
* precision, recall and F1 against the score threshold, per class and over all classes (all
  detections and ground truths pooled), and the threshold of the best F1;
* a confusion matrix with a background row (false positives) and column (missed objects);
* recall by object size (COCO's small / medium / large areas);

and :func:`write_report` writes them as ``report.json`` and PNG plots (matplotlib, drawn without
pyplot: no global backend is set).

Everything except the confusion matrix is read from pycocotools' ``COCOeval`` itself (evaluate +
accumulate with ``maxDets = [1, 10, max_dets]``, as ``AnchorFreeCOCOEvaluator``): the PR curves
are ``eval["precision"]`` [T, R, K, A, M] at area "all" and the last maxDets, so their 101-point
mean is COCO's AP / AP50 exactly; the precision / recall / F1 curves count the matches of
``evalImgs`` (``dtMatches``, ``dtScores``, ``gtIgnore``, ``dtIgnore``): a detection is a true
positive at threshold s when its score is >= s and COCOeval matched it to a ground truth that is
not ignored. COCOeval matches greedily by score, so thresholding its matches gives what matching
only the detections above the threshold would. The confusion matrix needs matches across classes,
which COCOeval does not make; :func:`confusion_matrix` applies the same greedy rule.

Units: AP and AR in percent (as detectron2's tables); precision, recall, F1 and score thresholds
in [0, 1]. A value that does not exist (a class without ground truth, precision with no detection
kept) is NaN here and ``null`` in ``report.json``.
"""
import contextlib
import copy
import io
import json
import logging
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "AREA_NAMES",
    "DEFAULT_MAX_DETS",
    "THRESHOLD_GRID",
    "best_f1",
    "build_report",
    "coco_stats",
    "confusion_matrix",
    "load_coco_json",
    "load_results",
    "plot_report",
    "precision_recall_f1",
    "run_cocoeval",
    "summary_lines",
    "threshold_matches",
    "write_report",
]

logger = logging.getLogger("d2_anchorfree")

#: COCO's maxDets default (the last value is what AP is computed at).
DEFAULT_MAX_DETS = 100
#: Score thresholds of the precision / recall / F1 curves: 0, 0.01, ..., 1.
THRESHOLD_GRID = np.linspace(0.0, 1.0, 101)
#: COCOeval's area ranges other than "all" (areaRngLbl[1:]): small < 32^2 <= medium < 96^2 <= large.
AREA_NAMES = ("small", "medium", "large")


def load_coco_json(path: str) -> dict:
    """The ground truth COCO json at ``path`` as a dict.

    Raises:
        FileNotFoundError: no such file. ValueError: not a COCO detection json (no ``images``,
            ``annotations`` or ``categories`` list), naming the file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"COCO json not found: {path}")
    with open(path) as f:
        data = json.load(f)
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise ValueError(f"{path} is not a COCO detection json: no {', '.join(missing)} list")
    return data


def _image_ids_by_name(gt: dict) -> Tuple[Dict[str, int], Dict[str, Optional[int]]]:
    exact = {im["file_name"]: im["id"] for im in gt["images"]}
    base: Dict[str, Optional[int]] = {}
    for name, image_id in exact.items():
        key = os.path.basename(name)
        base[key] = None if key in base else image_id  # None: ambiguous basename
    return exact, base


def load_results(results: Union[str, List[dict]], gt: dict, source: str = "results",
                 gt_source: str = "the COCO json") -> List[dict]:
    """Checked copies of COCO-style detection results against the ground truth ``gt``.

    Entries without ``image_id`` but with ``file_name`` (``d2af predict``'s results.json) get the
    id of the image of that ``file_name`` in ``gt`` (its path as in the json, else its basename
    when unique there).

    Args:
        results: a results json path, or the list itself: dicts with ``image_id`` (or
            ``file_name``), ``category_id``, ``bbox`` [x, y, w, h] pixels, ``score``.
        gt: the COCO ground truth dict (:func:`load_coco_json`).
        source, gt_source: names of both, for the messages.

    Returns:
        list[dict]: ``{"image_id", "category_id", "bbox", "score"}`` per detection (may be empty).

    Raises:
        FileNotFoundError: ``results`` is a path that does not exist.
        ValueError: not a list of detections; an entry without the keys above or with a bbox that
            is not 4 numbers (naming it); image ids, file names or category ids that ``gt`` does
            not have (naming a few and the counts).
    """
    if isinstance(results, str):
        if not os.path.isfile(results):
            raise FileNotFoundError(f"results json not found: {results}")
        source = results
        with open(results) as f:
            results = json.load(f)
    if not isinstance(results, list):
        raise ValueError(f"{source}: expected a list of detections (COCO results format), got {type(results).__name__}")
    exact, base = _image_ids_by_name(gt)
    out, unknown_names = [], []
    for i, r in enumerate(results):
        if not isinstance(r, dict):
            raise ValueError(f"{source}: entry {i} is {type(r).__name__}, expected a dict")
        missing = [k for k in ("category_id", "bbox", "score") if k not in r]
        if "image_id" not in r and "file_name" not in r:
            missing.insert(0, "image_id (or file_name)")
        if missing:
            raise ValueError(f"{source}: entry {i} has no {', '.join(missing)}: {r}")
        bbox = r["bbox"]
        if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise ValueError(f"{source}: entry {i} has bbox {bbox!r}, expected [x, y, w, h] (4 numbers)")
        image_id = r.get("image_id")
        if image_id is None:
            name = r["file_name"]
            image_id = exact.get(name, base.get(os.path.basename(name)))
            if image_id is None:
                unknown_names.append(name)
                continue
        out.append({"image_id": image_id, "category_id": r["category_id"], "bbox": [float(v) for v in bbox],
                    "score": float(r["score"])})
    if unknown_names:
        names = sorted(set(unknown_names))
        raise ValueError(f"{source}: {len(names)} file name(s) of the results are not images of {gt_source} "
                         f"(e.g. {names[:5]}); it has {len(exact)} images")
    _check_ids(out, {im["id"] for im in gt["images"]}, "image", source, gt_source)
    _check_ids(out, {c["id"] for c in gt["categories"]}, "category", source, gt_source)
    return out


def _check_ids(results: List[dict], known: set, what: str, source: str, gt_source: str) -> None:
    used = {r[f"{what}_id"] for r in results}
    unknown = sorted(used - known, key=str)
    if unknown:
        raise ValueError(f"{source}: {len(unknown)} of the {len(used)} {what} ids of the results are not in "
                         f"{gt_source} (e.g. {unknown[:5]}), which has {len(known)} {what} ids (e.g. "
                         f"{sorted(known, key=str)[:5]}): results of another dataset or split?")


def run_cocoeval(gt: dict, results: List[dict], max_dets: int = DEFAULT_MAX_DETS):
    """pycocotools' ``COCOeval`` (bbox) of ``results`` against ``gt``: evaluated and accumulated
    (its printing silenced), ``params.maxDets = [1, 10, max_dets]``.

    Args:
        gt: the COCO ground truth dict (not modified). results: checked by :func:`load_results`
            (not modified); may be empty (then every AP and recall is 0 for classes with ground truth).
        max_dets: detections per image and class that count (the last maxDets; >= 10).

    Returns:
        the ``COCOeval``: ``eval["precision"]`` [T, R, K, A, M], ``eval["recall"]`` [T, K, A, M],
        ``evalImgs`` (not summarized: :func:`coco_stats` reads the arrays at the last maxDets).

    Raises:
        ValueError: ``max_dets`` below 10.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if max_dets < 10:
        raise ValueError(f"max_dets must be >= 10 (maxDets [1, 10, max_dets]), got {max_dets}")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        if results:
            coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        else:  # loadRes cannot take an empty list
            coco_dt = COCO()
            coco_dt.dataset = {"images": copy.deepcopy(gt["images"]), "categories": copy.deepcopy(gt["categories"]),
                               "annotations": []}
            coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.params.maxDets = [1, 10, int(max_dets)]
        ev.evaluate()
        ev.accumulate()
    return ev


def coco_stats(ev) -> Dict[str, float]:
    """COCO's AP, AP50, AP75, APs, APm, APl and AR (percent; NaN where no class has ground truth)
    of an accumulated ``COCOeval``, all at the last maxDets, read from ``eval["precision"]`` /
    ``eval["recall"]`` as detectron2's ``COCOEvaluator`` does (pycocotools' ``summarize`` takes
    AP at maxDets 100 whatever the last maxDets is)."""
    precision, recall = ev.eval["precision"][..., -1], ev.eval["recall"][..., -1]  # [T, R, K, A], [T, K, A]
    iou_50, iou_75 = (int(np.argmin(np.abs(ev.params.iouThrs - t))) for t in (0.5, 0.75))
    stats = {"AP": precision[..., 0], "AP50": precision[iou_50, ..., 0], "AP75": precision[iou_75, ..., 0]}
    stats.update({f"AP{a[0]}": precision[..., i] for i, a in enumerate(AREA_NAMES, start=1)})
    stats["AR"] = recall[..., 0]
    return {key: 100 * _mean_valid(value) for key, value in stats.items()}


def threshold_matches(ev, class_index: Optional[int] = None, area_index: int = 0,
                      iou_index: int = 0) -> Tuple[np.ndarray, np.ndarray, int]:
    """The detections COCOeval counted for one class (or all), sorted by score, with whether each
    is a true positive, and the number of ground truths that count.

    Args:
        ev: an evaluated ``COCOeval`` (:func:`run_cocoeval`).
        class_index: index k into ``ev.params.catIds`` (sorted category ids); None: all classes pooled.
        area_index: index into ``ev.params.areaRng`` (0 "all", 1 small, 2 medium, 3 large).
        iou_index: index into ``ev.params.iouThrs`` (0: IoU 0.5).

    Returns:
        (scores [D] descending, true_positive [D] bool, num_gt): detections ignored by COCOeval
        (matched to a crowd or out-of-area ground truth, or unmatched and out of the area range)
        are left out, as in COCOeval's accumulate; ``num_gt`` counts the ground truths not ignored.
    """
    num_images, num_areas = len(ev.params.imgIds), len(ev.params.areaRng)
    classes = range(len(ev.params.catIds)) if class_index is None else [class_index]
    scores, positive, num_gt = [], [], 0
    for k in classes:
        start = (k * num_areas + area_index) * num_images
        for e in ev.evalImgs[start:start + num_images]:
            if e is None:  # neither ground truth nor detections of this class in this image
                continue
            shape = (len(ev.params.iouThrs), len(e["dtScores"]))  # [T, D], also when D is 0
            ignored = np.asarray(e["dtIgnore"], dtype=bool).reshape(shape)[iou_index]
            matched = np.asarray(e["dtMatches"]).reshape(shape)[iou_index] > 0
            scores.append(np.asarray(e["dtScores"], dtype=np.float64)[~ignored])
            positive.append(matched[~ignored])
            num_gt += int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
    if not scores:
        return np.zeros(0), np.zeros(0, dtype=bool), num_gt
    scores, positive = np.concatenate(scores), np.concatenate(positive)
    order = np.argsort(-scores, kind="mergesort")  # COCOeval's sort
    return scores[order], positive[order], num_gt


def precision_recall_f1(scores: np.ndarray, positive: np.ndarray, num_gt: int,
                        thresholds: Sequence[float] = THRESHOLD_GRID) -> Dict[str, np.ndarray]:
    """Precision, recall and F1 of the detections with score >= each threshold.

    Args:
        scores: [D] descending. positive: [D] bool, true positives. num_gt: ground truths.
        thresholds: [N] score thresholds.

    Returns:
        dict of [N] float arrays ``precision`` = TP / kept (NaN when nothing is kept), ``recall`` =
        TP / num_gt (NaN when num_gt is 0), ``f1`` = 2 TP / (kept + num_gt) (the harmonic mean of
        both; 0 when both are 0 or undefined), and ``tp``, ``fp``, ``fn`` counts.
    """
    thresholds = np.asarray(thresholds, dtype=np.float64)
    kept = np.searchsorted(-np.asarray(scores, dtype=np.float64), -thresholds, side="right")
    tp = np.concatenate([[0], np.cumsum(positive)])[kept].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(kept > 0, tp / np.maximum(kept, 1), np.nan)
        recall = np.full(len(thresholds), np.nan) if num_gt == 0 else tp / num_gt
        denominator = kept + num_gt
        f1 = np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": kept - tp, "fn": num_gt - tp}


def best_f1(scores: np.ndarray, positive: np.ndarray, num_gt: int) -> dict:
    """The score threshold of the best F1: among the detections' own scores (F1 only changes
    there), the one whose kept set (score >= it) has the largest F1; the highest such on ties.

    Returns:
        dict: ``score_threshold`` (None when no threshold gives F1 > 0: no detection or no true
        positive), ``f1``, ``precision``, ``recall`` (NaN when undefined), ``tp``, ``fp``, ``fn`` (ints).
    """
    none = {"score_threshold": None, "f1": 0.0, "precision": math.nan,
            "recall": math.nan if num_gt == 0 else 0.0, "tp": 0, "fp": 0, "fn": int(num_gt)}
    if len(scores) == 0 or not np.any(positive):
        return none
    candidates = np.unique(scores)[::-1]
    curve = precision_recall_f1(scores, positive, num_gt, candidates)
    i = int(np.argmax(curve["f1"]))
    return {"score_threshold": float(candidates[i]), "f1": float(curve["f1"][i]),
            "precision": float(curve["precision"][i]), "recall": float(curve["recall"][i]),
            "tp": int(curve["tp"][i]), "fp": int(curve["fp"][i]), "fn": int(curve["fn"][i])}


def confusion_matrix(gt: dict, results: List[dict], cat_ids: Sequence[int], iou: float = 0.5,
                     score_threshold: float = 0.0, max_dets: int = DEFAULT_MAX_DETS) -> np.ndarray:
    """Ground-truth class against predicted class, with a background row and column.

    Per image, the detections with score >= ``score_threshold`` (at most ``max_dets`` per class,
    the highest scoring, as COCOeval) are taken in descending score order: each first takes the
    unmatched ground truth of its own class with the highest IoU >= ``iou`` (a correct detection,
    on the diagonal; one that only overlaps a crowd region of its class that much is left out, as
    COCOeval ignores it); the rest then take the unmatched ground truth of any other class with the
    highest IoU >= ``iou`` (a class confusion). Detections left are false positives (background
    row), ground truths left are missed (background column). Crowd ground truths are never counted.
    At ``iou`` 0.5 the diagonal sum equals the true positives that :func:`threshold_matches` counts
    at the same threshold (area "all").

    Args:
        gt: the COCO ground truth dict. results: checked by :func:`load_results`.
        cat_ids: the category ids of rows / columns 0..K-1 (sorted ids, as COCOeval's catIds).
        iou: IoU a match needs, in (0, 1]. score_threshold: detections below it are dropped.
        max_dets: detections per image and class that count.

    Returns:
        np.ndarray int64 [K + 1, K + 1]: ``m[g, p]`` = ground truths of class g detected as p;
        row K = false positives by predicted class; column K = missed ground truths by class.

    Raises:
        ValueError: ``iou`` outside (0, 1].
    """
    from pycocotools import mask as mask_utils

    if not 0 < iou <= 1:
        raise ValueError(f"the confusion matrix IoU must be in (0, 1], got {iou}")
    index = {c: i for i, c in enumerate(cat_ids)}
    k = len(cat_ids)
    matrix = np.zeros((k + 1, k + 1), dtype=np.int64)
    gts: Dict[int, list] = {}
    for a in gt["annotations"]:
        if a["category_id"] in index:
            gts.setdefault(a["image_id"], []).append(a)
    dets: Dict[Tuple[int, int], list] = {}
    for r in results:
        if r["score"] >= score_threshold and r["category_id"] in index:
            dets.setdefault((r["image_id"], r["category_id"]), []).append(r)
    per_image: Dict[int, list] = {}
    for (image_id, _), ds in dets.items():
        ds = sorted(ds, key=lambda r: -r["score"])[:max_dets]
        per_image.setdefault(image_id, []).extend(ds)
    for image_id in set(gts) | set(per_image):
        g, d = gts.get(image_id, []), sorted(per_image.get(image_id, []), key=lambda r: -r["score"])
        g_cls = np.array([index[a["category_id"]] for a in g], dtype=np.int64)
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in g], dtype=bool)
        d_cls = np.array([index[r["category_id"]] for r in d], dtype=np.int64)
        ious = (np.asarray(mask_utils.iou([r["bbox"] for r in d], [a["bbox"] for a in g], crowd.astype(np.uint8)))
                .reshape(len(d), len(g)) if d and g else np.zeros((len(d), len(g))))
        taken = crowd.copy()  # crowd regions are never matched as objects
        pending = []
        for j in range(len(d)):  # own class first, in score order
            same = (g_cls == d_cls[j]) & ~taken & (ious[j] >= iou)
            if same.any():
                m = int(np.argmax(np.where(same, ious[j], -1)))
                taken[m] = True
                matrix[g_cls[m], d_cls[j]] += 1
            elif not (crowd & (g_cls == d_cls[j]) & (ious[j] >= iou)).any():
                pending.append(j)
        for j in pending:  # then any other class
            other = ~taken & (ious[j] >= iou)
            if other.any():
                m = int(np.argmax(np.where(other, ious[j], -1)))
                taken[m] = True
                matrix[g_cls[m], d_cls[j]] += 1
            else:
                matrix[k, d_cls[j]] += 1
        for m in np.flatnonzero(~taken):
            matrix[g_cls[m], k] += 1
    return matrix


def _mean_valid(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[x > -1]
    return float(x.mean()) if x.size else math.nan


def _curve(precision_tr: np.ndarray) -> np.ndarray:
    """[T, R] precision of one class (-1: no ground truth) -> [R] mean over IoUs (NaN if none)."""
    valid = precision_tr > -1
    with np.errstate(invalid="ignore"):
        return np.where(valid.any(0), np.where(valid, precision_tr, 0).sum(0) / np.maximum(valid.sum(0), 1), np.nan)


def _threshold_block(scores, positive, num_gt) -> dict:
    curves = precision_recall_f1(scores, positive, num_gt)
    return {"num_gt": int(num_gt), "num_detections": int(len(scores)), "best_f1": best_f1(scores, positive, num_gt),
            "precision": curves["precision"], "recall": curves["recall"], "f1": curves["f1"]}


def build_report(gt: dict, results: List[dict], max_dets: int = DEFAULT_MAX_DETS, iou: float = 0.5,
                 score_threshold: Optional[float] = None, sources: Optional[dict] = None) -> dict:
    """Everything the report shows, as a JSON-ready dict (numbers, lists, None for NaN).

    Args:
        gt: the COCO ground truth dict. results: checked detections (:func:`load_results`).
        max_dets: the last COCOeval maxDets (``TEST.COCO_MAX_DETS_PER_IMAGE``; COCO: 100).
        iou: IoU of the confusion matrix, in (0, 1].
        score_threshold: score threshold of the confusion matrix and of the recall by size "at the
            threshold"; None: the best-F1 threshold over all classes (0 when there is none).
        sources: paths or names to record (e.g. ``{"results": ..., "coco_json": ...}``).

    Returns:
        dict with ``coco`` (AP, AP50, AP75, APs, APm, APl, AR in percent), ``classes`` (per class:
        id, name, num_gt, num_detections, AP, AP50, AP75, best_f1, recall_by_size), ``best_f1``
        (all classes pooled: score_threshold, f1, precision, recall, tp, fp, fn), ``curves``
        (``recall`` points [101] with per-class and "all" precision at IoU 0.5 and 0.50:0.95; the
        ``score_thresholds`` [101] with precision / recall / F1 per class and "all"),
        ``confusion_matrix`` (labels, iou, score_threshold, matrix rows = ground truth, columns =
        prediction, the last of each = background), ``recall_by_size``.

    Raises:
        ValueError: ``max_dets`` below 10 or ``iou`` outside (0, 1].
    """
    if not 0 < iou <= 1:
        raise ValueError(f"the confusion matrix IoU must be in (0, 1], got {iou}")
    ev = run_cocoeval(gt, results, max_dets)
    names = {c["id"]: c["name"] for c in gt["categories"]}
    cat_ids = list(ev.params.catIds)
    precision = ev.eval["precision"][:, :, :, 0, -1]  # [T, R, K] at area "all", last maxDets
    iou_50, iou_75 = (int(np.argmin(np.abs(ev.params.iouThrs - t))) for t in (0.5, 0.75))
    overall = _threshold_block(*threshold_matches(ev))
    threshold = score_threshold if score_threshold is not None else (overall["best_f1"]["score_threshold"] or 0.0)

    classes, curves = [], {"recall": ev.params.recThrs, "precision_iou50": {}, "precision_iou50_95": {},
                           "score_thresholds": THRESHOLD_GRID, "precision": {}, "recall_at_threshold": {}, "f1": {}}
    per_class_curves_50, per_class_curves_all = [], []
    for k, cat in enumerate(cat_ids):
        block = _threshold_block(*threshold_matches(ev, k))
        name = names[cat]
        curve_50, curve_all = _curve(precision[iou_50:iou_50 + 1, :, k]), _curve(precision[:, :, k])
        per_class_curves_50.append(curve_50)
        per_class_curves_all.append(curve_all)
        curves["precision_iou50"][name], curves["precision_iou50_95"][name] = curve_50, curve_all
        curves["precision"][name], curves["recall_at_threshold"][name] = block["precision"], block["recall"]
        curves["f1"][name] = block["f1"]
        classes.append({"id": cat, "name": name, "num_gt": block["num_gt"], "num_detections": block["num_detections"],
                        "AP": 100 * _mean_valid(precision[:, :, k]), "AP50": 100 * _mean_valid(precision[iou_50, :, k]),
                        "AP75": 100 * _mean_valid(precision[iou_75, :, k]), "best_f1": block["best_f1"],
                        "recall_by_size": _recall_by_size(ev, k, threshold)})
    with np.errstate(invalid="ignore"), _no_mean_of_empty_warning():
        curves["precision_iou50"]["all"] = np.nanmean(np.array(per_class_curves_50), 0) if cat_ids else np.zeros(0)
        curves["precision_iou50_95"]["all"] = np.nanmean(np.array(per_class_curves_all), 0) if cat_ids else np.zeros(0)
    curves["precision"]["all"], curves["recall_at_threshold"]["all"] = overall["precision"], overall["recall"]
    curves["f1"]["all"] = overall["f1"]
    labels = [names[c] for c in cat_ids] + ["background"]
    matrix = confusion_matrix(gt, results, cat_ids, iou, threshold, max_dets)
    report = {
        "sources": dict(sources or {}),
        "max_dets": int(max_dets),
        "num_images": len(gt["images"]),
        "num_detections": len(results),
        "units": "AP and AR in percent; precision, recall, F1 and score thresholds in [0, 1]; null: undefined",
        "coco": coco_stats(ev),
        "best_f1": {**overall["best_f1"], "iou": float(ev.params.iouThrs[0]), "num_gt": overall["num_gt"],
                    "num_detections": overall["num_detections"]},
        "classes": classes,
        "curves": curves,
        "confusion_matrix": {"labels": labels, "iou": float(iou), "score_threshold": float(threshold),
                             "rows": "ground truth (last: background = false positives)",
                             "columns": "prediction (last: background = missed ground truth)",
                             "matrix": matrix},
        "recall_by_size": _recall_by_size(ev, None, threshold),
    }
    return _jsonable(report)


@contextlib.contextmanager
def _no_mean_of_empty_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
        yield


def _recall_by_size(ev, class_index: Optional[int], threshold: float) -> dict:
    """Per COCO area: ground truths, recall at IoU 0.5 with every detection and at ``threshold``,
    and COCO's AR (percent, IoU 0.50:0.95, last maxDets; mean over classes when ``class_index`` is None)."""
    out = {}
    recall = ev.eval["recall"][:, :, :, -1]  # [T, K, A]
    for a, name in enumerate(AREA_NAMES, start=1):
        lo, hi = ev.params.areaRng[a]
        scores, positive, num_gt = threshold_matches(ev, class_index, area_index=a)
        at = precision_recall_f1(scores, positive, num_gt, [threshold])["recall"][0]
        ar = recall[:, :, a] if class_index is None else recall[:, class_index, a]
        out[name] = {"area_range": [float(lo), float(hi)], "num_gt": int(num_gt),
                     "recall_iou50": float(positive.sum() / num_gt) if num_gt else math.nan,
                     "recall_iou50_at_threshold": float(at), "AR": 100 * _mean_valid(ar)}
    return out


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return None if not math.isfinite(float(x)) else float(x)
    return x


def _nan(values) -> np.ndarray:
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


def plot_report(report: dict, out_dir: str, max_legend: int = 15) -> List[str]:
    """Draw the report's PNGs into ``out_dir`` (matplotlib ``Figure`` + Agg canvas: no pyplot
    state): ``summary.png`` (all classes: PR at IoU 0.5 and 0.50:0.95; precision, recall and F1
    against the score threshold, best F1 marked), ``pr_curves.png`` and ``f1_curves.png`` (per
    class), ``confusion_matrix.png``, ``recall_by_size.png``.

    Args:
        report: :func:`build_report`'s dict. out_dir: created if missing.
        max_legend: classes named in legends at most (more: lines without legend).

    Returns:
        list[str]: the written paths.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    os.makedirs(out_dir, exist_ok=True)
    curves, classes = report["curves"], report["classes"]
    rec, thr = np.array(curves["recall"]), np.array(curves["score_thresholds"])
    best = report["best_f1"]
    written = []

    def save(fig, name):
        FigureCanvasAgg(fig)
        path = os.path.join(out_dir, name)
        fig.savefig(path, dpi=80)
        written.append(path)

    def pr_axis(ax, key, title, per_class):
        if per_class:
            for c in classes:
                ap = c["AP50"] if key == "precision_iou50" else c["AP"]
                label = f"{c['name']} ({_fmt(ap)})" if len(classes) <= max_legend else None
                ax.plot(rec, _nan(curves[key][c["name"]]), lw=1, alpha=0.8, label=label)
        ap = report["coco"]["AP50" if key == "precision_iou50" else "AP"]
        ax.plot(rec, _nan(curves[key]["all"]), color="black", lw=2, label=f"all classes ({_fmt(ap)})")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision", title=title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=7)

    def threshold_axis(ax):
        for key, color in (("precision", "tab:blue"), ("recall_at_threshold", "tab:orange"), ("f1", "black")):
            ax.plot(thr, _nan(curves[key]["all"]), color=color, lw=2 if key == "f1" else 1.2,
                    label={"recall_at_threshold": "recall"}.get(key, key))
        if best["score_threshold"] is not None:
            ax.axvline(best["score_threshold"], color="tab:red", ls="--", lw=1)
            ax.plot([best["score_threshold"]], [best["f1"]], "o", color="tab:red",
                    label=f"best F1 {best['f1']:.3f} at score {best['score_threshold']:.3f}")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="score threshold", title="all classes, IoU 0.5")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower left", fontsize=7)

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_pr, ax_f1 = fig.subplots(1, 2)
    ax_pr.plot(rec, _nan(curves["precision_iou50"]["all"]), color="black", lw=2,
               label=f"IoU 0.5 (AP50 {_fmt(report['coco']['AP50'])})")
    ax_pr.plot(rec, _nan(curves["precision_iou50_95"]["all"]), color="tab:gray", lw=2,
               label=f"IoU 0.50:0.95 (AP {_fmt(report['coco']['AP'])})")
    ax_pr.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
              title=f"precision-recall, mean of {len(classes)} class(es)")
    ax_pr.grid(alpha=0.3)
    ax_pr.legend(loc="lower left", fontsize=8)
    threshold_axis(ax_f1)
    save(fig, "summary.png")

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax50, ax_all = fig.subplots(1, 2)
    pr_axis(ax50, "precision_iou50", "precision-recall at IoU 0.5 (AP50)", True)
    pr_axis(ax_all, "precision_iou50_95", "precision-recall, mean over IoU 0.50:0.95 (AP)", True)
    save(fig, "pr_curves.png")

    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_all, ax_cls = fig.subplots(1, 2)
    threshold_axis(ax_all)
    for c in classes:
        b = c["best_f1"]
        label = (f"{c['name']} ({b['f1']:.2f} at {b['score_threshold']:.2f})" if b["score_threshold"] is not None
                 else f"{c['name']} (no true positive)") if len(classes) <= max_legend else None
        line, = ax_cls.plot(thr, _nan(curves["f1"][c["name"]]), lw=1, label=label)
        if b["score_threshold"] is not None:
            ax_cls.plot([b["score_threshold"]], [b["f1"]], "o", ms=3, color=line.get_color())
    ax_cls.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="score threshold", ylabel="F1", title="F1 per class, IoU 0.5")
    ax_cls.grid(alpha=0.3)
    if len(classes) <= max_legend:
        ax_cls.legend(loc="lower left", fontsize=7)
    save(fig, "f1_curves.png")

    cm = report["confusion_matrix"]
    matrix, labels = np.array(cm["matrix"]), cm["labels"]
    side = min(3 + 0.45 * len(labels), 20)
    fig = Figure(figsize=(side + 1, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set(xlabel="prediction", ylabel="ground truth",
           title=f"confusion at IoU {cm['iou']:g}, score >= {cm['score_threshold']:.3f}")
    if len(labels) <= 30:
        for (i, j), v in np.ndenumerate(matrix):
            if v:
                ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                        color="white" if v > matrix.max() / 2 else "black")
    save(fig, "confusion_matrix.png")

    sizes = report["recall_by_size"]
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(AREA_NAMES))
    bars = (("recall_iou50", 1, "IoU 0.5, all detections"),
            ("recall_iou50_at_threshold", 1, f"IoU 0.5, score >= {cm['score_threshold']:.3f}"),
            ("AR", 0.01, "AR (IoU 0.50:0.95)"))
    for i, (key, scale, label) in enumerate(bars):
        values = [(sizes[a][key] or 0.0) * scale for a in AREA_NAMES]
        ax.bar(x + (i - 1) * 0.27, values, 0.27, label=label)
    ax.set_xticks(x, [f"{a}\n({sizes[a]['num_gt']} objects)" for a in AREA_NAMES])
    ax.set(ylim=(0, 1.02), ylabel="recall", title="recall by object size (COCO areas)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
    save(fig, "recall_by_size.png")
    return written


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def write_report(report: dict, out_dir: str, plots: bool = True) -> List[str]:
    """Write ``<out_dir>/report.json`` and, with ``plots``, the PNGs of :func:`plot_report`.

    Returns:
        list[str]: the written paths, report.json first.
    """
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "report.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=1, allow_nan=False)
    return [path] + (plot_report(report, out_dir) if plots else [])


def summary_lines(report: dict) -> List[str]:
    """A plain-text summary of a report: the per-class table and the best-F1 threshold."""
    width = max([5] + [len(c["name"]) for c in report["classes"]])
    lines = [f"{'class':{width}s}  {'GT':>6s}  {'AP':>5s}  {'AP50':>5s}  {'AP75':>5s}  {'best F1':>7s}  {'at score':>8s}"]
    rows = report["classes"] + [{"name": "all", "num_gt": report["best_f1"]["num_gt"], **{
        k: report["coco"][k] for k in ("AP", "AP50", "AP75")}, "best_f1": report["best_f1"]}]
    for c in rows:
        b = c["best_f1"]
        at = "-" if b["score_threshold"] is None else f"{b['score_threshold']:.3f}"
        lines.append(f"{c['name']:{width}s}  {c['num_gt']:6d}  {_fmt(c['AP']):>5s}  {_fmt(c['AP50']):>5s}  "
                     f"{_fmt(c['AP75']):>5s}  {b['f1']:7.3f}  {at:>8s}")
    return lines

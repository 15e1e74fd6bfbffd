"""The evaluation report (d2_anchorfree/evaluation/report.py, d2af report): hand-computed precision,
recall, F1, best-F1 threshold, confusion matrix and recall by size on tiny cases; the PR curves'
101-point mean against pycocotools' own AP / AP50; bad inputs."""
import contextlib
import io
import json
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from d2_anchorfree.evaluation.report import (best_f1, build_report, confusion_matrix, load_results,
                                             precision_recall_f1, run_cocoeval, threshold_matches, write_report)


def coco(boxes_by_image, categories=((1, "a"),), size=100):
    """A COCO dict: ``boxes_by_image`` {image_id: [(category_id, [x, y, w, h]), ...]}."""
    images = [{"id": i, "file_name": f"dir/img{i}.png", "height": size, "width": size} for i in boxes_by_image]
    annotations = [{"id": n, "image_id": i, "category_id": c, "bbox": list(b), "area": float(b[2] * b[3]), "iscrowd": 0}
                   for n, (i, c, b) in enumerate(((i, c, b) for i, bs in boxes_by_image.items() for c, b in bs), 1)]
    return {"images": images, "annotations": annotations,
            "categories": [{"id": c, "name": n} for c, n in categories]}


def det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(bbox), "score": score}


# 3 ground truths of 10 x 10 px (COCO "small"); 4 detections: TP 0.9, FP 0.8 (nothing there),
# TP 0.7, FP 0.6 (a duplicate of the first object); the third object is missed.
GT3 = coco({1: [(1, [0, 0, 10, 10]), (1, [20, 0, 10, 10]), (1, [40, 0, 10, 10])]})
DT4 = [det(1, 1, [0, 0, 10, 10], 0.9), det(1, 1, [60, 0, 10, 10], 0.8), det(1, 1, [20, 0, 10, 10], 0.7),
       det(1, 1, [1, 0, 10, 10], 0.6)]


def pycocotools_stats(gt, results, max_dets=(1, 10, 100)):
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = json.loads(json.dumps(gt))
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(json.loads(json.dumps(results))), "bbox")
        ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_precision_recall_f1_by_hand():
    ev = run_cocoeval(GT3, load_results(DT4, GT3))
    scores, positive, num_gt = threshold_matches(ev)
    assert scores.tolist() == [0.9, 0.8, 0.7, 0.6] and positive.tolist() == [True, False, True, False]
    assert num_gt == 3
    curve = precision_recall_f1(scores, positive, num_gt, [0.95, 0.85, 0.75, 0.65, 0.5])
    np.testing.assert_allclose(curve["precision"], [np.nan, 1, 1 / 2, 2 / 3, 2 / 4])
    np.testing.assert_allclose(curve["recall"], [0, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    np.testing.assert_allclose(curve["f1"], [0, 2 / 4, 2 / 5, 4 / 6, 4 / 7])  # 2 TP / (kept + GT)
    best = best_f1(scores, positive, num_gt)
    assert best["score_threshold"] == 0.7 and best["f1"] == pytest.approx(2 / 3)
    assert (best["tp"], best["fp"], best["fn"]) == (2, 1, 1)


def test_pr_curve_mean_is_ap50_by_hand_and_as_pycocotools():
    report = build_report(GT3, load_results(DT4, GT3))
    # precision envelope 1 up to recall 1/3 (34 recall points 0..0.33), 2/3 up to 2/3 (33 points), then 0
    assert report["coco"]["AP50"] == pytest.approx(100 * 56 / 101)
    assert np.mean(report["curves"]["precision_iou50"]["all"]) * 100 == pytest.approx(report["coco"]["AP50"], abs=1e-12)
    stats = pycocotools_stats(GT3, DT4)
    assert report["coco"]["AP50"] == pytest.approx(100 * stats[1], abs=1e-12)
    assert report["coco"]["AP"] == pytest.approx(100 * stats[0], abs=1e-12)
    assert report["classes"][0]["AP50"] == pytest.approx(100 * 56 / 101)
    assert report["best_f1"]["score_threshold"] == 0.7 and report["classes"][0]["best_f1"]["score_threshold"] == 0.7


def _two_class_case(seed=0, images=6):
    """Random GT boxes of 2 classes and noisy detections (some of the wrong class, some spurious)."""
    rng = np.random.default_rng(seed)
    boxes, dets = {}, []
    for i in range(1, images + 1):
        boxes[i] = []
        for _ in range(rng.integers(2, 6)):
            c = int(rng.integers(1, 3))
            x, y, w, h = (float(v) for v in rng.uniform([0, 0, 8, 8], [60, 60, 40, 40]))
            boxes[i].append((c, [x, y, w, h]))
            if rng.random() < 0.85:
                jitter = rng.normal(0, 3, 4)
                wrong = rng.random() < 0.2
                dets.append(det(i, 3 - c if wrong else c, [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]],
                                float(rng.uniform(0.05, 1))))
        for _ in range(rng.integers(0, 4)):
            dets.append(det(i, int(rng.integers(1, 3)), list(rng.uniform([0, 0, 5, 5], [80, 80, 30, 30])),
                            float(rng.uniform(0.05, 0.9))))
    return coco(boxes, categories=((1, "a"), (2, "b"))), dets


@pytest.mark.parametrize("max_dets", [100, 3])
def test_curves_equal_cocoeval_stats_on_two_classes(max_dets):
    gt, dets = _two_class_case()
    report = build_report(gt, load_results(dets, gt), max_dets=max(max_dets, 10))
    stats = pycocotools_stats(gt, dets, (1, 10, max(max_dets, 10)))
    # stats[1]: AP50 at the last maxDets; the report's curve at IoU 0.5, averaged as COCO does
    assert np.mean(report["curves"]["precision_iou50"]["all"]) * 100 == pytest.approx(100 * stats[1], abs=1e-9)
    assert np.mean(report["curves"]["precision_iou50_95"]["all"]) * 100 == pytest.approx(report["coco"]["AP"], abs=1e-9)
    for c in report["classes"]:
        assert np.mean(report["curves"]["precision_iou50"][c["name"]]) * 100 == pytest.approx(c["AP50"], abs=1e-9)
    assert np.mean([c["AP50"] for c in report["classes"]]) == pytest.approx(100 * stats[1], abs=1e-9)


def test_confusion_matrix_by_hand():
    # class a: objects A1, A2; class b: B1. Detections: a on A1 (right), a on B1 (a confusion),
    # b on empty ground (false positive), b on A2 at score 0.2 (dropped at threshold 0.5: A2 missed).
    gt = coco({1: [(1, [0, 0, 10, 10]), (2, [20, 0, 10, 10]), (1, [40, 0, 10, 10])]}, categories=((1, "a"), (2, "b")))
    dets = [det(1, 1, [0, 0, 10, 10], 0.9), det(1, 1, [20, 0, 10, 10], 0.8), det(1, 2, [60, 0, 10, 10], 0.7),
            det(1, 2, [40, 1, 10, 10], 0.2)]
    rows = confusion_matrix(gt, dets, [1, 2], iou=0.5, score_threshold=0.5)
    #        pred a  pred b  missed
    assert rows.tolist() == [[1, 0, 1],   # GT a
                             [1, 0, 0],   # GT b
                             [0, 1, 0]]   # background (false positives)
    rows = confusion_matrix(gt, dets, [1, 2], iou=0.5, score_threshold=0.1)
    assert rows.tolist() == [[1, 1, 0], [1, 0, 0], [0, 1, 0]]  # A2 now taken as b
    # IoU of the detection on A2 is 90/110 = 0.818: at IoU 0.85 it no longer matches
    rows = confusion_matrix(gt, dets, [1, 2], iou=0.85, score_threshold=0.1)
    assert rows.tolist() == [[1, 0, 1], [1, 0, 0], [0, 2, 0]]


def test_confusion_matrix_prefers_the_own_class_over_a_better_overlap():
    # the detection of class a overlaps object b exactly (IoU 1) and object a at IoU 90/110: as in
    # COCOeval it is a correct detection of a, and b is missed
    gt = coco({1: [(1, [0, 0, 10, 10]), (2, [1, 0, 10, 10])]}, categories=((1, "a"), (2, "b")))
    rows = confusion_matrix(gt, [det(1, 1, [1, 0, 10, 10], 0.9)], [1, 2], iou=0.5)
    assert rows.tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0]]


def test_confusion_matrix_diagonal_is_cocoeval_true_positives():
    gt, dets = _two_class_case(seed=3)
    report = build_report(gt, load_results(dets, gt), score_threshold=0.4)
    matrix = np.array(report["confusion_matrix"]["matrix"])
    ev = run_cocoeval(gt, load_results(dets, gt))
    scores, positive, _ = threshold_matches(ev)
    assert np.trace(matrix) == int(positive[scores >= 0.4].sum()) > 0
    assert matrix.sum(1)[:-1].tolist() == [sum(a["category_id"] == c for a in gt["annotations"]) for c in (1, 2)]
    assert matrix[-1, -1] == 0


def test_recall_by_size_by_hand():
    # one small (10 x 10), one medium (40 x 40) and one large (100 x 100) object; the medium one is found
    # at score 0.3 only, the large one not at all
    gt = coco({1: [(1, [0, 0, 10, 10]), (1, [20, 20, 40, 40]), (1, [0, 100, 100, 100])]}, size=300)
    dets = [det(1, 1, [0, 0, 10, 10], 0.9), det(1, 1, [20, 20, 40, 40], 0.3)]
    sizes = build_report(gt, load_results(dets, gt), score_threshold=0.5)["recall_by_size"]
    assert [sizes[a]["num_gt"] for a in ("small", "medium", "large")] == [1, 1, 1]
    assert [sizes[a]["recall_iou50"] for a in ("small", "medium", "large")] == [1, 1, 0]
    assert [sizes[a]["recall_iou50_at_threshold"] for a in ("small", "medium", "large")] == [1, 0, 0]
    assert sizes["small"]["AR"] == pytest.approx(100.0) and sizes["large"]["AR"] == 0


def test_results_with_unknown_image_ids_are_refused_naming_them():
    dets = DT4 + [det(7, 1, [0, 0, 5, 5], 0.5), det(9, 1, [0, 0, 5, 5], 0.5)]
    with pytest.raises(ValueError, match=r"2 of the 3 image ids .* not in .*\[7, 9\].* 1 image ids"):
        load_results(dets, GT3)


def test_results_with_unknown_category_is_refused():
    with pytest.raises(ValueError, match=r"category ids .* not in .*\[5\]"):
        load_results(DT4 + [det(1, 5, [0, 0, 5, 5], 0.5)], GT3)


def test_predict_results_are_matched_by_file_name():
    named = [{**{k: v for k, v in d.items() if k != "image_id"}, "file_name": "img1.png"} for d in DT4]
    assert load_results(named, GT3) == load_results(DT4, GT3)  # the basename, unique in the json
    with pytest.raises(ValueError, match=r"1 file name\(s\) .* \['other.png'\]"):
        load_results(named + [{**named[0], "file_name": "other.png"}], GT3)


def test_empty_results_give_a_report_of_zeros(tmp_path):
    report = build_report(GT3, load_results([], GT3))
    assert report["coco"]["AP"] == 0 and report["coco"]["AP50"] == 0
    assert report["best_f1"]["score_threshold"] is None and report["best_f1"]["f1"] == 0
    assert report["confusion_matrix"]["matrix"] == [[0, 3], [0, 0]]  # all 3 missed
    written = write_report(report, str(tmp_path))
    assert json.load(open(written[0]))["num_detections"] == 0 and len(written) == 6


def test_report_json_and_plots_are_written(tmp_path):
    gt, dets = _two_class_case()
    written = write_report(build_report(gt, load_results(dets, gt)), str(tmp_path))
    names = sorted(p.rsplit("/", 1)[1] for p in written)
    assert names == ["confusion_matrix.png", "f1_curves.png", "pr_curves.png", "recall_by_size.png", "report.json",
                     "summary.png"]
    data = json.load(open(tmp_path / "report.json"))  # strict JSON: NaN written as null
    assert [c["name"] for c in data["classes"]] == ["a", "b"] and len(data["curves"]["score_thresholds"]) == 101
    assert all(open(p, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for p in written[1:])
    assert not math.isnan(data["best_f1"]["f1"])

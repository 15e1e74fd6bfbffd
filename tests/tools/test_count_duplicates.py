"""tools/count_duplicates.py: the duplicate-pair count and the kinds of the top-GT detections,
on hand-made boxes whose IoUs are worked out below."""
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = os.path.join(REPO, "tools", "count_duplicates.py")
_spec = importlib.util.spec_from_file_location("count_duplicates", SCRIPT)
count_duplicates = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(count_duplicates)

# Two crowns 10 x 10 px, far apart; one crown of another class.
GTS = [{"image_id": 1, "bbox": [0, 0, 10, 10], "category_id": 1},
       {"image_id": 1, "bbox": [100, 100, 10, 10], "category_id": 1},
       {"image_id": 1, "bbox": [200, 0, 10, 10], "category_id": 2}]


def det(x, y, score, w=10, h=10, category=1):
    return {"image_id": 1, "bbox": [x, y, w, h], "score": score, "category_id": category}


def test_error_kinds_by_hand():
    dets = [
        det(0, 0, 0.9),               # IoU 1 with crown 0: true
        det(2, 0, 0.8),               # 8x10 overlap / (100 + 100 - 80) = 0.667 with crown 0, matched: duplicate
        det(100, 105, 0.7),           # 10x5 / (200 - 50) = 0.333 with crown 1: mislocated
        det(300, 300, 0.6),           # nothing near: background
        det(200, 0, 0.5, category=1),  # on the class-2 crown, but class 1: background
        det(100, 100, 0.4),           # IoU 1 with crown 1, still unmatched: true
    ]
    kinds = count_duplicates.error_kinds(dets, GTS)
    assert kinds == {"true": 2, "duplicate": 1, "mislocated": 1, "background": 2}
    # Score order decides which of two equal boxes is the true one, not the list order.
    assert count_duplicates.error_kinds([det(2, 0, 0.8), det(0, 0, 0.9)], GTS[:1]) == \
        {"true": 1, "duplicate": 1, "mislocated": 0, "background": 0}
    # At match IoU 0.7 the 0.667 box is no longer a duplicate but mislocated.
    assert count_duplicates.error_kinds(dets[:2], GTS, match_iou=0.7)["mislocated"] == 1
    # A crowd GT box matches nothing.
    assert count_duplicates.error_kinds([det(0, 0, 0.9)], [dict(GTS[0], iscrowd=1)])["background"] == 1


def test_error_kinds_refuses_bad_thresholds():
    with pytest.raises(ValueError, match="match_iou 0"):
        count_duplicates.error_kinds([], GTS, match_iou=0)
    with pytest.raises(ValueError, match="near_iou 0.6"):
        count_duplicates.error_kinds([], GTS, match_iou=0.5, near_iou=0.6)


def test_command_prints_both_tables(tmp_path):
    gt = {"images": [{"id": 1, "width": 400, "height": 400}], "annotations": GTS,
          "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    # Top-3 (3 GT boxes): the true box, its duplicate at IoU 0.667 and the mislocated one.
    dets = [det(0, 0, 0.9), det(2, 0, 0.8), det(100, 105, 0.7), det(300, 300, 0.2)]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(dets))
    out = subprocess.run([sys.executable, SCRIPT, "--gt", str(tmp_path / "gt.json"), str(tmp_path / "res.json")],
                         capture_output=True, text=True, check=True).stdout
    assert "| top-GT | 3.0 | 0.00 |" in out  # IoU 0.667 is not a pair at the default 0.7
    assert out.rstrip().endswith("| 1 | 1 | 1 | 0 |")

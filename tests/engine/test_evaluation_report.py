"""The report of training / --eval-only runs (d2_anchorfree/engine/report.py): read from the
evaluator's results file and the dataset's json, scalars into the EventStorage, the threshold
beside the weights; TEST.REPORT checks."""
import json
import os

import pytest
from detectron2.data.datasets import register_coco_instances
from detectron2.utils.events import EventStorage

from conftest import load_cfg
from d2_anchorfree.engine.report import check_report_config, write_evaluation_reports

GT = {"images": [{"id": 1, "file_name": "a.png", "height": 100, "width": 100}],
      "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0}],
      "categories": [{"id": 1, "name": "tree"}]}
RESULTS = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10], "score": 0.7},
           {"image_id": 1, "category_id": 1, "bbox": [40, 0, 10, 10], "score": 0.9}]
CONFIG = "configs/FCOS/FCOS_tiny_R_18_cpu.yaml"


def test_reports_of_the_test_datasets_and_threshold_beside_weights(tmp_path, names):
    name, missing = names(), names()
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    register_coco_instances(name, {}, str(tmp_path / "gt.json"), str(tmp_path))
    register_coco_instances(missing, {}, str(tmp_path / "gt.json"), str(tmp_path))  # never evaluated
    os.makedirs(tmp_path / "out" / "inference" / name)
    (tmp_path / "out" / "inference" / name / "coco_instances_results.json").write_text(json.dumps(RESULTS))
    (tmp_path / "model_final.pth").write_bytes(b"w")
    cfg = load_cfg(CONFIG, "OUTPUT_DIR", str(tmp_path / "out"), "DATASETS.TEST", f"('{name}', '{missing}')")
    with EventStorage(0) as storage:
        written = write_evaluation_reports(cfg, str(tmp_path / "model_final.pth"), storage)
        scalars = {k: v for k, (v, _) in storage.latest().items()}
    assert written == {name: str(tmp_path / "out" / "report" / name)}
    report = json.load(open(tmp_path / "out" / "report" / name / "report.json"))
    assert report["max_dets"] == cfg.TEST.COCO_MAX_DETS_PER_IMAGE and report["sources"]["dataset"] == name
    # F1 at 0.9: 0 (a false positive); at 0.7: 2 * 1 / (2 + 1)
    assert scalars[f"report/{name}/best_f1"] == pytest.approx(2 / 3)
    assert scalars[f"report/{name}/best_f1_score_threshold"] == 0.7
    assert json.load(open(tmp_path / "model_final.best_f1.json"))["dataset"] == name


def test_disabled_report_writes_nothing(tmp_path):
    cfg = load_cfg(CONFIG, "OUTPUT_DIR", str(tmp_path), "TEST.REPORT.ENABLED", "False")
    assert write_evaluation_reports(cfg, "") == {} and not os.listdir(tmp_path)


@pytest.mark.parametrize("value", ["0.0", "1.5"])  # a string: yacs refuses it (type mismatch)
def test_bad_confusion_iou_is_refused_naming_the_key(value):
    with pytest.raises(ValueError, match="TEST.REPORT.CONFUSION_IOU"):
        check_report_config(load_cfg(CONFIG, "TEST.REPORT.CONFUSION_IOU", value))

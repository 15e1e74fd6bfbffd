"""d2af report: files written, the threshold saved beside the weights, errors as 'error:' lines."""
import json

from d2_anchorfree.cli.main import main

GT = {"images": [{"id": 1, "file_name": "a.png", "height": 100, "width": 100}],
      "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 0},
                      {"id": 2, "image_id": 1, "category_id": 3, "bbox": [50, 50, 20, 20], "area": 400, "iscrowd": 0}],
      "categories": [{"id": 3, "name": "tree"}]}
RESULTS = [{"image_id": 1, "category_id": 3, "bbox": [0, 0, 10, 10], "score": 0.8},
           {"image_id": 1, "category_id": 3, "bbox": [30, 30, 10, 10], "score": 0.6},
           {"image_id": 1, "category_id": 3, "bbox": [50, 50, 20, 20], "score": 0.4}]


def _files(tmp_path, results):
    (tmp_path / "gt.json").write_text(json.dumps(GT))
    (tmp_path / "res.json").write_text(json.dumps(results))
    (tmp_path / "model.pth").write_bytes(b"w")
    return ["--results", str(tmp_path / "res.json"), "--coco-json", str(tmp_path / "gt.json")]


def test_report_command_writes_report_and_saves_threshold(tmp_path, capsys):
    args = _files(tmp_path, RESULTS)
    assert main(["report", *args, "--out", str(tmp_path / "out"), "--weights", str(tmp_path / "model.pth")]) == 0
    report = json.load(open(tmp_path / "out" / "report.json"))
    # F1 at 0.8: 2*1/(1+2) = 0.667; at 0.6: 2/(2+2) = 0.5; at 0.4: 4/(3+2) = 0.8
    assert report["best_f1"]["score_threshold"] == 0.4 and abs(report["best_f1"]["f1"] - 0.8) < 1e-12
    assert (tmp_path / "out" / "summary.png").exists()
    assert json.load(open(tmp_path / "model.best_f1.json"))["score_threshold"] == 0.4
    out = capsys.readouterr().out
    assert "tree" in out and "0.400" in out


def test_report_command_reports_bad_ids_as_an_error(tmp_path, capsys):
    args = _files(tmp_path, RESULTS + [{"image_id": 5, "category_id": 3, "bbox": [0, 0, 1, 1], "score": 0.1}])
    assert main(["report", *args, "--out", str(tmp_path / "out"), "--no-plots"]) == 1
    assert "error:" in capsys.readouterr().err and not (tmp_path / "out").exists()

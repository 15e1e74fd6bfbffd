"""benchmarks/yolo_reference.py (YOLO11n side by side with our detectors).

The fast tests need no Ultralytics: the COCO -> YOLO label conversion against hand-computed numbers,
the letterbox geometry, the mapping of predictions back to COCO results, the argument checks and
a dry run on the bundled data, and ``--latency-only`` on stand-in ONNX files of YOLO11n's shapes.
The end-to-end test trains YOLO11n for one epoch (a quarter of the
train images) in the private Ultralytics environment (tools/setup_yolo_env.sh; Ultralytics is
AGPL-3.0 and runs only there, in a subprocess), times its ONNX files beside a d2af export of the
tiny FCOS and checks the report's fields; it is skipped without that environment, unless
``D2AF_REQUIRE_YOLO=1``, when it fails.
"""
import json
import os
import sys

import numpy as np
import pytest

from benchmarks import yolo_reference as yr
from conftest import REPO, trees_dir


def test_yolo_box_hand_computed():
    # 200 x 100 image: [10, 20, 40, 30] -> centre (30, 35), size 40 x 30
    assert yr.yolo_box([10, 20, 40, 30], 200, 100) == pytest.approx((0.15, 0.35, 0.2, 0.3))
    # overflowing the bottom-right corner: clipped to [180, 90, 200, 100]
    assert yr.yolo_box([180, 90, 40, 20], 200, 100) == pytest.approx((0.95, 0.95, 0.1, 0.1))
    # starting left of / above the image: clipped to [0, 0, 30, 10]
    assert yr.yolo_box([-10, -5, 40, 15], 200, 100) == pytest.approx((0.075, 0.05, 0.15, 0.1))
    assert yr.yolo_box([250, 10, 10, 10], 200, 100) is None  # outside
    assert yr.yolo_box([20, 10, 0, 10], 200, 100) is None  # empty


def test_convert_split_writes_labels_and_links(tmp_path):
    root = tmp_path / "src"
    (root / "sub").mkdir(parents=True)
    for name in ("a.png", "sub/b.jpg"):
        (root / name).write_bytes(b"image")
    coco = {
        "images": [{"id": 5, "file_name": "a.png", "width": 200, "height": 100},
                   {"id": 9, "file_name": "sub/b.jpg", "width": 50, "height": 80}],
        "categories": [{"id": 7, "name": "shrub"}, {"id": 3, "name": "tree"}],  # sorted ids: 3 -> 0, 7 -> 1
        "annotations": [
            {"id": 1, "image_id": 5, "category_id": 3, "bbox": [10, 20, 40, 30], "iscrowd": 0},
            {"id": 2, "image_id": 5, "category_id": 7, "bbox": [180, 90, 40, 20], "iscrowd": 0},
            {"id": 3, "image_id": 5, "category_id": 3, "bbox": [0, 0, 50, 50], "iscrowd": 1},  # crowd: left out
            {"id": 4, "image_id": 5, "category_id": 3, "bbox": [250, 10, 10, 10], "iscrowd": 0},  # outside
        ],
    }
    counts = yr.convert_split(coco, str(root), str(tmp_path / "yolo"), "val")
    assert counts == {"images": 2, "boxes": 2, "skipped": 2}
    label = (tmp_path / "yolo" / "labels" / "val" / "a.txt").read_text()
    assert label == "0 0.150000 0.350000 0.200000 0.300000\n1 0.950000 0.950000 0.100000 0.100000\n"
    assert (tmp_path / "yolo" / "labels" / "val" / "sub" / "b.txt").read_text() == ""  # no boxes: empty file
    link = tmp_path / "yolo" / "images" / "val" / "sub" / "b.jpg"
    assert link.is_symlink() and os.readlink(link) == str(root / "sub" / "b.jpg")
    # idempotent: a second conversion replaces the links and labels
    assert yr.convert_split(coco, str(root), str(tmp_path / "yolo"), "val") == counts


def test_letterbox_and_back():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, :, 2] = 255  # red in BGR
    x, r, pad = yr.letterbox(image, 416)
    assert x.shape == (1, 3, 416, 416) and x.dtype == np.float32
    assert r == pytest.approx(2.08) and pad == (0, 104)
    assert x[0, :, 0, 0] == pytest.approx([114 / 255] * 3)  # grey padding above
    assert x[0, :, 208, 208] == pytest.approx([1, 0, 0])  # RGB order inside
    boxes = np.array([[20.8, 104 + 20.8, 62.4, 104 + 41.6]], np.float32)
    assert yr.unletterbox(boxes, r, pad, (100, 200)) == pytest.approx(np.array([[10, 10, 30, 20]]), abs=1e-4)


def test_coco_results_ids_and_boxes(tmp_path):
    preds = [{"file": str(tmp_path / "images" / "val" / "b.png"), "boxes": [[10, 20, 40, 60]], "scores": [0.5],
              "classes": [1]}]
    out = yr.coco_results(preds, {"a.png": 1, "b.png": 2}, [3, 7], [str(tmp_path / "images" / "val")])
    assert out == [{"image_id": 2, "category_id": 7, "bbox": [10, 20, 30, 40], "score": 0.5}]
    with pytest.raises(KeyError, match="not an image of the val json"):
        yr.coco_results(preds, {"a.png": 1}, [3, 7], [str(tmp_path)])


def test_ground_truth_as_predictions_scores_100():
    """The whole mapping (file -> image id, class -> category id, xyxy -> xywh) and the
    evaluation: the val boxes given back as predictions of the worker's format score AP 100."""
    with open(os.path.join(trees_dir(), "val.json")) as f:
        gt = json.load(f)
    root = os.path.join(trees_dir(), "images")
    names = {im["id"]: im["file_name"] for im in gt["images"]}
    preds = {}
    for a in gt["annotations"]:
        p = preds.setdefault(a["image_id"], {"file": os.path.join(root, names[a["image_id"]]), "boxes": [],
                                             "scores": [], "classes": []})
        x, y, w, h = a["bbox"]
        p["boxes"].append([x, y, x + w, y + h])
        p["scores"].append(0.9)
        p["classes"].append(0)
    results = yr.coco_results(list(preds.values()), {im["file_name"]: im["id"] for im in gt["images"]}, [1], [root])
    stats = yr.evaluate(gt, results)
    assert len(results) == len(gt["annotations"])
    assert stats["AP"] == pytest.approx(100) and stats["AP50"] == pytest.approx(100)


def test_spread_and_ours_arguments(tmp_path):
    assert yr.spread([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(2 ** 0.5), "min": 1.0, "max": 3.0, "n": 2}
    assert yr.spread([2.0, float("nan")])["std"] == 0.0 and yr.spread([])["n"] == 0
    f = tmp_path / "m.onnx"
    f.write_bytes(b"")
    assert yr.parse_ours([f"gfl={f}"]) == {"gfl": str(f)}
    for bad, match in ((["gfl"], "NAME=PATH"), ([f"a={f}", f"a={f}"], "twice"), (["a=/no/such.onnx"], "no such file")):
        with pytest.raises(ValueError, match=match):
            yr.parse_ours(bad)
    with pytest.raises(FileNotFoundError, match="tools/setup_yolo_env.sh"):
        yr.yolo_python(str(tmp_path / "no-venv"))


def test_dry_run_converts_the_trees_and_prints_the_worker_command(tmp_path, capsys):
    assert yr.main(["--trees", trees_dir(), "--workdir", str(tmp_path), "--dry-run", "--seeds", "0,3",
                    "--venv", str(tmp_path / "venv")]) == 0
    printed = capsys.readouterr().out
    assert "train 62 images, 1227 boxes, val 12 images, 273 boxes" in printed
    assert "--seed 3" in printed and "--epochs 84" in printed and "YOLO_OFFLINE=1" in printed
    data = json.loads((tmp_path / "data" / "data.yaml").read_text())  # JSON, which YAML reads
    assert data["names"] == ["tree"] and data["train"] == "images/train"
    assert len((tmp_path / "val_images.txt").read_text().split()) == 12


def _stand_in_yolo_run(run_dir, boxes: int):
    """worker.json and two ONNX files with YOLO11n's interfaces (1x3xSxS float in; the forward
    graph [1, 5, points] out, the NMS graph [1, 300, 6] with ``boxes`` rows of score > 0)."""
    import torch

    class Forward(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x[:, :1], 8).flatten(2).repeat(1, 5, 1)

    class WithNms(torch.nn.Module):
        def forward(self, x):
            det = torch.zeros(1, 300, 6) + x.mean() * 0
            det[:, :boxes, 2:4] = 10.0
            det[:, :boxes, 4] = 0.5
            return det

    run_dir.mkdir(parents=True)
    onnx = {}
    for kind, module in (("forward", Forward()), ("nms", WithNms())):
        path = str(run_dir / f"yolo11n_{kind}.onnx")
        torch.onnx.export(module, torch.zeros(1, 3, 416, 416), path, input_names=["images"], opset_version=13,
                          dynamo=False)
        onnx[kind] = {"path": path}
    (run_dir / "worker.json").write_text(json.dumps({"onnx": onnx}))


def test_latency_only_times_an_earlier_run_without_training(tmp_path, capsys):
    # a venv that does not exist: any training attempt would raise FileNotFoundError
    common = ["--trees", trees_dir(), "--workdir", str(tmp_path), "--venv", str(tmp_path / "no-venv"),
              "--latency-only", "--seeds", "5", "--runs", "2", "--warmup", "1"]
    with pytest.raises(FileNotFoundError, match="seed5/worker.json"):
        yr.main(common + ["--out", ""])
    _stand_in_yolo_run(tmp_path / "seed5", boxes=7)
    out = tmp_path / "latency.json"
    assert yr.main(common + ["--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert "seeds" not in report and report["yolo_run"].endswith(os.path.join("seed5", "worker.json"))
    assert not (tmp_path / "data").exists()  # no YOLO layout written: nothing is trained
    rows = {r["model"]: r for r in report["latency"]["rows"]}
    assert set(rows) == {"yolo11n forward", "yolo11n end to end"}
    assert rows["yolo11n end to end"]["detections"] == 7 and rows["yolo11n forward"]["detections"] is None
    assert all(r["ms"]["n"] == 2 and r["ms"]["min"] > 0 for r in rows.values())
    assert report["latency"]["yolo_seed"] == 5 and "yolo11n end to end" in capsys.readouterr().out
    os.remove(tmp_path / "seed5" / "yolo11n_nms.onnx")
    with pytest.raises(FileNotFoundError, match="nms ONNX file .*yolo11n_nms.onnx"):
        yr.main(common + ["--out", ""])
    with pytest.raises(SystemExit):
        yr.parse_args(common + ["--dry-run"])


@pytest.fixture(scope="module")
def yolo_venv():
    venv = yr.venv_dir()
    if not os.path.isfile(os.path.join(venv, "bin", "python")):
        message = f"no Ultralytics environment at {venv}: run `bash tools/setup_yolo_env.sh`"
        if os.environ.get("D2AF_REQUIRE_YOLO") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return venv


@pytest.mark.slow
@pytest.mark.yolo_ref
def test_one_epoch_end_to_end(yolo_venv, tmp_path, capsys):
    from d2_anchorfree.cli.export import main as export_main

    ours = tmp_path / "fcos"
    assert export_main(["--config-file", os.path.join(REPO, "configs/FCOS/FCOS_tiny_R_18_cpu.yaml"), "--format", "onnx",
                        "--output", str(ours), "--allow-untrained", "MODEL.DEVICE", "cpu"]) in (0, None)
    out = tmp_path / "report.json"
    code = yr.main(["--trees", trees_dir(), "--workdir", str(tmp_path / "work"), "--venv", yolo_venv,
                    "--epochs", "1", "--fraction", "0.25", "--seeds", "0", "--runs", "2", "--warmup", "1",
                    "--ours", f"fcos-tiny={ours / 'model.onnx'}", "--out", str(out)])
    assert code == 0  # no network attempt
    report = json.loads(out.read_text())
    seed = report["seeds"]["0"]
    assert set(yr.STATS) <= set(seed["coco"]) and 0 <= seed["coco"]["AP50"] <= 100
    assert seed["network_attempts"] == [] and seed["online"] is False and seed["settings_sync"] is False
    train = seed["train"]
    assert train["epochs_done"] == 1 and train["train_seconds"] >= train["epochs_train_seconds"] > 0
    assert train["torch_threads"] == [2] and train["optimizer"]["accumulate"] == 1
    assert train["optimizer"]["name"] and train["optimizer"]["initial_lr"] > 0
    assert train["optimizer"]["train_images"] == 16 and train["optimizer"]["batches_per_epoch"] == 4  # 62 / 4
    assert report["image_views"] == 16 and report["optimizer_steps"] == 4
    assert seed["detections"] > 0 and set(seed["onnx"]) == {"forward", "nms"}
    assert report["summary"]["AP"]["n"] == 1 and report["summary"]["train_seconds"]["n"] == 1
    assert report["versions"]["ultralytics_env"]["ultralytics"] == "8.4.190"
    rows = {r["model"]: r for r in report["latency"]["rows"]}
    assert set(rows) == {"yolo11n forward", "yolo11n end to end", "fcos-tiny"}
    for r in rows.values():
        assert "error" not in r, r
        assert r["ms"]["n"] == 2 and r["ms"]["median"] > 0
    assert rows["yolo11n forward"]["detections"] is None and rows["fcos-tiny"]["detections"] >= 0
    assert report["latency"]["threads"] == 2 and len(report["latency"]["loadavg_start"]) == 3
    assert "--epochs 1" in report["command"] and "AGPL" in report["license"]
    printed = capsys.readouterr().out
    assert "| yolo11n end to end |" in printed and "network attempts by Ultralytics (refused): 0" in printed
    assert "ultralytics" not in sys.modules  # measured through the subprocess only

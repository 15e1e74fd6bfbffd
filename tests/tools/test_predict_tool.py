"""d2af predict (tools/predict.py): unreadable images are skipped, listed and make the exit
code 1 while results.json is written for the others; output names keep the input's relative path
so that same-named files in different folders (or a.png and a.tif) do not collide; images are
read by the training reader."""
import json
import os
import subprocess
import sys
import uuid

import cv2
import numpy as np
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

import d2_anchorfree.data.image_io as image_io
from d2_anchorfree.cli import predict

from conftest import REPO, load_cfg

CONFIG = os.path.join(REPO, "configs", "FCOS", "FCOS_tiny_R_18_cpu.yaml")
# No dataset; small test images; an untrained model detects nothing above the default threshold.
OPTS = ["DATASETS.REGISTER_COCO", "()", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
        "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96", "MODEL.DENSE.SCORE_THRESH_TEST", "0.0",
        "TEST.DETECTIONS_PER_IMAGE", "5", "MODEL.DEVICE", "cpu"]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A randomly initialised tiny FCOS saved with DetectionCheckpointer."""
    out = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    model = build_model(load_cfg(os.path.relpath(CONFIG, REPO), *OPTS))
    DetectionCheckpointer(model, save_dir=str(out)).save("tiny")
    return str(out / "tiny.pth")


def opts(weights, *extra):
    return [*OPTS, "MODEL.WEIGHTS", weights, *extra]


def write_image(path, seed, ext_size=(48, 64)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(*ext_size, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)
    return str(path)


def detections(weights, path):
    """What the predictor finds on one image alone, as predict.py writes it (file_name aside)."""
    cfg = load_cfg(os.path.relpath(CONFIG, REPO), *opts(weights))
    inst = DefaultPredictor(cfg)(image_io.read_image(path))["instances"]
    return [([round(v, 3) for v in (b[0], b[1], b[2] - b[0], b[3] - b[1])], round(s, 5))
            for b, s in zip(inst.pred_boxes.tensor.tolist(), inst.scores.tolist())]


def by_name(results):
    out = {}
    for r in results:
        out.setdefault(r["file_name"], []).append(([round(v, 3) for v in r["bbox"]], round(r["score"], 5)))
    return out


def test_predict_uses_the_training_reader():
    assert predict.read_image is image_io.read_image


def test_bad_images_are_skipped_listed_and_exit_1(weights, tmp_path, capsys):
    src = tmp_path / "in"
    good = [write_image(src / "good1.png", 1), write_image(src / "good2.jpg", 2)]
    (src / "garbage.png").write_bytes(b"this is not an image")
    raw = open(good[1], "rb").read()
    (src / "cut.jpg").write_bytes(raw[: len(raw) // 2])  # truncated JPEG: cv2 read it grey
    cv2.imwrite(str(src / "deep.png"), np.random.default_rng(0).integers(0, 4096, (48, 64), dtype=np.uint16))
    out = tmp_path / "out"
    rc = predict.main(["--config-file", CONFIG, "--input", str(src), "--output", str(out), "--min-score", "0",
                       *opts(weights)])
    assert rc == 1
    err = capsys.readouterr().err
    listing = err[err.index("skipped 3 unreadable image(s):"):]
    for bad in ("garbage.png", "cut.jpg", "deep.png"):
        assert f"  {src / bad}: cannot read image {src / bad}" in listing
    assert "good1" not in listing and "good2" not in listing
    assert "PIL mode 'I;16'" in listing and "truncated" in listing
    results = json.load(open(out / "results.json"))
    assert sorted(by_name(results)) == ["good1.png", "good2.jpg"]  # every good image has detections
    assert sorted(os.listdir(out)) == ["good1.png.jpg", "good2.jpg.jpg", "results.json"]
    assert by_name(results)["good1.png"] == detections(weights, good[0])


@pytest.mark.slow  # tools/predict.py as a process
def test_script_exit_code(weights, tmp_path):
    """Run as a script, a skipped image makes the exit code 1 (main() returning 0 is the
    in-process case of the other tests)."""
    src = tmp_path / "in"
    write_image(src / "ok.png", 1)
    (src / "broken.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(REPO, "tools", "predict.py"), "--config-file", CONFIG,
           "--input", str(src), "--output", str(out), *opts(weights)]
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    bad = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert bad.returncode == 1, bad.stderr[-2000:]
    assert f"{src / 'broken.png'}: cannot read image" in bad.stderr
    assert {r["file_name"] for r in json.load(open(out / "results.json"))} == {"ok.png"}


def test_same_names_in_different_folders_and_extensions_do_not_collide(weights, tmp_path):
    src = tmp_path / "imgs"
    paths = {"a/x.png": write_image(src / "a" / "x.png", 1), "b/x.png": write_image(src / "b" / "x.png", 2)}
    out = tmp_path / "glob_out"
    rc = predict.main(["--config-file", CONFIG, "--input", str(src / "*" / "x.png"), "--output", str(out),
                       *opts(weights)])
    assert rc == 0
    assert os.path.isfile(out / "a" / "x.png.jpg") and os.path.isfile(out / "b" / "x.png.jpg")
    got = by_name(json.load(open(out / "results.json")))
    assert sorted(got) == ["a/x.png", "b/x.png"]
    for name, path in paths.items():  # each file's results are its own, not mixed
        assert got[name] == detections(weights, path), name
    assert got["a/x.png"] != got["b/x.png"]

    flat = tmp_path / "flat"
    png, tif = write_image(flat / "a.png", 3), write_image(flat / "a.tif", 4)
    out = tmp_path / "flat_out"
    assert predict.main(["--config-file", CONFIG, "--input", str(flat), "--output", str(out), *opts(weights)]) == 0
    assert sorted(os.listdir(out)) == ["a.png.jpg", "a.tif.jpg", "results.json"]
    got = by_name(json.load(open(out / "results.json")))
    assert got["a.png"] == detections(weights, png) and got["a.tif"] == detections(weights, tif)


def test_dataset_input_names_are_relative_to_its_image_root(weights, tmp_path):
    root = tmp_path / "images"
    write_image(root / "s1" / "x.png", 1)
    write_image(root / "s2" / "x.png", 2)
    data = {"images": [{"id": 1, "file_name": "s1/x.png", "width": 64, "height": 48},
                       {"id": 2, "file_name": "s2/x.png", "width": 64, "height": 48}],
            "annotations": [], "categories": [{"id": 1, "name": "thing"}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    name = f"d2af_predict_{uuid.uuid4().hex[:8]}"
    out = tmp_path / "out"
    try:
        rc = predict.main(["--config-file", CONFIG, "--input", name, "--output", str(out), *opts(weights),
                           "DATASETS.REGISTER_COCO", f"('{name},{tmp_path / 'ann.json'},{root}',)",
                           "DATASETS.TEST", f"('{name}',)"])
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert rc == 0
    assert sorted(by_name(json.load(open(out / "results.json")))) == ["s1/x.png", "s2/x.png"]
    assert os.path.isfile(out / "s1" / "x.png.jpg") and os.path.isfile(out / "s2" / "x.png.jpg")


def test_relative_names_and_input_root(tmp_path):
    a, b = str(tmp_path / "r" / "a" / "x.png"), str(tmp_path / "r" / "b" / "x.png")
    assert predict.relative_names([a, b], str(tmp_path / "r")) == ["a/x.png", "b/x.png"]
    assert predict.input_root(str(tmp_path / "r" / "*" / "x.png"), [a, b]) == str(tmp_path / "r")
    assert predict.input_root(a, [a]) == str(tmp_path / "r" / "a")
    with pytest.raises(ValueError, match="would both be written as 'x.png'"):
        predict.relative_names([a, a.replace(os.sep + "a" + os.sep, os.sep + "a" + os.sep + "." + os.sep)],
                               str(tmp_path / "r" / "a"))

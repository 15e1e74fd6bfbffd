"""No code runs from a weight file, and weights that do not fit the model are an error.

Each malicious file would create a marker file when unpickled; every loading path must refuse it
before the payload runs (the marker never appears)."""
import collections
import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model

from d2_anchorfree.checkpoint import (
    AnchorFreeCheckpointer,
    UnsafeWeightFileError,
    WeightsMismatchError,
    load_checkpoint_file,
    load_inference_weights,
)

from conftest import REPO, load_cfg

TINY = "configs/FCOS/FCOS_tiny_R_18_cpu.yaml"


class Payload:
    """Unpickling this calls ``open(marker, "w")``: stands for any code an attacker would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write_malicious(path, marker):
    data = {"model": {"stem.conv1.weight": np.zeros((64, 3, 7, 7), np.float32)}, "__author__": "x",
            "evil": Payload(str(marker))}
    if str(path).endswith(".pkl"):
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=2)
    else:
        torch.save(data, path)


@pytest.mark.parametrize("ext", [".pkl", ".pth"])
def test_malicious_file_refused_by_detectron2_checkpointer_and_predictor(tmp_path, ext):
    marker = tmp_path / "pwned"
    weights = tmp_path / ("evil" + ext)
    write_malicious(weights, marker)
    cfg = load_cfg(TINY)
    with pytest.raises(UnsafeWeightFileError, match="refusing to load weight file"):
        DetectionCheckpointer(build_model(cfg)).load(str(weights))  # detectron2's own class
    cfg.MODEL.WEIGHTS = str(weights)
    with pytest.raises(UnsafeWeightFileError):
        DefaultPredictor(cfg)
    assert not marker.exists()


@pytest.mark.slow  # train_net.py processes
def test_malicious_pkl_refused_by_train_net_eval_only(tmp_path):
    marker = tmp_path / "pwned"
    weights = tmp_path / "evil.pkl"
    write_malicious(weights, marker)
    r = subprocess.run([sys.executable, os.path.join(REPO, "train_net.py"), "--eval-only", "--config-file",
                        os.path.join(REPO, TINY), "MODEL.WEIGHTS", str(weights), "DATASETS.TEST", "()",
                        "DATASETS.REGISTER_COCO", "()", "DATASETS.TRAIN", "()", "OUTPUT_DIR", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode != 0 and "refusing to load weight file" in r.stderr
    assert re.search(r"'(io|__builtin__|builtins)\.open'", r.stderr)  # names what the file asked for
    assert not marker.exists()


def test_legitimate_pickles_load(tmp_path):
    """detectron2 model-zoo layout (numpy arrays, numpy scalars, bytes) with pickle protocols 2
    (Python 2 era files) and 4, and a Caffe2 blob dict in an OrderedDict."""
    arrays = {"stem.conv1.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "res2.0.conv1.norm.bias": np.ones(3)}
    for protocol in (2, 4):
        path = tmp_path / f"zoo{protocol}.pkl"
        with open(path, "wb") as f:
            pickle.dump({"model": arrays, "__author__": "test", "step": np.int64(7), "tag": b"\x00\xff"}, f,
                        protocol=protocol)
        data = load_checkpoint_file(str(path))
        assert data["__author__"] == "test" and data["step"] == 7 and data["tag"] == b"\x00\xff"
        for k, v in arrays.items():
            np.testing.assert_array_equal(data["model"][k], v)
    blobs = tmp_path / "c2.pkl"
    with open(blobs, "wb") as f:
        pickle.dump({"blobs": collections.OrderedDict(conv1_w=np.ones(2), conv1_w_momentum=np.ones(2))}, f, protocol=2)
    data = load_checkpoint_file(str(blobs))
    assert list(data["model"]) == ["conv1_w"] and data["matching_heuristics"]


def test_codecs_other_than_latin1_refused(tmp_path):
    # protocol-2 bytes go through _codecs.encode(text, "latin1"); any other codec name is refused
    stream = b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R."
    path = tmp_path / "codec.pkl"
    path.write_bytes(stream)
    with pytest.raises(UnsafeWeightFileError, match="rot13"):
        load_checkpoint_file(str(path))


def _saved_model(cfg, tmp_path, name, seed=0):
    torch.manual_seed(seed)
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save(name)
    return model, str(tmp_path / f"{name}.pth")


def test_weights_that_match_nothing_are_an_error(tmp_path):
    cfg = load_cfg(TINY)
    stranger = tmp_path / "stranger.pth"
    torch.save({"model": {"some.other.net.weight": torch.zeros(3)}}, stranger)
    with pytest.raises(WeightsMismatchError, match=r"set only 0\.0% .*backbone"):
        load_inference_weights(build_model(cfg), str(stranger))
    with pytest.raises(WeightsMismatchError):  # also for training's initial weights (>= 50%)
        AnchorFreeCheckpointer(build_model(cfg), min_loaded_fraction=0.5).load(str(stranger))


def test_backbone_only_weights_train_but_do_not_evaluate(tmp_path):
    cfg = load_cfg(TINY)
    model, _ = _saved_model(cfg, tmp_path, "full")
    backbone = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.bottom_up.")}
    path = tmp_path / "backbone.pth"
    torch.save({"model": backbone}, path)
    fresh = build_model(cfg)
    AnchorFreeCheckpointer(fresh, min_loaded_fraction=0.5).load(str(path))  # ImageNet-style init: fine
    assert torch.equal(fresh.backbone.bottom_up.stem.conv1.weight, model.backbone.bottom_up.stem.conv1.weight)
    with pytest.raises(WeightsMismatchError, match=r"backbone\.fpn.*every model tensor must come from the file"):
        load_inference_weights(build_model(cfg), str(path))


def test_eval_without_weights_is_an_error_unless_allowed(tmp_path):
    cfg = load_cfg(TINY)
    with pytest.raises(ValueError, match="MODEL.WEIGHTS is empty.*--allow-untrained"):
        load_inference_weights(build_model(cfg), "")
    load_inference_weights(build_model(cfg), "", allow_untrained=True)
    model, path = _saved_model(cfg, tmp_path, "good", seed=3)
    loaded = build_model(cfg)
    load_inference_weights(loaded, path)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.slow  # train_net.py processes
def test_train_net_eval_only_refuses_missing_or_unfit_weights(tmp_path):
    base = [sys.executable, os.path.join(REPO, "train_net.py"), "--eval-only", "--config-file",
            os.path.join(REPO, TINY)]
    common = ["DATASETS.TEST", "()", "DATASETS.REGISTER_COCO", "()", "DATASETS.TRAIN", "()", "OUTPUT_DIR", str(tmp_path)]
    r = subprocess.run(base + ["MODEL.WEIGHTS", ""] + common, cwd=REPO, capture_output=True, text=True)
    assert r.returncode != 0 and "MODEL.WEIGHTS is empty" in r.stderr
    ok = subprocess.run(base[:3] + ["--allow-untrained"] + base[3:] + ["MODEL.WEIGHTS", ""] + common,
                        cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]


def test_resume_falls_back_to_previous_complete_checkpoint(tmp_path):
    """A truncated file that last_checkpoint names (as written by a killed pre-fix save) is
    reported by name and the previous complete checkpoint is used."""
    cfg = load_cfg(TINY)
    torch.manual_seed(0)
    good = build_model(cfg)
    ckpt = AnchorFreeCheckpointer(good, str(tmp_path))
    ckpt.save("model_0000001", iteration=1)
    os.utime(tmp_path / "model_0000001.pth", (1, 1))  # older than model_final below
    data = (tmp_path / "model_0000001.pth").read_bytes()
    (tmp_path / "model_final.pth").write_bytes(data[: len(data) // 3])
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    (tmp_path / ".model_final.pth.abc.tmp").write_bytes(b"partial")  # left by a killed save
    torch.manual_seed(1)
    other = build_model(cfg)
    extra = AnchorFreeCheckpointer(other, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 1
    assert torch.equal(other.head.cls_logits.weight, good.head.cls_logits.weight)
    assert not (tmp_path / ".model_final.pth.abc.tmp").exists()
    (tmp_path / "model_0000001.pth").write_bytes(b"")
    with pytest.raises(RuntimeError, match=r"model_final\.pth.*\n.*model_0000001\.pth"):
        AnchorFreeCheckpointer(build_model(cfg), str(tmp_path)).resume_or_load("", resume=True)


def test_atomic_save_keeps_old_file_when_writing_fails(tmp_path, monkeypatch):
    cfg = load_cfg(TINY)
    model = build_model(cfg)
    ckpt = AnchorFreeCheckpointer(model, str(tmp_path))
    ckpt.save("model_final")
    before = (tmp_path / "model_final.pth").read_bytes()

    def failing_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save("model_final")
    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]


@pytest.mark.slow  # tools/predict.py processes
def test_predict_tool_refuses_missing_weights_unless_allowed(tmp_path):
    image = tmp_path / "img.png"
    import cv2

    cv2.imwrite(str(image), np.full((64, 80, 3), 128, np.uint8))
    cmd = [sys.executable, os.path.join(REPO, "tools", "predict.py"), "--config-file", os.path.join(REPO, TINY),
           "--input", str(image), "--output", str(tmp_path / "out")]
    common = ["MODEL.WEIGHTS", "", "DATASETS.REGISTER_COCO", "()", "DATASETS.TEST", "()", "DATASETS.TRAIN", "()"]
    r = subprocess.run(cmd + common, cwd=REPO, capture_output=True, text=True)
    assert r.returncode != 0 and "MODEL.WEIGHTS is empty" in r.stderr
    assert not (tmp_path / "out" / "results.json").exists()
    ok = subprocess.run(cmd + ["--allow-untrained"] + common, cwd=REPO, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert (tmp_path / "out" / "results.json").exists()


@pytest.mark.slow  # a tools/convert_checkpoint.py process
def test_conversion_tool_refuses_malicious_torch_file(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1), "evil": Payload(str(marker))}, evil)
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "convert_torchvision_to_d2.py"), str(evil),
                        str(tmp_path / "out.pkl")], cwd=REPO, capture_output=True, text=True)
    assert r.returncode != 0 and "Weights only load failed" in r.stderr
    assert not marker.exists() and not (tmp_path / "out.pkl").exists()

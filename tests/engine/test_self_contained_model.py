"""A trained model is self-contained: training writes the class names into its checkpoints, and
prediction and export work from a config whose datasets are not on this machine."""
import argparse
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

from d2_anchorfree.checkpoint import AnchorFreeCheckpointer, load_checkpoint_file
from d2_anchorfree.checkpoint.classes import check_classes, dataset_classes
from d2_anchorfree.cli import export as export_cli
from d2_anchorfree.cli import predict as predict_cli
from d2_anchorfree.engine import AnchorFreeTrainer, build_predictor, setup_cfg

from conftest import REPO, load_cfg, make_toy_data

CONFIG = os.path.join(REPO, "configs", "FCOS", "FCOS_tiny_R_18_cpu.yaml")
TOY_CONFIG = os.path.join(REPO, "projects", "CustomData", "fcos_tiny_toy.yaml")
# Small test size; score threshold 0 so that an untrained model gives detections.
SMALL = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96", "MODEL.DENSE.SCORE_THRESH_TEST", "0.0",
         "TEST.DETECTIONS_PER_IMAGE", "5", "MODEL.DEVICE", "cpu"]
CLASSES = {"thing_classes": ["tree"], "category_ids": [7]}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A random tiny FCOS (1 class) saved as training saves it: with class 'tree', dataset id 7."""
    out = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    model = build_model(load_cfg("configs/FCOS/FCOS_tiny_R_18_cpu.yaml", *SMALL))
    AnchorFreeCheckpointer(model, str(out), classes=CLASSES).save("model_final")
    return str(out / "model_final.pth")


def absent_datasets_opts(names, tmp_path):
    """Config opts naming train and test datasets whose json and images do not exist."""
    train, test = names("absent_train"), names("absent_val")
    gone = tmp_path / "not_here"
    return ["DATASETS.REGISTER_COCO", f"('{train},{gone}/train.json,{gone}/images', "
                                      f"'{test},{gone}/val.json,{gone}/images')",
            "DATASETS.TRAIN", f"('{train}',)", "DATASETS.TEST", f"('{test}',)"], test


def test_checkpoint_holds_class_names_as_plain_data(weights):
    data = load_checkpoint_file(weights)  # torch.load(weights_only=True): strings and ints load
    assert data["classes"] == CLASSES
    assert set(data) == {"model", "classes"}


@pytest.mark.parametrize("entry, pattern", [
    (["tree"], "is list, expected a dict"),
    ({"thing_classes": [], "category_ids": []}, r"thing_classes' must be a non-empty list of strings, got \[\]"),
    ({"thing_classes": ["a", "b"], "category_ids": [1]}, r"must be 2 distinct ints .* got \[1\]"),
    ({"thing_classes": ["a", "b"], "category_ids": [1, 1]}, r"must be 2 distinct ints .* got \[1, 1\]"),
    ({"thing_classes": ["a"], "category_ids": ["1"]}, r"got \['1'\]"),
])
def test_malformed_class_entries_name_the_value(entry, pattern):
    with pytest.raises(ValueError, match=pattern):
        check_classes(entry, "w.pth")
    with pytest.raises(ValueError, match=pattern):
        AnchorFreeCheckpointer(torch.nn.Linear(1, 1), "", classes=entry)


def test_class_names_that_do_not_fit_the_model_are_refused(weights):
    cfg = load_cfg("configs/FCOS/FCOS_tiny_R_18_cpu.yaml", *SMALL, "MODEL.WEIGHTS", weights)
    state = load_checkpoint_file(weights)
    state["classes"] = {"thing_classes": ["a", "b"], "category_ids": [1, 2]}
    bad = weights.replace(".pth", "_2names.pth")
    torch.save(state, bad)
    cfg.MODEL.WEIGHTS = bad
    with pytest.raises(ValueError, match=r"_2names\.pth: the checkpoint names 2 classes .* the model has 1"):
        build_predictor(cfg)


def test_trainer_writes_the_training_class_names_into_checkpoints(tmp_path, names):
    toy = make_toy_data(tmp_path / "toy", train=2, val=1)
    train = names("toy_cls_train")
    opts = ["DATASETS.REGISTER_COCO", f"('{train},{toy}/train.json,{toy}/images',)", "DATASETS.TRAIN",
            f"('{train}',)", "DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "out")]
    cfg = setup_cfg(argparse.Namespace(config_file=TOY_CONFIG, opts=opts), default_setup_logging=False)
    trainer = AnchorFreeTrainer(cfg)  # builds the loader (which fills the metadata), no step
    expected = {"thing_classes": ["rectangle", "ellipse"], "category_ids": [1, 2]}
    assert dataset_classes([train]) == expected
    trainer.checkpointer.save("model_0000000", iteration=0)
    data = load_checkpoint_file(str(tmp_path / "out" / "model_0000000.pth"))
    assert data["classes"] == expected and data["iteration"] == 0


def test_build_predictor_takes_the_class_names_from_the_weights(weights, names, tmp_path):
    opts, test = absent_datasets_opts(names, tmp_path)
    cfg = setup_cfg(argparse.Namespace(config_file=CONFIG, opts=SMALL + opts + ["MODEL.WEIGHTS", weights]),
                    default_setup_logging=False)
    predictor = build_predictor(cfg)
    assert predictor.classes == CLASSES
    assert predictor.metadata.thing_classes == ["tree"]
    assert predictor.metadata.thing_dataset_id_to_contiguous_id == {7: 0}
    with pytest.raises(FileNotFoundError, match="does not exist"):  # the datasets really are absent
        DatasetCatalog.get(test)


def test_predict_and_export_from_a_config_whose_datasets_are_absent(weights, names, tmp_path):
    opts, _ = absent_datasets_opts(names, tmp_path)
    images = tmp_path / "my_images"
    images.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    assert cv2.imwrite(str(images / "a.png"), pixels)
    out = tmp_path / "pred"
    assert predict_cli.main(["--config-file", CONFIG, "--input", str(images), "--output", str(out),
                             *SMALL, *opts, "MODEL.WEIGHTS", weights]) == 0
    results = json.load(open(out / "results.json"))
    assert results and {r["category_id"] for r in results} == {7}  # dataset id 7 from the weights
    assert (out / "a.png.jpg").is_file()
    exported = tmp_path / "ts"
    assert export_cli.main(["--config-file", CONFIG, "--format", "torchscript", "--output", str(exported),
                            *SMALL, *opts, "MODEL.WEIGHTS", weights]) == 0
    meta = json.load(open(exported / "metadata.json"))
    assert (meta["class_names"], meta["category_ids"]) == (["tree"], [7])


@pytest.mark.slow  # two processes: the commands of the report, in a folder without datasets/
def test_tools_predict_and_export_run_in_a_checkout_without_training_files(weights, tmp_path):
    """tools/predict.py and tools/export_model.py with the shipped config (which names
    datasets/trees/*.json) run from a folder where those files do not exist."""
    pixels = np.random.default_rng(1).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    (tmp_path / "my_images").mkdir()
    assert cv2.imwrite(str(tmp_path / "my_images" / "b.jpg"), pixels)
    assert not (tmp_path / "datasets").exists()
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for cmd in (["tools/predict.py", "--input", "my_images/", "--output", "pred"],
                ["tools/export_model.py", "--format", "torchscript", "--output", "ts"]):
        r = subprocess.run([sys.executable, os.path.join(REPO, cmd[0]), "--config-file", CONFIG, *cmd[1:],
                            *SMALL, "MODEL.WEIGHTS", weights], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr[-3000:]
    assert json.load(open(tmp_path / "pred" / "results.json"))
    assert json.load(open(tmp_path / "ts" / "metadata.json"))["class_names"] == ["tree"]

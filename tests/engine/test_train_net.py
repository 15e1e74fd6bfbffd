"""End-to-end entry points on a tiny synthetic COCO dataset registered from the config:
train_net.py as a subprocess (train, then --eval-only on the written checkpoint), exact resume,
DefaultPredictor round trip and the predict tool."""
import argparse
import json
import os
import shutil
import subprocess
import sys

import cv2
import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultPredictor
from detectron2.modeling import build_model
from detectron2.utils.events import get_event_storage

from d2_anchorfree.engine import AnchorFreeTrainer, setup_cfg

from conftest import REPO, make_toy_data

pytestmark = pytest.mark.slow  # train_net.py processes and in-process training runs

CONFIG = os.path.join(REPO, "projects", "CustomData", "fcos_tiny_toy.yaml")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return make_toy_data(root, train=6, val=3)


def opts(toy, out_dir, *extra):
    """Config overrides: the toy data under unique names, small images, a 4-iteration run."""
    tag = os.path.basename(str(out_dir))
    return [
        "DATASETS.REGISTER_COCO",
        f"('toy_train_{tag},{toy}/train.json,{toy}/images', 'toy_val_{tag},{toy}/val.json,{toy}/images')",
        "DATASETS.TRAIN", f"('toy_train_{tag}',)", "DATASETS.TEST", f"('toy_val_{tag}',)",
        "INPUT.MIN_SIZE_TRAIN", "(128, 160)", "INPUT.MAX_SIZE_TRAIN", "200",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "200",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "4", "SOLVER.WARMUP_ITERS", "2",
        "SOLVER.CHECKPOINT_PERIOD", "2", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out_dir),
        *extra,
    ]


def test_train_net_trains_then_evaluates_checkpoint(toy, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", CONFIG]
    train = subprocess.run(cmd + opts(toy, out), cwd=REPO, capture_output=True, text=True)
    assert train.returncode == 0, train.stderr[-3000:]
    for f in ("model_final.pth", "model_0000001.pth", "metrics.json", "last_checkpoint"):
        assert (out / f).exists(), f
    metrics = [json.loads(line) for line in open(out / "metrics.json")]
    assert any("total_loss" in m for m in metrics) and any("bbox/AP" in m for m in metrics)
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))  # TensorBoard
    tag = os.path.basename(str(out))
    report = out / "report" / f"toy_val_{tag}"  # the evaluation report after the final evaluation
    assert json.load(open(report / "report.json"))["num_images"] == 3 and (report / "summary.png").exists()
    os.remove(report / "report.json")
    ev = subprocess.run(cmd + ["--eval-only"] + opts(toy, out, "MODEL.WEIGHTS", str(out / "model_final.pth")),
                        cwd=REPO, capture_output=True, text=True)
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert "Evaluation results for bbox" in ev.stdout + ev.stderr
    assert (report / "report.json").exists()  # written again by --eval-only
    assert (out / "inference" / f"toy_val_{tag}" / "coco_instances_results.json").exists()


def test_bad_config_key_and_missing_config_fail_loudly(toy, tmp_path):
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", CONFIG]
    bad = subprocess.run(cmd + ["MODEL.DENSE.NOT_A_KEY", "1"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and "NOT_A_KEY" in bad.stderr
    missing = subprocess.run([sys.executable, os.path.join(REPO, "train_net.py"), "--config-file",
                              str(tmp_path / "nope.yaml")], cwd=REPO, capture_output=True, text=True)
    assert missing.returncode != 0 and "nope.yaml" in missing.stderr


def _train(toy, out_dir, resume, max_iter=4, *extra):
    args = argparse.Namespace(config_file=CONFIG, opts=opts(toy, out_dir, "SOLVER.MAX_ITER", str(max_iter), *extra),
                              eval_only=False, resume=resume)
    cfg = setup_cfg(args, default_setup_logging=False)
    cfg.defrost()
    cfg.TEST.EVAL_PERIOD = 0
    cfg.DATASETS.TEST = ()  # no evaluation: compare weights only
    cfg.freeze()
    torch.manual_seed(0)
    trainer = AnchorFreeTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return torch.load(os.path.join(out_dir, "model_final.pth"), weights_only=False)


def _resume_from_iteration_2(toy, tmp_path, max_iter, *extra):
    """model_final.pth of a straight run and of the same run resumed from its iteration-2 checkpoint."""
    straight = _train(toy, tmp_path / "a", False, max_iter, *extra)
    b = tmp_path / "b"
    os.makedirs(b)
    shutil.copy(tmp_path / "a" / "model_0000001.pth", b)  # the checkpoint after 2 iterations
    (b / "last_checkpoint").write_text("model_0000001.pth")
    return straight, _train(toy, b, True, max_iter, *extra)


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


def test_resume_is_exact(toy, tmp_path):
    """6 iterations straight == 2 iterations, stop, --resume for the last 4 (random flips and
    multi-scale resize on): the data stream, augmentations, optimizer and LR schedule resume,
    bitwise, BatchNorm buffers included. (In-process; tests/engine/test_killed_runs.py resumes in fresh
    processes, which is what caught TorchScript's focal loss changing gradients after warm-up.)"""
    straight, resumed = _resume_from_iteration_2(toy, tmp_path, 6)
    assert_same_weights(straight["model"], resumed["model"])


def test_resume_is_exact_with_repeat_factor_sampler(toy, tmp_path):
    """As above with RepeatFactorTrainingSampler (threshold 2: every image has a fractional repeat
    factor >= sqrt(2), so the stochastic rounding draws), 4 iterations resumed after 2; the
    sampler's stream is checked for each sampler in tests/engine/test_samplers.py."""
    straight, resumed = _resume_from_iteration_2(
        toy, tmp_path, 4, "DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler", "DATALOADER.REPEAT_THRESHOLD", "2.0")
    assert_same_weights(straight["model"], resumed["model"])


# A short average (decay 0.5 after a ramp of tau 1) so that it differs clearly from the weights.
EMA = ("MODEL_EMA.ENABLED", "True", "MODEL_EMA.DECAY", "0.5", "MODEL_EMA.WARMUP", "1")


def differs(a, b):
    """Names of the floating-point tensors that differ between state dicts ``a`` and ``b``."""
    return [k for k, v in a.items() if v.is_floating_point() and not torch.equal(v, b[k])]


def test_resume_is_exact_with_model_ema(toy, tmp_path):
    """Model EMA: 4 iterations straight == 2, stop, --resume for 2: the averaged weights
    ("model"), the trained ones ("model_raw") and the update count, bitwise."""
    straight, resumed = _resume_from_iteration_2(toy, tmp_path, 4, *EMA)
    assert_same_weights(straight["model"], resumed["model"])
    assert_same_weights(straight["model_raw"], resumed["model_raw"])
    assert straight["ema"]["updates"] == resumed["ema"]["updates"] == 4
    assert len(differs(straight["model"], straight["model_raw"])) > 10  # the average is not the weights


class RecordingEvaluationTrainer(AnchorFreeTrainer):
    """Evaluation records the weights it is given and reports ``SCORES[iteration]`` as bbox/AP
    (the event storage's iteration: 4 = MAX_ITER for the final evaluation, after iteration 3)."""

    SCORES = {1: 0.5, 4: 0.1}
    evaluated = {}

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        it = get_event_storage().iter
        cls.evaluated[it] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"bbox": {"AP": cls.SCORES[it], "AP50": 0.0}}


def test_model_ema_weights_are_evaluated_and_saved(toy, tmp_path):
    """With model EMA, the evaluations after iterations 1 (periodic) and 3 (final) run the
    averaged weights, which are what model_0000001.pth, model_best.pth (the evaluation after
    iteration 1 scored best) and model_final.pth hold as "model"; "model_raw" differs."""
    args = argparse.Namespace(config_file=CONFIG, eval_only=False, resume=False,
                              opts=opts(toy, tmp_path, "TEST.EVAL_PERIOD", "2", *EMA))
    cfg = setup_cfg(args, default_setup_logging=False)
    torch.manual_seed(0)
    RecordingEvaluationTrainer.evaluated = {}
    trainer = RecordingEvaluationTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    evaluated = RecordingEvaluationTrainer.evaluated
    assert sorted(evaluated) == [1, 4]
    files = {name: torch.load(tmp_path / f"{name}.pth", weights_only=False)
             for name in ("model_0000001", "model_best", "model_final")}
    assert files["model_best"]["iteration"] == 1
    for name, it in (("model_0000001", 1), ("model_best", 1), ("model_final", 4)):
        assert_same_weights(files[name]["model"], evaluated[it])
        assert differs(files[name]["model"], files[name]["model_raw"]), name


class ScriptedEvaluationTrainer(AnchorFreeTrainer):
    """Evaluation reports ``SCORES[iteration]`` as bbox/AP without running inference, so that
    where the run stops can be computed by hand."""

    SCORES = {0: 0.1, 1: 0.2, 2: 0.15, 3: 0.18, 4: 0.19}

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        return {"bbox": {"AP": cls.SCORES[get_event_storage().iter], "AP50": 0.0}}


def _train_until_stopped(toy, out_dir, resume):
    """An evaluation after every iteration, patience 3, MAX_ITER 20; returns the final weights."""
    args = argparse.Namespace(config_file=CONFIG, eval_only=False, resume=resume, opts=opts(
        toy, out_dir, "SOLVER.MAX_ITER", "20", "TEST.EVAL_PERIOD", "1", "SOLVER.EARLY_STOP.PATIENCE", "3"))
    cfg = setup_cfg(args, default_setup_logging=False)
    torch.manual_seed(0)
    trainer = ScriptedEvaluationTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    assert trainer.train() is None  # early stopping ends train() normally
    return torch.load(os.path.join(out_dir, "model_final.pth"), weights_only=False)


def test_early_stop_and_best_checkpoint_resume_exactly(toy, tmp_path, caplog):
    """bbox/AP after iterations 0-4: 0.1, 0.2 (best), 0.15, 0.18, 0.19: with patience 3 the run
    stops after iteration 4 with model_final.pth, and model_best.pth holds iteration 1's weights.
    Resumed from the checkpoint of iteration 3 (saved before that iteration's evaluation, so only
    best_checkpoint.json has it), the patience counter is 2 and the run stops after iteration 4
    again, with bitwise the same weights; resumed once more, it trains nothing."""
    a = tmp_path / "a"
    with caplog.at_level("INFO", logger="d2_anchorfree"):
        straight = _train_until_stopped(toy, a, resume=False)
    assert "Early stopping at iteration 4: bbox/AP did not improve in the last 3 evaluations" in caplog.text
    assert straight["iteration"] == 4
    best = torch.load(a / "model_best.pth", weights_only=False)
    assert best["iteration"] == 1
    assert_same_weights(best["model"], torch.load(a / "model_0000001.pth", weights_only=False)["model"])
    assert (a / "last_checkpoint").read_text() == "model_final.pth"

    b = tmp_path / "b"
    os.makedirs(b)
    for name in ("model_0000003.pth", "model_best.pth", "best_checkpoint.json"):
        shutil.copy(a / name, b)
    (b / "last_checkpoint").write_text("model_0000003.pth")
    resumed = _train_until_stopped(toy, b, resume=True)
    assert resumed["iteration"] == 4
    assert_same_weights(straight["model"], resumed["model"])
    assert json.loads((b / "best_checkpoint.json").read_text()) == json.loads((a / "best_checkpoint.json").read_text())

    caplog.clear()
    with caplog.at_level("INFO", logger="d2_anchorfree"):
        again = _train_until_stopped(toy, b, resume=True)
    assert "this run already stopped" in caplog.text
    assert again["iteration"] == 4 and not (b / "model_0000005.pth").exists()


def test_default_predictor_round_trip_and_predict_tool(toy, tmp_path):
    # Untrained: every class probability is the prior 0.01, below the default SCORE_THRESH_TEST
    # 0.05 that FCOS applies to it (paper Sec. 3.1); threshold 0 so that there are detections.
    untrained = ("MODEL.DENSE.SCORE_THRESH_TEST", "0.0")
    args = argparse.Namespace(config_file=CONFIG, opts=opts(toy, tmp_path, *untrained), eval_only=False,
                              resume=False)
    cfg = setup_cfg(args, default_setup_logging=False)
    torch.manual_seed(0)
    model = build_model(cfg)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model_rt")
    cfg.defrost()
    cfg.MODEL.WEIGHTS = str(tmp_path / "model_rt.pth")
    cfg.freeze()
    predictor = DefaultPredictor(cfg)
    image_file = sorted(os.listdir(toy / "images"))[0]
    img = cv2.imread(str(toy / "images" / image_file))
    got = predictor(img)["instances"]
    # Same weights, same preprocessing by hand -> same detections.
    model.eval()
    h, w = img.shape[:2]
    resized = predictor.aug.get_transform(img).apply_image(img)
    with torch.no_grad():
        ref = model([{"image": torch.as_tensor(resized.transpose(2, 0, 1).copy()), "height": h, "width": w}])
    ref = ref[0]["instances"]
    assert len(got) == len(ref) > 0
    assert torch.allclose(got.pred_boxes.tensor, ref.pred_boxes.tensor) and torch.equal(got.scores, ref.scores)
    assert got.image_size == (h, w)

    from d2_anchorfree.cli import predict

    out = tmp_path / "pred"
    predict.main(["--config-file", CONFIG, "--input", str(toy / "images" / "*.png"), "--output", str(out),
                  "--min-score", "0.0", *opts(toy, tmp_path, "MODEL.WEIGHTS", cfg.MODEL.WEIGHTS, *untrained)])
    results = json.load(open(out / "results.json"))
    n_images = len([f for f in os.listdir(toy / "images") if f.endswith(".png")])
    assert len([f for f in os.listdir(out) if f.endswith(".jpg")]) == n_images
    assert results and {"file_name", "category_id", "bbox", "score"} <= set(results[0])
    with pytest.raises(FileNotFoundError, match="no images"):
        predict.list_images(str(tmp_path / "nothing*.png"))

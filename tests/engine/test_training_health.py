"""Training stops with a clear error when weights or gradients go bad, and solver values that
cannot train are rejected naming the key."""
import argparse
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from detectron2.utils.events import EventStorage

from d2_anchorfree.engine import AnchorFreeTrainer, setup_cfg
from d2_anchorfree.engine.health import TrainingHealthCheck, check_solver_config

from conftest import REPO, load_cfg, make_toy_data

TOY_CONFIG = os.path.join(REPO, "projects", "CustomData", "fcos_tiny_toy.yaml")


@pytest.mark.parametrize("key,value", [
    ("SOLVER.MAX_ITER", 0), ("SOLVER.MAX_ITER", -5), ("SOLVER.IMS_PER_BATCH", 0), ("SOLVER.BASE_LR", 0.0),
    ("SOLVER.BASE_LR", float("nan")), ("SOLVER.CHECKPOINT_PERIOD", 0), ("SOLVER.WARMUP_ITERS", -1),
    ("SOLVER.WARMUP_FACTOR", 0.0), ("SOLVER.MOMENTUM", 1.0), ("SOLVER.WEIGHT_DECAY", -1e-4),
    ("SOLVER.GAMMA", 0.0), ("SOLVER.STEPS", (200, 100)), ("TEST.EVAL_PERIOD", -1),
])
def test_bad_solver_values_name_the_key(key, value):
    cfg = load_cfg("configs/FCOS/FCOS_tiny_R_18_cpu.yaml", key, value)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        check_solver_config(cfg)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):  # before anything is built
        AnchorFreeTrainer(cfg)


def test_default_solver_values_pass():
    for config in ("configs/FCOS/FCOS_tiny_R_18_cpu.yaml", "configs/FCOS/FCOS_R_50_FPN_1x.yaml"):
        check_solver_config(load_cfg(config))


@pytest.mark.slow  # a train_net.py process
def test_max_iter_zero_from_the_command_line_names_the_key(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(REPO, "train_net.py"), "--config-file",
                        os.path.join(REPO, "configs/FCOS/FCOS_tiny_R_18_cpu.yaml"), "SOLVER.MAX_ITER", "0",
                        "DATASETS.REGISTER_COCO", "()", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
                        "OUTPUT_DIR", str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode != 0 and "SOLVER.MAX_ITER = 0" in r.stderr


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return make_toy_data(root, train=4, val=2)


@pytest.mark.slow  # trains up to 20 iterations
def test_exploding_weights_under_gradient_clipping_stop_the_run(toy, tmp_path):
    """BASE_LR 100 with gradient clipping (on in the tiny configs): the loss stays finite while
    the weights grow; the run must stop naming the iteration, and save no exploded checkpoint."""
    opts = ["DATASETS.REGISTER_COCO", f"('toy_health_train,{toy}/train.json,{toy}/images',)",
            "DATASETS.TRAIN", "('toy_health_train',)", "DATASETS.TEST", "()",
            "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "160", "SOLVER.IMS_PER_BATCH", "2",
            "SOLVER.BASE_LR", "100.0", "SOLVER.WARMUP_ITERS", "0", "SOLVER.MAX_ITER", "20",
            "SOLVER.CHECKPOINT_PERIOD", "1", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path)]
    cfg = setup_cfg(argparse.Namespace(config_file=TOY_CONFIG, opts=opts), default_setup_logging=False)
    assert cfg.SOLVER.CLIP_GRADIENTS.ENABLED
    trainer = AnchorFreeTrainer(cfg)
    trainer.resume_or_load(resume=False)
    with pytest.raises(FloatingPointError, match=r"weights exploded at iteration (\d+).*SOLVER\.BASE_LR") as e:
        trainer.train()
    it = int(e.value.args[0].split("iteration ")[1].split(":")[0])
    assert it < 20
    assert not (tmp_path / f"model_{it:07d}.pth").exists()  # checked before the checkpointer ran


def _fake_trainer(model, it=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return SimpleNamespace(model=model, iter=it, storage=EventStorage(), optimizer=opt)


def test_non_finite_weights_or_gradients_are_named():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    hook = TrainingHealthCheck(max_norm_growth=100.0)
    hook.trainer = _fake_trainer(model)
    hook.before_train()
    model(torch.ones(1, 2)).sum().backward()
    with hook.trainer.storage:
        hook.after_step()  # healthy
        assert hook.trainer.storage.latest()["weight_norm"][0] > 0
        model[1].weight.grad[0, 0] = float("inf")
        with pytest.raises(FloatingPointError, match=r"gradients became non-finite at iteration 3 \(first: 1\.weight\)"):
            hook.after_step()
        with torch.no_grad():
            model[0].bias[1] = float("nan")
        with pytest.raises(FloatingPointError, match=r"weights became non-finite at iteration 3 \(first: 0\.bias\)"):
            hook.after_step()


def test_growth_limit_and_disable():
    model = torch.nn.Linear(3, 3)
    hook = TrainingHealthCheck(max_norm_growth=10.0)
    hook.trainer = _fake_trainer(model)
    hook.before_train()
    with hook.trainer.storage:
        with torch.no_grad():
            model.weight.mul_(9.0)
            model.bias.mul_(9.0)
        hook.after_step()  # 9x: allowed
        with torch.no_grad():
            model.weight.mul_(2.0)
            model.bias.mul_(2.0)
        with pytest.raises(FloatingPointError, match="more than SOLVER.HEALTH_CHECK.MAX_WEIGHT_NORM_GROWTH = 10"):
            hook.after_step()
        off = TrainingHealthCheck(max_norm_growth=0)
        off.trainer = hook.trainer
        off.before_train()
        with torch.no_grad():
            model.weight.mul_(1e6)
        off.after_step()
    with pytest.raises(ValueError, match="MAX_WEIGHT_NORM_GROWTH"):
        TrainingHealthCheck(max_norm_growth=0.5)


def test_trainer_refuses_num_classes_that_differ_from_the_dataset(toy, tmp_path):
    opts = ["DATASETS.REGISTER_COCO", f"('toy_health_k_train,{toy}/train.json,{toy}/images',)",
            "DATASETS.TRAIN", "('toy_health_k_train',)", "DATASETS.TEST", "()", "MODEL.DENSE.NUM_CLASSES", "3",
            "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path)]
    cfg = setup_cfg(argparse.Namespace(config_file=TOY_CONFIG, opts=opts), default_setup_logging=False)
    with pytest.raises(ValueError, match=r"MODEL\.DENSE\.NUM_CLASSES is 3 but .*'toy_health_k_train' has 2 classes"):
        AnchorFreeTrainer(cfg)

"""A killed run loses nothing: real train_net.py processes are SIGKILLed at many points while a
checkpoint is being saved (tests/kill_during_save.py), then ``--resume`` must succeed and end
with weights bitwise equal to a run that was never killed. Every resume here runs in a fresh
process, as after a real kill."""
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from conftest import REPO, make_toy_data

pytestmark = pytest.mark.slow  # every test runs several train_net.py processes

CONFIG = os.path.join(REPO, "projects", "CustomData", "fcos_tiny_toy.yaml")
DRIVER = os.path.join(REPO, "tests", "kill_during_save.py")


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    return make_toy_data(root, train=6, val=2)


def run(toy, out, max_iter, resume=False, kill_at=None, extra=()):
    """train_net.py on the toy data (no evaluation), optionally killed at ``kill_at``; ``extra``:
    more config overrides."""
    cmd = [sys.executable, DRIVER if kill_at else os.path.join(REPO, "train_net.py")]
    cmd += (["--resume"] if resume else []) + ["--config-file", CONFIG]
    cmd += ["DATASETS.REGISTER_COCO", f"('toy_kill_train,{toy}/train.json,{toy}/images',)",
            "DATASETS.TRAIN", "('toy_kill_train',)", "DATASETS.TEST", "()",
            "INPUT.MIN_SIZE_TRAIN", "(128, 160)", "INPUT.MAX_SIZE_TRAIN", "200",
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(max_iter), "SOLVER.WARMUP_ITERS", "2",
            "SOLVER.CHECKPOINT_PERIOD", "2", "DATALOADER.NUM_WORKERS", "1", "OUTPUT_DIR", str(out), *extra]
    env = dict(os.environ, D2AF_KILL_AT=kill_at or "")
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env)


def final_weights(out, key="model"):
    return torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=True)[key]


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]  # BatchNorm running stats included
    assert not differ, f"{len(differ)} tensors differ, e.g. {differ[:3]}"


def assert_no_partial_files(out):
    for name in os.listdir(out):
        if name.endswith(".pth"):  # every checkpoint present is complete
            torch.load(os.path.join(out, name), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def finished_run(toy, tmp_path_factory):
    """A finished 4-iteration run, and the reference: the same run resumed to 6 iterations."""
    base = tmp_path_factory.mktemp("finished")
    assert run(toy, base, 4).returncode == 0
    ref = tmp_path_factory.mktemp("finished_ref")
    shutil.copytree(base, ref, dirs_exist_ok=True)
    r = run(toy, ref, 6, resume=True)
    assert r.returncode == 0, r.stderr[-3000:]
    return base, final_weights(ref)


@pytest.mark.parametrize("kill_at", [
    "model_final.pth:write:1",
    "model_final.pth:write:HALF",
    "model_final.pth:fsync",
    "model_final.pth:replace",
    "last_checkpoint:replace",
])
def test_kill_while_rewriting_model_final(toy, finished_run, tmp_path, kill_at):
    """Issue: resuming a finished run with a larger MAX_ITER and killing it while model_final.pth
    is rewritten used to truncate the only good weights (next --resume: OSError)."""
    base, reference = finished_run
    shutil.copytree(base, tmp_path, dirs_exist_ok=True)
    if "HALF" in kill_at:
        kill_at = kill_at.replace("HALF", str(os.path.getsize(base / "model_final.pth") // 2))
    killed = run(toy, tmp_path, 6, resume=True, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert_no_partial_files(tmp_path)
    resumed = run(toy, tmp_path, 6, resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_bitwise_equal(final_weights(tmp_path), reference)
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]  # temp file of the kill removed


@pytest.mark.parametrize("kill_at", ["model_0000003.pth:write:HALF", "model_0000003.pth:replace"])
def test_kill_during_periodic_save_then_resume_equals_uninterrupted(toy, tmp_path, kill_at):
    straight = tmp_path / "straight"
    assert run(toy, straight, 6).returncode == 0
    killed_dir = tmp_path / "killed"
    kill_at = kill_at.replace("HALF", str(os.path.getsize(straight / "model_0000003.pth") // 2))
    killed = run(toy, killed_dir, 6, kill_at=kill_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (killed_dir / "model_0000003.pth").exists()  # no truncated periodic checkpoint
    assert (killed_dir / "last_checkpoint").read_text() == "model_0000001.pth"
    assert_no_partial_files(killed_dir)
    resumed = run(toy, killed_dir, 6, resume=True)  # from iteration 2, in a fresh process
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_bitwise_equal(final_weights(killed_dir), final_weights(straight))


def straight_and_killed_then_resumed(toy, tmp_path, extra):
    """A 4-iteration run, and the same run killed while saving the checkpoint after iteration 3
    (the last) then resumed from iteration 2 in a fresh process; returns both output folders."""
    straight = tmp_path / "straight"
    assert run(toy, straight, 4, extra=extra).returncode == 0
    killed_dir = tmp_path / "killed"
    killed = run(toy, killed_dir, 4, kill_at="model_0000003.pth:replace", extra=extra)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    resumed = run(toy, killed_dir, 4, resume=True, extra=extra)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return straight, killed_dir


def test_model_ema_resumes_exactly_after_a_kill(toy, tmp_path):
    """With model EMA, killed while saving the checkpoints after iteration 3 (the last) and
    resumed from iteration 2 in a fresh process: the averaged weights ("model") and the trained ones
    ("model_raw") equal those of the uninterrupted run, bitwise."""
    ema = ("MODEL_EMA.ENABLED", "True", "MODEL_EMA.DECAY", "0.5", "MODEL_EMA.WARMUP", "1")
    straight, killed_dir = straight_and_killed_then_resumed(toy, tmp_path, ema)
    for key in ("model", "model_raw"):
        assert_bitwise_equal(final_weights(killed_dir, key), final_weights(straight, key))


def test_mosaic_resumes_exactly_after_a_kill(toy, tmp_path):
    """With the mosaic augmentation (INPUT.MOSAIC, half the samples, drawn in a data-loader worker
    process) closed for the last 2 of the 4 iterations: killed and resumed as above, the run ends
    with the weights of the uninterrupted one, bitwise. The uninterrupted run swaps its loader
    before iteration 2 (CloseMosaicHook); the resumed one starts at iteration 2 with the closed
    loader: both see the same images."""
    mosaic = ("INPUT.MOSAIC.ENABLED", "True", "INPUT.MOSAIC.PROB", "0.5", "INPUT.MOSAIC.SIZE", "64",
              "INPUT.MOSAIC.CLOSE_ITERS", "2")
    straight, killed_dir = straight_and_killed_then_resumed(toy, tmp_path, mosaic)
    assert_bitwise_equal(final_weights(killed_dir), final_weights(straight))
    assert "Mosaic closed: iterations 2 to 3 train on plain images" in (straight / "log.txt").read_text()


def test_adamw_resumes_exactly_after_a_kill(toy, tmp_path):
    """With AdamW (SOLVER.OPTIMIZER): killed and resumed as above, the run ends with the weights of
    the uninterrupted one, bitwise: the checkpoint carries AdamW's moment estimates and step counts
    (a resume that restarted them would take a different, bias-corrected step)."""
    adamw = ("SOLVER.OPTIMIZER", "AdamW", "SOLVER.BASE_LR", "0.001", "SOLVER.WEIGHT_DECAY", "0.05")
    straight, killed_dir = straight_and_killed_then_resumed(toy, tmp_path, adamw)
    assert_bitwise_equal(final_weights(killed_dir), final_weights(straight))
    state = torch.load(os.path.join(killed_dir, "model_final.pth"), map_location="cpu", weights_only=True)
    assert {"exp_avg", "exp_avg_sq"} <= set(next(iter(state["trainer"]["_trainer"]["optimizer"]["state"].values())))

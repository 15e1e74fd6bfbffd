"""Converted MMDetection 3.3.0 models give MMDetection's own outputs (issue 11's parity check).

For each supported MMDetection config, ``tests/mmdet_ref/dump_reference.py`` runs in the separate
MMDetection environment (``tools/setup_mmdet_env.sh``: mmdet 3.3.0, mmengine 0.10.7, mmcv-lite
2.1.0, numpy < 2, the project's torch; mmcv's compiled ops replaced by torchvision's, see
``tests/mmdet_ref/mmcv_ops_shim.py``): it builds the model from MMDetection's packaged config,
gives it random, calibrated weights, saves them as an MMDetection checkpoint and records the
FPN features, the head's raw outputs and ``predict``'s detections on two real tree tiles
(400x400 and 275x333). Here the checkpoint is converted (``tools/convert_checkpoint.py``'s core),
our model is built from ``configs/zoo/mmdet/<config>.yaml`` and ``tests/mmdet_ref/parity.py``
compares: FPN features and per-level head outputs within 1e-4, and the detections of our full
model (our preprocessing, post-processing and rescaling) one to one with the reference's (same
class, boxes within 0.01 px, scores within 1e-4, same count).

The dumps are cached under ``$D2AF_CACHE/mmdet-ref`` (default ``~/.cache/d2af``), keyed by the
dumper's and shim's sources, the config, seed, layout and images, so the second CI suite and later
runs reuse them. Without the MMDetection environment the tests skip, unless
``D2AF_REQUIRE_MMDET=1`` (set by ``make test``), when they fail.
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest
import torch

from conftest import CACHE_ROOT, REPO, trees_dir

# every test here runs the MMDetection environment's python; most build R-50 models on both sides
# (a reference dump is 40-90 s on a fresh machine)
pytestmark = [pytest.mark.mmdet, pytest.mark.slow]

sys.path.insert(0, os.path.join(REPO, "tests", "mmdet_ref"))
import parity  # noqa: E402

CONFIGS = [
    "fcos/fcos_r50-caffe_fpn_gn-head_1x_coco.py",
    "fcos/fcos_r50-caffe_fpn_gn-head-center-normbbox-centeronreg-giou_1x_coco.py",
    "atss/atss_r50_fpn_1x_coco.py",
    "gfl/gfl_r50_fpn_1x_coco.py",
    "vfnet/vfnet_r50_fpn_1x_coco.py",
    "vfnet/vfnet_r50-mdconv-c3-c5_fpn_ms-2x_coco.py",
    "tood/tood_r50_fpn_1x_coco.py",
]
SEED = 0
REF_DIR = os.path.join(REPO, "tests", "mmdet_ref")
CACHE = os.path.join(CACHE_ROOT, "mmdet-ref")


@pytest.fixture(scope="session")
def mmdet_python():
    """The MMDetection environment's python (``D2AF_MMDET_VENV``, default ~/.cache/d2af/venv-mmdet)."""
    venv = os.environ.get("D2AF_MMDET_VENV", os.path.expanduser("~/.cache/d2af/venv-mmdet"))
    python = os.path.join(venv, "bin", "python")
    if not os.path.isfile(python):
        message = (f"no MMDetection environment at {venv}: run `bash tools/setup_mmdet_env.sh` "
                   "(make test does)")
        if os.environ.get("D2AF_REQUIRE_MMDET") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return python


@pytest.fixture(scope="session")
def test_images(tmp_path_factory):
    """The two real tree tiles of the reference (make_test_images.py), written once per session."""
    out = tmp_path_factory.mktemp("mmdet_images")
    subprocess.run([sys.executable, os.path.join(REF_DIR, "make_test_images.py"), "--trees", trees_dir(),
                    "--out", str(out)], check=True, capture_output=True, text=True)
    return sorted(str(p) for p in out.iterdir())


def _digest(config: str, layout: str, images, cfg_options=()) -> str:
    h = hashlib.sha256()
    for name in ("dump_reference.py", "mmcv_ops_shim.py"):
        with open(os.path.join(REF_DIR, name), "rb") as f:
            h.update(f.read())
    for path in images:
        with open(path, "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    h.update(f"{config}|{layout}|{SEED}|{' '.join(cfg_options)}".encode())
    return h.hexdigest()[:16]


def _target(images, config: str, layout: str, cfg_options) -> str:
    name = os.path.splitext(os.path.basename(config))[0]
    return os.path.join(CACHE, f"{name}-{layout}-{_digest(config, layout, images, cfg_options)}")


# Every dump the tests here read, by key, as (config, checkpoint layout, MMDetection --cfg-options),
# and the keys each test reads (the parametrized test: its config). The `dumps` fixture makes the
# missing dumps of the selected tests in one MMDetection process.
DUMPS = {**{c: (c, "3.x", ()) for c in CONFIGS},
         "gfl-2.x": (CONFIGS[3], "2.x", ()),
         "fcos-nms_pre50": (CONFIGS[0], "3.x", ("model.test_cfg.nms_pre=50",))}
USES = {
    "test_converted_checkpoint_reproduces_mmdetection": lambda params: [params["config"]],
    "test_mmdetection_2x_checkpoint_layout_converts_the_same": lambda params: ["gfl-2.x"],
    "test_parity_check_catches_a_wrong_conversion": lambda params: [CONFIGS[3]],
    "test_topk_candidates_by_class_score_is_what_mmdetection_does": lambda params: ["fcos-nms_pre50"],
    "test_a_config_that_does_not_describe_the_file_is_refused": lambda params: [CONFIGS[2], "gfl-2.x"],
}


class Dumps:
    """The dump directories (checkpoint.pth and outputs.pt) of :data:`DUMPS` keys; a key whose dump
    failed fails the test that reads it, with the dumper's output."""

    def __init__(self, dirs, errors):
        self.dirs, self.errors = dirs, errors

    def __getitem__(self, key):
        if key in self.errors:
            pytest.fail(self.errors[key])
        return self.dirs[key]  # KeyError: a test reads a dump that USES does not list


def make_dumps(mmdet_python, images, keys) -> Dumps:
    """Directories of the (cached) MMDetection dumps of ``keys``; those not cached yet are made
    by one ``dump_reference.py --jobs`` process (mmdet imported once for all of them)."""
    dirs = {k: _target(images, *DUMPS[k]) for k in keys}
    missing = [k for k in keys if not os.path.isfile(os.path.join(dirs[k], "outputs.pt"))]
    errors = {}
    if missing:
        os.makedirs(CACHE, exist_ok=True)
        tmps, jobs = {}, []
        for k in missing:
            config, layout, cfg_options = DUMPS[k]
            tmps[k] = tempfile.mkdtemp(prefix=os.path.basename(dirs[k]) + ".", dir=CACHE)
            jobs.append(["--config", config, "--images", *images, "--seed", str(SEED), "--out", tmps[k],
                         "--layout", layout] + (["--cfg-options", *cfg_options] if cfg_options else []))
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(jobs, f)
        cmd = [mmdet_python, os.path.join(REF_DIR, "dump_reference.py"), "--jobs", f.name]
        run = subprocess.run(cmd, capture_output=True, text=True)
        os.remove(f.name)
        for k in missing:
            if not os.path.isfile(os.path.join(tmps[k], "outputs.pt")):  # the dumper removed a failed one
                shutil.rmtree(tmps[k], ignore_errors=True)
                errors[k] = (f"MMDetection reference dump of {DUMPS[k]} failed (exit {run.returncode}):\n"
                             f"{run.stdout[-2000:]}\n{run.stderr[-3000:]}")
                continue
            try:
                os.replace(tmps[k], dirs[k])  # atomic: a killed dump leaves no half-written cache entry
            except OSError:  # another process finished the same dump first
                shutil.rmtree(tmps[k], ignore_errors=True)
    return Dumps(dirs, errors)


@pytest.fixture(scope="session")
def dumps(mmdet_python, test_images, request):
    """The dumps that the selected tests of this module read (:data:`USES`)."""
    keys = []
    for item in request.session.items:
        if str(item.path) != os.path.abspath(__file__) or getattr(item, "originalname", None) not in USES:
            continue
        params = item.callspec.params if hasattr(item, "callspec") else {}
        keys += [k for k in USES[item.originalname](params) if k not in keys]
    return make_dumps(mmdet_python, test_images, keys)


def _check(result, max_outside: int = 0):
    assert result.get("outside", 0) <= max_outside, result
    assert result["features"] <= parity.FEATURE_ATOL, result
    assert all(d <= parity.HEAD_ATOL for d in result["head"].values()), result
    for ours, ref, unmatched, worst_box, worst_score in result["detections"]:
        assert ref > 0, "the reference has no detection: the comparison would prove nothing"
        assert (ours, unmatched) == (ref, 0), result
        assert worst_box <= parity.BOX_ATOL and worst_score <= parity.SCORE_ATOL


@pytest.mark.parametrize("config", CONFIGS, ids=[os.path.basename(c)[:-3] for c in CONFIGS])
def test_converted_checkpoint_reproduces_mmdetection(dumps, test_images, config):
    result = parity.compare(dumps[config], images=test_images)
    # TOOD's reference clips no box: 2 of its 200 detections lie entirely above the 275x333 tile
    # (y1 = -88.7, y2 = 0); detectron2 clips and drops such boxes, so they are not compared.
    _check(result, max_outside=2 if config.startswith("tood/") else 0)


def test_mmdetection_2x_checkpoint_layout_converts_the_same(dumps, test_images):
    """A 2.x-layout file (meta CLASSES / config text) converts to the same model."""
    result = parity.compare(dumps["gfl-2.x"], images=test_images)
    _check(result)


def test_parity_check_catches_a_wrong_conversion(dumps, test_images):
    """Negative control: one head tensor perturbed by 1e-3 after conversion is caught."""
    def perturb(state):
        state["head.cls_logits.bias"] = state["head.cls_logits.bias"] + 1e-3

    result = parity.compare(dumps[CONFIGS[3]], edit_state=perturb, images=test_images)
    assert result["head"]["cls_scores"] > parity.HEAD_ATOL
    assert any(unmatched > 0 for _, _, unmatched, _, _ in result["detections"])
    # and the unperturbed conversion of the same dump passes
    _check(parity.compare(dumps[CONFIGS[3]], images=test_images))


def test_topk_candidates_by_class_score_is_what_mmdetection_does(dumps, test_images):
    """With 50 candidates per level (nms_pre=50 there, TOPK_CANDIDATES_TEST 50 here) the top-k
    choice decides the detections: MMDetection picks them by class score before the centerness
    factor (MODEL.DENSE.TOPK_CANDIDATES_BY "candidate"); ranking by the product does not match."""
    dump = dumps["fcos-nms_pre50"]
    opts = ["MODEL.DENSE.TOPK_CANDIDATES_TEST", 50]
    _check(parity.compare(dump, images=test_images, opts=opts))
    wrong = parity.compare(dump, images=test_images, opts=opts + ["MODEL.DENSE.TOPK_CANDIDATES_BY", "score"])
    assert any(unmatched > 0 for _, _, unmatched, _, _ in wrong["detections"]), wrong


def test_a_config_that_does_not_describe_the_file_is_refused(dumps):
    """The head's key family and the config text of a 2.x file are checked against our config."""
    from d2_anchorfree.checkpoint.conversion import ConversionError, convert_checkpoint

    atss = os.path.join(dumps[CONFIGS[2]], "checkpoint.pth")
    with pytest.raises(ConversionError, match="BOX_CODER 'anchor_delta'"):
        convert_checkpoint(atss, parity.zoo_config(CONFIGS[0]))  # ATSS file, FCOS config
    gfl_2x = os.path.join(dumps["gfl-2.x"], "checkpoint.pth")
    for opts, message in ((["INPUT.FORMAT", "BGR"], "takes RGB input"),
                          (["MODEL.RESNETS.STRIDE_IN_1X1", True], "pytorch-style"),
                          (["MODEL.FPN.TOP_LEVELS_RELU", True], "relu_before_extra_convs=False"),
                          (["MODEL.PIXEL_STD", [1.0, 1.0, 1.0]], "std=")):
        with pytest.raises(ConversionError, match=message):
            convert_checkpoint(gfl_2x, parity.zoo_config(CONFIGS[3], opts))


def test_numpy1_metadata_of_published_files_loads(mmdet_python, tmp_path):
    """Published checkpoints were pickled under numpy 1.x (numpy.core.multiarray names): their
    numpy scalars and arrays in the metadata load under our numpy 2, with weights_only."""
    from d2_anchorfree.checkpoint.conversion import load_source_checkpoint

    path = tmp_path / "np1.pth"
    code = ("import sys, numpy as np, torch; assert np.__version__.startswith('1.'); "
            "torch.save({'meta': {'seed': np.int64(3), 'lr': np.float64(0.1), 'a': np.arange(3)}, "
            "'state_dict': {'w': torch.ones(2)}}, sys.argv[1], _use_new_zipfile_serialization=False)")
    subprocess.run([mmdet_python, "-c", code, str(path)], check=True)
    state, meta = load_source_checkpoint(str(path))
    assert torch.equal(state["w"], torch.ones(2))
    assert int(meta["meta"]["seed"]) == 3 and list(meta["meta"]["a"]) == [0, 1, 2]


def test_mmcv_ops_shim_matches_mmcv_kernel_layout(mmdet_python):
    """The shim's NMS and deformable convs (what the MMDetection side runs on) pass their
    self-check against mmcv's kernel layout and a plain greedy NMS (check_shim.py)."""
    run = subprocess.run([mmdet_python, os.path.join(REF_DIR, "check_shim.py")], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]

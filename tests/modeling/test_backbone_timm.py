"""timm backbones under our FPN (``modeling/backbone_timm.py``): levels named by stride, timm's
weight loading from a local file (and its refusal of a file that would run code), frozen levels,
norm options, the config's errors, and detectors that train and export with a MobileNet- and a
RegNet-class backbone."""
import os
import pickle

import numpy as np
import pytest
import torch
from torch import nn

from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from conftest import load_cfg, make_batch

timm = pytest.importorskip("timm", reason="optional timm dependency (requirements-extra.txt)")

from d2_anchorfree.modeling.backbone_timm import TimmBackbone  # noqa: E402

GFL_TINY = "configs/GFL/GFL_tiny_R_18_cpu.yaml"
TIMM_FPN = ("MODEL.BACKBONE.NAME", "build_timm_fpn_backbone")


def test_levels_are_named_by_stride_with_timms_channels():
    backbone = TimmBackbone(model_name="regnetx_002", out_features=["res3", "res4", "res5"])
    shapes = backbone.output_shape()
    # regnetx_002: feature_info channels [32, 24, 56, 152, 368] at strides [2, 4, 8, 16, 32]
    assert {k: (s.channels, s.stride) for k, s in shapes.items()} == {
        "res3": (56, 8), "res4": (152, 16), "res5": (368, 32)}
    out = backbone(torch.zeros(2, 3, 96, 128))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "res3": (2, 56, 12, 16), "res4": (2, 152, 6, 8), "res5": (2, 368, 3, 4)}


def test_bad_settings_fail_naming_the_key_and_the_choices(tmp_path):
    with pytest.raises(ValueError, match=r"MODEL\.TIMM\.NAME 'mobilenetv3_large_10' .*'mobilenetv3_large_100'"):
        TimmBackbone(model_name="mobilenetv3_large_10", out_features=["res3"])
    with pytest.raises(ValueError, match=r"MODEL\.TIMM\.NAME is empty"):
        TimmBackbone(model_name="", out_features=["res3"])
    with pytest.raises(ValueError, match=r"OUT_FEATURES \['res3', 'res6'\].*\['res1', 'res2', 'res3', 'res4', 'res5'\]"):
        TimmBackbone(model_name="regnetx_002", out_features=["res3", "res6"])
    with pytest.raises(ValueError, match=r"MODEL\.TIMM\.FREEZE_AT must be in \[0, 5\].*got 6"):
        TimmBackbone(model_name="regnetx_002", out_features=["res5"], freeze_at=6)
    with pytest.raises(ValueError, match=r"MODEL\.TIMM\.NORM .*'GN'"):
        TimmBackbone(model_name="regnetx_002", out_features=["res5"], norm="GN")
    with pytest.raises(FileNotFoundError, match=r"MODEL\.TIMM\.WEIGHTS .*missing\.pth"):
        TimmBackbone(model_name="regnetx_002", out_features=["res5"], weights=str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_file_loads_through_timm(tmp_path, suffix):
    torch.manual_seed(3)
    source = timm.create_model("regnetx_002")  # the whole classifier, as ImageNet weights come
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)  # nothing like an init: a loaded value cannot be a coincidence
    path = str(tmp_path / f"regnetx_002{suffix}")
    if suffix == ".pth":
        torch.save(source.state_dict(), path)
    else:
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    backbone = TimmBackbone(model_name="regnetx_002", out_features=["res3", "res4", "res5"], weights=path)
    loaded = backbone.model.state_dict()
    expected = source.state_dict()
    shared = [k for k in expected if k in loaded]
    assert len(shared) == len(loaded) > 100  # every backbone tensor comes from the file (not the head)
    for k in shared:
        torch.testing.assert_close(loaded[k], expected[k], rtol=0, atol=0, msg=k)


class _RunsCode:
    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_weights_file_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    payload = _RunsCode()
    payload.marker = str(marker)
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"stem.conv.weight": payload}, f)
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|global"):
        TimmBackbone(model_name="regnetx_002", out_features=["res5"], weights=str(path))
    assert not marker.exists()


def test_freeze_at_freezes_the_modules_of_the_first_levels():
    # mobilenetv3_small_050: level 0 is "bn1" (stride 2), level 1 "blocks.0" (stride 4)
    backbone = TimmBackbone(model_name="mobilenetv3_small_050", out_features=["res3", "res4", "res5"], freeze_at=2)
    m = backbone.model
    assert not any(p.requires_grad for p in m.conv_stem.parameters())
    assert isinstance(m.bn1, FrozenBatchNorm2d)
    assert not any(p.requires_grad for p in m.blocks[0].parameters())
    assert any(isinstance(x, FrozenBatchNorm2d) for x in m.blocks[0].modules())
    assert all(p.requires_grad for p in m.blocks[1].parameters())
    assert not any(isinstance(x, FrozenBatchNorm2d) for x in m.blocks[1].modules())
    assert any(isinstance(x, nn.BatchNorm2d) for x in m.blocks[1].modules())
    # none frozen: everything trains
    free = TimmBackbone(model_name="mobilenetv3_small_050", out_features=["res5"])
    assert all(p.requires_grad for p in free.parameters())


@pytest.mark.parametrize("norm, kind", [("FrozenBN", FrozenBatchNorm2d), ("SyncBN", nn.SyncBatchNorm)])
def test_norm_option_replaces_every_batchnorm(norm, kind):
    backbone = TimmBackbone(model_name="regnetx_002", out_features=["res5"], norm=norm)
    norms = [m for m in backbone.modules() if isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm, FrozenBatchNorm2d))]
    assert norms and all(type(m) is kind for m in norms)


def test_timm_keys_are_checked_like_every_component_key():
    with pytest.raises(ValueError, match=r"MODEL\.TIMM\.NAME"):  # set, but the ResNet backbone is used
        build_model(load_cfg(GFL_TINY, "MODEL.TIMM.NAME", "regnetx_002"))
    model = build_model(load_cfg(GFL_TINY, *TIMM_FPN, "MODEL.TIMM.NAME", "regnetx_002", "MODEL.TIMM.FREEZE_AT", 1))
    assert model.backbone.bottom_up.model_name == "regnetx_002"


@pytest.mark.slow  # two detectors, a training step and two exports each (about half a minute)
@pytest.mark.parametrize("name, bottom_up_path", [("mobilenetv3_small_050", False), ("regnetx_002", True)])
def test_detector_with_a_timm_backbone_trains_and_exports(name, bottom_up_path, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from d2_anchorfree.export import InferenceGraph, export_model
    from d2_anchorfree.export.verify import match_detections, run_exported

    cfg = load_cfg(GFL_TINY, *TIMM_FPN, "MODEL.TIMM.NAME", name, "MODEL.DENSE.SCORE_THRESH_TEST", 0.001,
                   "MODEL.FPN.BOTTOM_UP_PATH", bottom_up_path)  # the real-time config's plain FPN: tests/export
    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    before = {k: v.clone() for k, v in model.backbone.bottom_up.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with EventStorage():
        losses = model(make_batch(128, 160))
    sum(losses.values()).backward()
    optimizer.step()
    after = model.backbone.bottom_up.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the backbone learns
    model.eval()
    rng = np.random.default_rng(0)
    sample, image = (rng.integers(0, 255, size=s, dtype=np.uint8) for s in ((160, 192, 3), (224, 160, 3)))
    path = export_model(cfg, model, "onnx", str(tmp_path), torch.from_numpy(sample))
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = InferenceGraph(model)(torch.from_numpy(image))
    assert len(ref[1]) >= 20
    report = match_detections(ref, run_exported(path, image, session))
    assert report.ok, report.summary()

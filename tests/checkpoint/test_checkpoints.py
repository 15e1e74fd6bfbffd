"""Loading checkpoints: our own models and torchvision ResNet weights (made here, since no
weights can be downloaded) through detectron2's DetectionCheckpointer."""
import os
import subprocess
import sys

import pytest
import torch
import torchvision

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from conftest import REPO, load_cfg


def test_detectron2_checkpoint_round_trip(tmp_path):
    cfg = load_cfg("configs/FCOS/FCOS_tiny_R_18_cpu.yaml")
    torch.manual_seed(1)
    a = build_model(cfg)
    DetectionCheckpointer(a, save_dir=str(tmp_path)).save("model_x")
    torch.manual_seed(2)
    b = build_model(cfg)
    DetectionCheckpointer(b).load(str(tmp_path / "model_x.pth"))
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb and torch.equal(pa, pb), na


@pytest.mark.slow  # builds R-50s (torchvision's and ours)
def test_torchvision_resnet_weights_load_into_backbone(tmp_path):
    torch.manual_seed(3)
    tv = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # make BN statistics non-trivial so that a mismatch would show
        for m in tv.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    src = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), src)
    dst = tmp_path / "R-18.pkl"
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "convert_torchvision_to_d2.py"),
                    str(src), str(dst)], check=True, capture_output=True)
    cfg = load_cfg("configs/FCOS/FCOS_tiny_R_18_cpu.yaml", "MODEL.WEIGHTS", str(dst))
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    body = model.backbone.bottom_up
    assert torch.equal(body.stem.conv1.weight, tv.conv1.weight)
    assert torch.equal(body.stem.conv1.norm.running_mean, tv.bn1.running_mean)
    assert torch.equal(body.res2[0].conv2.weight, tv.layer1[0].conv2.weight)
    assert torch.equal(body.res3[0].shortcut.norm.weight, tv.layer2[0].downsample[1].weight)
    assert torch.equal(body.res5[1].conv1.norm.running_var, tv.layer4[1].bn1.running_var)

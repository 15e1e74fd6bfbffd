"""Every YAML under configs/ builds a model, trains one step (incl. an image with no objects)
with gradients reaching every parameter, and runs one inference, on the CPU."""
import glob
import os

import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from conftest import REPO, load_cfg, make_batch

CONFIGS = sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
)


def test_configs_are_found():
    assert any("FCOS_R_50_FPN_1x" in c for c in CONFIGS) and any("tiny" in c for c in CONFIGS)


@pytest.mark.parametrize("config_file", CONFIGS)
def test_config_trains_one_step_and_predicts(config_file):
    torch.manual_seed(0)
    # Small inputs keep R-50 configs fast; COCO-size NUM_CLASSES is kept as configured.
    cfg = load_cfg(config_file, "INPUT.MIN_SIZE_TEST", 128, "INPUT.MAX_SIZE_TEST", 160)
    model = build_model(cfg)
    model.train()
    batch = make_batch(128, 160)
    with EventStorage():
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    model.eval()
    with torch.no_grad():
        out = model([{"image": batch[0]["image"], "height": 256, "width": 320}])
    inst = out[0]["instances"]
    assert inst.image_size == (256, 320)  # rescaled to the requested output size
    assert len(inst) <= cfg.TEST.DETECTIONS_PER_IMAGE
    assert {"pred_boxes", "scores", "pred_classes"} <= set(inst.get_fields())

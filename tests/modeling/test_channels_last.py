"""``MODEL.CHANNELS_LAST``: the detector's 4-D weights stored channels-last (NHWC), for oneDNN's
faster convolutions on CPUs. The layout must survive loading weights and must not change what the
detector computes: the same losses, gradients and head outputs as the default layout, within float
rounding. The key means the same for detectron2's own meta-architecture (RetinaNet), which the
trainer and the predictor convert."""
import pytest
import torch

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from d2_anchorfree.engine import AnchorFreeTrainer
from d2_anchorfree.engine.predictor import AnchorFreePredictor

from conftest import load_cfg, make_batch

pytest.importorskip("timm", reason="optional timm dependency (requirements-extra.txt)")

REALTIME_GFL = "configs/realtime/GFL_RegNetX_002_cpu.yaml"
RETINANET = "configs/tiny/RetinaNet_tiny_R_18_cpu.yaml"  # detectron2's RetinaNet meta-architecture


def _pair():
    """The real-time GFL built twice, default layout and channels-last, with the same weights."""
    torch.manual_seed(0)
    low = ("MODEL.DENSE.SCORE_THRESH_TEST", 0.001)  # untrained scores start near the prior, 0.01
    plain = build_model(load_cfg(REALTIME_GFL, *low, "MODEL.CHANNELS_LAST", False))  # the config sets True
    nhwc = build_model(load_cfg(REALTIME_GFL, *low, "MODEL.CHANNELS_LAST", True))
    nhwc.load_state_dict(plain.state_dict())
    return plain, nhwc


def _is_nhwc(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _spatial_weights(model):
    """{name: weight} of the model's convolutions wider than 1x1 (the ones whose layout shows)."""
    return {n: p for n, p in model.named_parameters() if p.dim() == 4 and p.shape[2] * p.shape[3] > 1}


def test_weights_are_stored_channels_last_and_stay_so_after_loading():
    plain, nhwc = _pair()
    spatial = _spatial_weights(nhwc)
    assert len(spatial) > 20  # the backbone's, the FPN's and the head's 3x3 convs
    assert all(_is_nhwc(p) for p in spatial.values()), [n for n, p in spatial.items() if not _is_nhwc(p)]
    assert not any(_is_nhwc(p) for p in plain.parameters())
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), nhwc.state_dict().values()))


def _train_step_and_head_maps(model):
    """One training step's losses and gradients, then the eval head's maps of one image (the maps,
    not decoded detections: an untrained head's scores tie too often to compare boxes)."""
    model.train()
    with EventStorage():
        losses = model(make_batch(128, 160))
    sum(losses.values()).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    model.eval()
    with torch.no_grad():
        images = model.preprocess_image([make_batch(128, 160)[0]])
        features = model.backbone(images.tensor)
        outputs = model.head([features[f] for f in model.head_in_features])  # {name: per-level maps}
    return losses, grads, [m for maps in outputs.values() for m in maps]


def test_same_losses_gradients_and_head_outputs_as_the_default_layout():
    (losses, grads, maps), (nhwc_losses, nhwc_grads, nhwc_maps) = map(_train_step_and_head_maps, _pair())
    for name, value in losses.items():
        torch.testing.assert_close(nhwc_losses[name], value, rtol=1e-4, atol=1e-5)
    for name, value in grads.items():
        torch.testing.assert_close(nhwc_grads[name], value, rtol=1e-3, atol=1e-5, msg=name)
    assert len(maps) >= 10  # per level: class logits and box distributions
    for x, y in zip(maps, nhwc_maps):
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-4)


def test_a_value_that_is_not_a_bool_is_refused_naming_the_key():
    cfg = load_cfg(REALTIME_GFL)
    cfg.defrost()
    cfg.MODEL.CHANNELS_LAST = 1
    with pytest.raises(ValueError, match=r"MODEL.CHANNELS_LAST must be True or False, got 1"):
        build_model(cfg)


@pytest.mark.parametrize("build", [AnchorFreeTrainer.build_model, lambda cfg: AnchorFreePredictor(cfg).model],
                         ids=["trainer", "predictor"])
def test_detectron2s_retinanet_is_stored_channels_last_by_the_trainer_and_the_predictor(build):
    nhwc = _spatial_weights(build(load_cfg(RETINANET, "MODEL.CHANNELS_LAST", True)))
    plain = _spatial_weights(build(load_cfg(RETINANET)))
    assert len(nhwc) > 20 and nhwc.keys() == plain.keys()  # R-18, FPN and the RetinaNet head's 3x3 convs
    assert all(_is_nhwc(p) for p in nhwc.values()), [n for n, p in nhwc.items() if not _is_nhwc(p)]
    assert not any(_is_nhwc(p) for p in plain.values())


def test_a_value_that_is_not_a_bool_is_refused_for_retinanet_too():
    cfg = load_cfg(RETINANET)
    cfg.MODEL.CHANNELS_LAST = "True"
    with pytest.raises(ValueError, match=r"MODEL.CHANNELS_LAST must be True or False, got 'True'"):
        AnchorFreeTrainer.build_model(cfg)

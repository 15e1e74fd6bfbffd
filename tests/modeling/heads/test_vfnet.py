"""VarifocalNet: Varifocal Loss values and gradients, star-shaped offsets, the head (offset gradient
scaling, refinement), the IACS targets and box losses, inference decoding, the DCN backbone and
the VFNet configs end to end on the CPU."""
import glob
import math
import os

import pytest
import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone, build_model
from detectron2.structures import ImageList
from detectron2.utils.events import EventStorage

from d2_anchorfree.layers.deform_conv import DeformConv
from d2_anchorfree.modeling.assigners import ATSSAssigner, FCOSAssigner
from d2_anchorfree.modeling.backbone_dcn import DeformBottleneckBlock
from d2_anchorfree.modeling.heads.vfnet_head import VFNetHead, scale_offset_gradient, star_offsets
from d2_anchorfree.modeling.losses.varifocal import varifocal_loss

from conftest import REPO, load_cfg, loss_terms_on, make_batch, make_instances, slow_unless_tiny, train_step_and_predict

TINY = "configs/VFNet/VFNet_tiny_R_18_cpu.yaml"
VFNET_CONFIGS = sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "configs", "VFNet", "*.yaml")))
LOG3 = math.log(3.0)  # logit of p = 0.75


# ---------------------------------------------------------------- Varifocal Loss (Eq. 2)

def test_vfl_positive_iou_weighted_and_not():
    # p = 0.75, q = 0.5: BCE = -(0.5 log 0.75 + 0.5 log 0.25) = 0.143841 + 0.693147 = 0.836988.
    # iou_weighted: q * BCE = 0.418494; unweighted: BCE = 0.836988.
    logits = torch.tensor([[LOG3]])
    q = torch.tensor([[0.5]])
    torch.testing.assert_close(varifocal_loss(logits, q), torch.tensor(0.418494), atol=1e-5, rtol=0)
    torch.testing.assert_close(varifocal_loss(logits, q, iou_weighted=False), torch.tensor(0.836988),
                               atol=1e-5, rtol=0)


def test_vfl_negative_is_down_weighted_only_by_alpha_p_gamma():
    # p = 0.75, q = 0: alpha p^gamma (-log(1 - p)) = 0.75 * 0.5625 * 1.386294 = 0.584843,
    # the same with iou_weighted off; alpha = 0.5, gamma = 1: 0.5 * 0.75 * 1.386294 = 0.519860.
    logits, q = torch.tensor([[LOG3]]), torch.zeros(1, 1)
    for weighted in (True, False):
        torch.testing.assert_close(varifocal_loss(logits, q, iou_weighted=weighted), torch.tensor(0.584843),
                                   atol=1e-5, rtol=0)
    torch.testing.assert_close(varifocal_loss(logits, q, alpha=0.5, gamma=1.0), torch.tensor(0.519860),
                               atol=1e-5, rtol=0)


def test_vfl_gradients():
    # Positive: L = -q (q log p + (1 - q) log(1 - p)) -> dL/dz = q (p - q) = 0.5 * 0.25 = 0.125.
    # Negative: L = -a p^g log(1 - p) -> dL/dz = a p^g (p - g (1 - p) log(1 - p))
    #   = 0.75 * 0.5625 * (0.75 + 2 * 0.25 * 1.386294) = 0.421875 * 1.443147 = 0.608828
    #   (the modulating factor p^g is differentiated, as in focal loss).
    logits = torch.tensor([[LOG3, LOG3]], requires_grad=True)
    varifocal_loss(logits, torch.tensor([[0.5, 0.0]])).backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[0.125, 0.608828]]), atol=1e-5, rtol=0)


def test_vfl_sum_none_and_errors():
    # Row 0: a positive (q = 0.5 at p = 0.75: 0.418494) and a negative at p = 0.5
    # (0.75 * 0.25 * log 2 = 0.129965); row 1: positive q = 1 at p = 0.5 (1 * log 2 = 0.693147)
    # and a negative at p = 0.75 (0.584843).
    logits = torch.tensor([[LOG3, 0.0], [0.0, LOG3]])
    q = torch.tensor([[0.5, 0.0], [1.0, 0.0]])
    expected = torch.tensor([[0.418494, 0.129965], [0.693147, 0.584843]])
    torch.testing.assert_close(varifocal_loss(logits, q, reduction="none"), expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(varifocal_loss(logits, q), expected.sum(), atol=1e-5, rtol=0)
    assert varifocal_loss(torch.zeros(0, 3), torch.zeros(0, 3)) == 0
    with pytest.raises(ValueError, match="must lie in"):
        varifocal_loss(logits, q * 2)
    with pytest.raises(ValueError, match="must match"):
        varifocal_loss(logits, q[:1])
    with pytest.raises(ValueError, match="reduction"):
        varifocal_loss(logits, q, reduction="max")


# ---------------------------------------------------------------- star-shaped offsets (Sec. 4.1)

def test_star_offsets_exact():
    # Location A: (l, t, r, b) = (16, 8, 24, 32) px at stride 8 = (2, 1, 3, 4) feature pixels.
    # Points (dy, dx) per kernel position k = 3 i + j: dy = (-t, 0, b)[i], dx = (-l, 0, r)[j],
    # minus the regular grid (i - 1, j - 1):
    #   k0 (-1,-2)-(-1,-1) = (0,-1)  k1 (-1,0)-(-1,0) = (0,0)  k2 (-1,3)-(-1,1) = (0,2)
    #   k3 (0,-2)-(0,-1)   = (0,-1)  k4 (0,0)-(0,0)   = (0,0)  k5 (0,3)-(0,1)   = (0,2)
    #   k6 (4,-2)-(1,-1)   = (3,-1)  k7 (4,0)-(1,0)   = (3,0)  k8 (4,3)-(1,1)   = (3,2)
    # Location B: a zero-size box: every point is the location, offsets = -grid.
    ltrb = torch.tensor([[16.0, 8.0, 24.0, 32.0], [0.0, 0.0, 0.0, 0.0]]).t().reshape(1, 4, 1, 2)
    out = star_offsets(ltrb, 8)
    assert out.shape == (1, 18, 1, 2)
    expected_a = [0, -1, 0, 0, 0, 2, 0, -1, 0, 0, 0, 2, 3, -1, 3, 0, 3, 2]
    expected_b = [1, 1, 1, 0, 1, -1, 0, 1, 0, 0, 0, -1, -1, 1, -1, 0, -1, -1]
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor(expected_a, dtype=torch.float32))
    torch.testing.assert_close(out[0, :, 0, 1], torch.tensor(expected_b, dtype=torch.float32))
    with pytest.raises(ValueError, match="stride"):
        star_offsets(ltrb, 0)
    with pytest.raises(ValueError, match="ltrb"):
        star_offsets(ltrb[:, :2], 8)


def test_star_offsets_drive_deform_conv_to_the_nine_points():
    # Feature X[r, c] = 100 r + c on a 9x9 map; location (row 4, col 4) with (l, t, r, b) =
    # (2, 1, 3, 4) feature pixels (stride 1). Output channel k of a 3x3 DeformConv has a single
    # unit weight at kernel position k, so it reads the k-th star point:
    #   (3,2) (3,4) (3,7) / (4,2) (4,4) (4,7) / (8,2) (8,4) (8,7)
    #   = top-left corner, top point, top-right corner, left, center, right, bottom-left, bottom,
    #     bottom-right.
    x = (100 * torch.arange(9.0)[:, None] + torch.arange(9.0)[None]).reshape(1, 1, 9, 9)
    conv = DeformConv(1, 9, 3, padding=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight.view(9, 9)[torch.arange(9), torch.arange(9)] = 1.0
    ltrb = torch.tensor([2.0, 1.0, 3.0, 4.0]).reshape(1, 4, 1, 1).expand(1, 4, 9, 9)
    out = conv(x, star_offsets(ltrb, 1))[0, :, 4, 4]
    expected = torch.tensor([302, 304, 307, 402, 404, 407, 802, 804, 807], dtype=torch.float32)
    torch.testing.assert_close(out, expected)


def test_scale_offset_gradient():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = scale_offset_gradient(x, 0.1)
    torch.testing.assert_close(y, x.detach())
    (y * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([0.1, 0.2, 0.3]))
    assert not scale_offset_gradient(x, 0.0).requires_grad


# ---------------------------------------------------------------- head

def _head(offset_grad_mul=0.1, seed=0, init_box_norm="reg_denom"):
    torch.manual_seed(seed)
    shapes = [ShapeSpec(channels=32, stride=8), ShapeSpec(channels=32, stride=16)]
    return VFNetHead(input_shape=shapes, num_classes=3, num_convs=1, norm="GN",
                     offset_grad_mul=offset_grad_mul, init_box_norm=init_box_norm)


def _features(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 32, 6, 8, generator=g), torch.randn(2, 32, 3, 4, generator=g)]


def test_head_shapes_and_initial_boxes():
    out = _head()(_features())
    assert set(out) == {"logits", "ltrb", "ltrb_init"}
    logits, init, refine = out["logits"], out["ltrb_init"], out["ltrb"]
    assert [t.shape for t in logits] == [(2, 3, 6, 8), (2, 3, 3, 4)]
    assert [t.shape for t in init] == [(2, 4, 6, 8), (2, 4, 3, 4)]
    assert [t.shape for t in refine] == [(2, 4, 6, 8), (2, 4, 3, 4)]
    # The authors' init boxes (reg_denom) start near exp(0) * 8 strides per side (bias 0, weights
    # ~N(0, 0.01): x ~ N(0, ~0.2), so exp(x) within a factor 2 of 1, median ~1); refinement factors
    # start near exp(0) = 1; scores start near the prior 0.01.
    for level, stride in enumerate((8, 16)):
        log_ratio = (init[level] / (8.0 * stride)).log()
        assert log_ratio.abs().max() < 0.7 and log_ratio.median().abs() < 0.1
        torch.testing.assert_close(refine[level], init[level], atol=0.0, rtol=0.2)
    assert (logits[0].sigmoid() - 0.01).abs().max() < 0.01
    # "relu": relu(s x) * stride from a bias of 4, so 4 strides per side (+- 1 stride).
    relu_init = _head(init_box_norm="relu")(_features())["ltrb_init"]
    for level, stride in enumerate((8, 16)):
        torch.testing.assert_close(relu_init[level], torch.full_like(relu_init[level], 4.0 * stride),
                                   atol=stride, rtol=0)
    with pytest.raises(ValueError, match="OFFSET_GRAD_MUL"):
        _head(offset_grad_mul=1.5)
    with pytest.raises(ValueError, match="INIT_BOX_NORM"):
        _head(init_box_norm="exp")


def test_refinement_decoding_and_detach():
    # Refinement conv with zero weights, bias log 4 and Scale 0.5: factors = exp(0.5 log 4) = 2 on
    # every side, so ltrb_refine = 2 * ltrb_init exactly; the refined boxes do not backprop into
    # the initial box (ltrb_init.detach() in the product; the factors are constant here).
    head = _head()
    with torch.no_grad():
        head.box_refine_pred.weight.zero_()
        head.box_refine_pred.bias.fill_(math.log(4.0))
        for s in head.scales_refine:
            s.scale.fill_(0.5)
    out = head(_features())
    init, refine = out["ltrb_init"], out["ltrb"]
    for i, r in zip(init, refine):
        torch.testing.assert_close(r, 2 * i.detach())
    sum(r.sum() for r in refine).backward()
    assert head.box_init_pred.weight.grad is None or not head.box_init_pred.weight.grad.any()


def test_offset_gradient_multiplier_scales_box_gradient_through_offsets():
    # The classification branch depends on the initial box only through the star offsets, so its
    # gradient into the init-box conv is 0 with multiplier 0 and exactly m times the m = 1
    # gradient otherwise (same forward values for every m).
    grads = {}
    for m in (0.0, 0.1, 1.0):
        head = _head(offset_grad_mul=m, seed=0)
        logits = head(_features())["logits"]
        sum((l * l).sum() for l in logits).backward()
        g = head.box_init_pred.weight.grad
        grads[m] = torch.zeros_like(head.box_init_pred.weight) if g is None else g
    assert grads[1.0].abs().max() > 0
    assert not grads[0.0].any()
    # float32 sums of 0.1 * g vs 0.1 * sum(g): round-off relative to the largest gradient, which
    # matters on elements that nearly cancel (rtol alone fails there by ~1e-8 absolute).
    scale = grads[1.0].abs().max().item()
    torch.testing.assert_close(grads[0.1], 0.1 * grads[1.0], rtol=1e-4, atol=1e-6 * scale)


# ---------------------------------------------------------------- meta-architecture

@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_model(load_cfg(TINY))


def test_assigner_choice():
    model = build_model(load_cfg(TINY))
    assert isinstance(model.criterion.assigner, ATSSAssigner)
    model = build_model(load_cfg(TINY, "MODEL.DENSE.ASSIGNER", "FCOSAssigner"))
    assert isinstance(model.criterion.assigner, FCOSAssigner)


def test_iacs_targets_and_box_losses(tiny_model):
    # Points (4, 4) [GT 0], (12, 4) [background], (20, 4) [IGNORE]; one GT (0, 0, 8, 8), class 0.
    # Initial ltrb at the positive (4, 4, 8, 4) -> box (0, 0, 12, 8): IoU = 64 / 96 = 2/3, the
    #   enclosing box is the union, GIoU = 2/3; weight = IoU = 2/3, normalizer max(2/3, 1) = 1:
    #   1.5 * (2/3) * (1 - 2/3) = 1/3.
    # Refined ltrb (2, 2, 2, 2) -> box (2, 2, 6, 6): IoU = 16 / 64 = 1/4 = GIoU:
    #   2.0 * (1/4) * (3/4) / 1 = 0.375.
    # IACS target: q = IoU of the *refined* box = 1/4. All logits 0 (p = 1/2, BCE = log 2):
    #   positive q log 2 = 0.173287; background 0.75 * 0.25 * log 2 = 0.129965; the ignored point
    #   adds nothing; num_pos = 1 -> 0.303251.
    shifts = [torch.tensor([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0]])] + [torch.zeros(0, 2)] * 4
    gt = [make_instances((32, 32), [[0, 0, 8, 8]], [0])]
    matched = torch.tensor([[0, -1, -2]])
    logits = torch.zeros(1, 3, 1)
    ltrb_init = torch.tensor([[[4.0, 4, 8, 4], [1, 1, 1, 1], [1, 1, 1, 1]]])
    ltrb_refine = torch.tensor([[[2.0, 2, 2, 2], [1, 1, 1, 1], [1, 1, 1, 1]]])
    losses = loss_terms_on(tiny_model, shifts, gt, matched,
                           {"logits": logits, "ltrb": ltrb_refine, "ltrb_init": ltrb_init})
    assert set(losses) == {"loss_cls", "loss_box_init", "loss_box"}
    torch.testing.assert_close(losses["loss_cls"], torch.tensor(0.303251), atol=1e-5, rtol=0)
    torch.testing.assert_close(losses["loss_box_init"], torch.tensor(1 / 3), atol=1e-5, rtol=0)
    torch.testing.assert_close(losses["loss_box"], torch.tensor(0.375), atol=1e-5, rtol=0)


def test_box_loss_normalized_by_iou_sum(tiny_model):
    # Two positives of GT (0, 0, 8, 8) at points (4, 4) and (4, 4) of two images, both with the
    # exact initial box (IoU 1, loss 0) and refined boxes of IoU 1 and 1/4 (GIoU 1/4):
    #   refined: 2.0 * (1 * 0 + 0.25 * 0.75) / (1 + 0.25) = 0.3; 2 positives for the VFL:
    #   (1 * log 2 + 0.25 * log 2) / 2 = 0.433217.
    shifts = [torch.tensor([[4.0, 4.0]])] + [torch.zeros(0, 2)] * 4
    gt = [make_instances((32, 32), [[0, 0, 8, 8]], [0]) for _ in range(2)]
    matched = torch.tensor([[0], [0]])
    ltrb_init = torch.full((2, 1, 4), 4.0)
    ltrb_refine = torch.tensor([[[4.0, 4, 4, 4]], [[2.0, 2, 2, 2]]])
    losses = loss_terms_on(tiny_model, shifts, gt, matched,
                           {"logits": torch.zeros(2, 1, 1), "ltrb": ltrb_refine, "ltrb_init": ltrb_init})
    torch.testing.assert_close(losses["loss_box_init"], torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(losses["loss_box"], torch.tensor(0.3), atol=1e-5, rtol=0)
    torch.testing.assert_close(losses["loss_cls"], torch.tensor(0.433217), atol=1e-5, rtol=0)


def test_inference_decodes_refined_boxes(tiny_model):
    # 128x160 input: levels of 16x20, 8x10, 4x5, 2x3, 1x2 cells. One confident location on P3
    # (stride 8) at row 1, column 2 -> point ((2 + 0.5) 8, (1 + 0.5) 8) = (20, 12); refined ltrb
    # (3, 4, 5, 6) -> box (17, 8, 25, 18); the initial ltrb (50 on every side) must not be used.
    # Score = sigmoid(2) = 0.880797 (no centerness); every other score is sigmoid(-10) < 0.05.
    sizes = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
    features = [torch.zeros(1, 64, h, w) for h, w in sizes]
    logits = [torch.full((1, 1, h, w), -10.0) for h, w in sizes]
    logits[0][0, 0, 1, 2] = 2.0
    init = [torch.full((1, 4, h, w), 50.0) for h, w in sizes]
    refine = [torch.ones(1, 4, h, w) for h, w in sizes]
    refine[0][0, :, 1, 2] = torch.tensor([3.0, 4.0, 5.0, 6.0])
    images = ImageList(torch.zeros(1, 3, 128, 160), [(128, 160)])
    predictions = {"logits": logits, "ltrb": refine, "ltrb_init": init}
    (inst,) = tiny_model.forward_inference(images, features, predictions)
    assert len(inst) == 1
    torch.testing.assert_close(inst.pred_boxes.tensor, torch.tensor([[17.0, 8.0, 25.0, 18.0]]))
    torch.testing.assert_close(inst.scores, torch.tensor([0.880797]), atol=1e-6, rtol=0)
    assert inst.pred_classes.tolist() == [0]


def test_only_empty_images_train():
    torch.manual_seed(0)
    model = build_model(load_cfg(TINY))
    model.train()
    batch = [make_batch(128, 160)[1]]  # no objects
    with EventStorage():
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total) and losses["loss_box"] == 0
    total.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------- DCN backbone

def _small_dcn_cfg(*opts):
    return load_cfg(
        "configs/VFNet/VFNet_R_50_DCN_FPN_1x.yaml",
        "MODEL.RESNETS.RES2_OUT_CHANNELS", 32, "MODEL.RESNETS.WIDTH_PER_GROUP", 8,
        "MODEL.RESNETS.STEM_OUT_CHANNELS", 16, "MODEL.FPN.OUT_CHANNELS", 32, *opts)


def test_dcn_backbone_forward_backward():
    torch.manual_seed(0)
    backbone = build_backbone(_small_dcn_cfg("MODEL.BACKBONE.FREEZE_AT", 0))
    bottom_up = backbone.bottom_up
    for name, deform in (("res2", False), ("res3", True), ("res4", True), ("res5", True)):
        assert all(isinstance(b, DeformBottleneckBlock) == deform for b in getattr(bottom_up, name))
    assert bottom_up.res3[0].conv2.__class__.__name__ == "ModulatedDeformConv"
    out = backbone(torch.randn(1, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p3": (1, 32, 8, 12), "p4": (1, 32, 4, 6), "p5": (1, 32, 2, 3), "p6": (1, 32, 1, 2),
        "p7": (1, 32, 1, 1)}
    sum((v ** 2).sum() for v in out.values()).backward()
    # The zero-initialised offset convs still receive a gradient.
    assert bottom_up.res4[0].conv2_offset.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in backbone.parameters() if p.requires_grad)


def test_dcn_v1_backbone_with_zero_offsets_equals_plain_resnet():
    # A fresh DCNv1 block (zero offset conv) is the regular bottleneck: with the plain backbone's
    # weights loaded (the parameter names match; only conv2_offset is new) the outputs are equal.
    torch.manual_seed(0)
    plain = build_backbone(_small_dcn_cfg("MODEL.BACKBONE.NAME", "build_fcos_resnet_fpn_backbone",
                                          "MODEL.RESNETS.DEFORM_ON_PER_STAGE", [False] * 4)).eval()
    dcn = build_backbone(_small_dcn_cfg("MODEL.RESNETS.DEFORM_MODULATED", False)).eval()
    missing, unexpected = dcn.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all("conv2_offset" in k for k in missing)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a, b = plain(x), dcn(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4)


def test_dcn_on_basic_blocks_raises():
    cfg = load_cfg(TINY, "MODEL.BACKBONE.NAME", "build_fcos_resnet_fpn_dcn_backbone",
                   "MODEL.RESNETS.DEFORM_ON_PER_STAGE", [False, True, True, True])
    with pytest.raises(ValueError, match="DEPTH >= 50"):
        build_backbone(cfg)


# ---------------------------------------------------------------- configs end to end

def test_vfnet_configs_found():
    assert {os.path.basename(c) for c in VFNET_CONFIGS} == {
        "VFNet_R_50_FPN_1x.yaml", "VFNet_R_50_DCN_FPN_1x.yaml", "VFNet_tiny_R_18_cpu.yaml"}


@pytest.mark.parametrize("config_file", slow_unless_tiny(VFNET_CONFIGS))
def test_vfnet_config_trains_one_step_and_predicts(config_file):
    cfg = load_cfg(config_file, "INPUT.MIN_SIZE_TEST", 128, "INPUT.MAX_SIZE_TEST", 160)
    assert cfg.MODEL.DENSE.NUM_CONVS == 3 and cfg.MODEL.META_ARCHITECTURE == "VFNet"
    model, losses = train_step_and_predict(cfg)  # one image with two objects, one with none
    assert isinstance(model.head, VFNetHead)
    assert set(losses) == {"loss_cls", "loss_box_init", "loss_box"}
    assert all(torch.isfinite(v) for v in losses.values()), losses
    # ATSS finds positives for the two objects, so every loss is non-zero at initialisation.
    assert all(v > 0 for v in losses.values()), losses

"""The model options that converted checkpoints need, each on hand-computed values: no ReLU between
P6 and P7 (MODEL.FPN.TOP_LEVELS_RELU), PANet's bottom-up path (MODEL.FPN.BOTTOM_UP_PATH), tower conv biases (MODEL.DENSE.TOWER_CONV_BIAS), a DCNv2
as the last tower conv (MODEL.DENSE.DCN_ON_LAST_CONV), anchor deltas (MODEL.FCOS_HEAD.BOX_CODER),
candidates by class score (MODEL.DENSE.TOPK_CANDIDATES_BY), empty boxes dropped before NMS and
unclipped NMS (TOOD), score voting (MODEL.DENSE.SCORE_VOTING_SIGMA), NMS-free score peaks
(MODEL.DENSE.POSTPROCESS "peaks") and VFNet's initial box normalizers (MODEL.VFNET_HEAD.INIT_BOX_NORM)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling import FPN, build_backbone, build_model

from d2_anchorfree.layers.deform_conv import ModulatedDeformConvWithOffsets
from d2_anchorfree.modeling import detector as detector_module
from d2_anchorfree.modeling.backbone import LastLevelsFromFeature
from d2_anchorfree.modeling.heads.fcos_head import FCOSHead
from d2_anchorfree.modeling.heads.tood_head import TOODHead
from d2_anchorfree.modeling.heads.towers import DELTA_MAX_LOG_RATIO, anchor_deltas_to_ltrb, conv_tower
from d2_anchorfree.modeling.heads.vfnet_head import VFNetHead
from d2_anchorfree.modeling.postprocessing import (dense_detections, dense_inference, peak_factors, score_voting,
                                                   select_candidates)

from conftest import load_cfg

FCOS_TINY = "configs/FCOS/FCOS_tiny_R_18_cpu.yaml"
TOOD_TINY = "configs/TOOD/TOOD_tiny_R_18_cpu.yaml"
SHAPES = [ShapeSpec(channels=32, stride=8), ShapeSpec(channels=32, stride=16)]


def _features(seed=0, n=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 32, 4, 5, generator=g), torch.randn(n, 32, 2, 3, generator=g)]


# ---------------------------------------------------------------------------------------------
# MODEL.FPN.TOP_LEVELS_RELU


def _top_block(relu_between):
    """1 channel; P6 = the input at the even positions (3x3 conv, stride 2, centre tap 1), P7 = the
    sum of the 2x2 P6 window its 3x3 stride-2 kernel (all ones, padding 1) covers, plus 0.5."""
    block = LastLevelsFromFeature(1, 1, 2, "p5", relu_between=relu_between)
    with torch.no_grad():
        block.convs[0].weight.zero_()
        block.convs[0].weight[0, 0, 1, 1] = 1.0
        block.convs[0].bias.zero_()
        block.convs[1].weight.fill_(1.0)
        block.convs[1].bias.fill_(0.5)
    return block


def test_p7_with_and_without_relu_hand_computed():
    x = torch.full((1, 1, 4, 4), 100.0)  # odd positions are never sampled by the centre tap
    x[0, 0, 0, 0], x[0, 0, 0, 2], x[0, 0, 2, 0], x[0, 0, 2, 2] = 1.0, -2.0, -3.0, 4.0
    for relu_between, p7 in ((True, 5.5), (False, 0.5)):
        p6, out7 = _top_block(relu_between)(x)
        assert p6.tolist() == [[[[1.0, -2.0], [-3.0, 4.0]]]]
        # P7 (1x1) covers P6 rows/cols -1..1 (padding 1): with ReLU 1 + 0 + 0 + 4 + 0.5 = 5.5,
        # without 1 - 2 - 3 + 4 + 0.5 = 0.5
        assert out7.tolist() == [[[[p7]]]]


def test_p7_equals_conv_of_relu_p6_or_of_p6():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 9, 7)
    for relu_between in (True, False):
        block = LastLevelsFromFeature(3, 4, 2, "p5", relu_between=relu_between)
        p6, p7 = block(x)
        c0, c1 = block.convs
        torch.testing.assert_close(p6, F.conv2d(x, c0.weight, c0.bias, stride=2, padding=1))
        assert (p6 < 0).any() and p7.shape == (2, 4, 3, 2)  # ceil(9 / 4), ceil(7 / 4)
        src = F.relu(p6) if relu_between else p6
        torch.testing.assert_close(p7, F.conv2d(src, c1.weight, c1.bias, stride=2, padding=1))
        other = p6 if relu_between else F.relu(p6)
        assert not torch.allclose(p7, F.conv2d(other, c1.weight, c1.bias, stride=2, padding=1))


def test_top_levels_relu_comes_from_the_config():
    assert build_backbone(load_cfg(FCOS_TINY)).top_block.relu_between is True  # default
    backbone = build_backbone(load_cfg(FCOS_TINY, "MODEL.FPN.TOP_LEVELS_RELU", False))
    assert backbone.top_block.relu_between is False
    # MMDetection: relu_before_extra_convs=False in ATSS/GFL/TOOD, True in FCOS/VFNet
    expected = {"gfl_r50_fpn_1x_coco": False, "atss_r50_fpn_1x_coco": False, "tood_r50_fpn_1x_coco": False,
                "vfnet_r50_fpn_1x_coco": True, "fcos_r50-caffe_fpn_gn-head_1x_coco": True}
    for name, relu in expected.items():
        assert load_cfg(f"configs/zoo/mmdet/{name}.yaml").MODEL.FPN.TOP_LEVELS_RELU is relu, name


# ---------------------------------------------------------------------------------------------
# MODEL.FPN.BOTTOM_UP_PATH


def test_bottom_up_path_aggregates_p3_to_p5_then_takes_the_top_levels_from_n5():
    """N3 = P3, N4 = out(P4 + down(N3)), N5 = out(P5 + down(N4)), P6/P7 = top_block(N5), with the
    P3-P5 of the same weights' plain top-down FPN; names, strides and channels of the plain FPN."""
    torch.manual_seed(0)
    pan = build_backbone(load_cfg(FCOS_TINY, "MODEL.FPN.BOTTOM_UP_PATH", True))
    plain = build_backbone(load_cfg(FCOS_TINY))
    assert {k: (v.channels, v.stride) for k, v in pan.output_shape().items()} == \
        {k: (v.channels, v.stride) for k, v in plain.output_shape().items()} == \
        {f"p{i}": (64, 2 ** i) for i in range(3, 8)}
    assert pan.size_divisibility == plain.size_divisibility == 32
    pan.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        out = pan(x)
        top_down = FPN.forward(pan, x)  # the FPN part alone (no top block on it)
        assert list(top_down) == ["p3", "p4", "p5"]
        n3 = top_down["p3"]
        n4 = pan.path_output[0](top_down["p4"] + pan.path_downsample[0](n3))
        n5 = pan.path_output[1](top_down["p5"] + pan.path_downsample[1](n4))
        p6, p7 = pan.path_top_block(n5)
    assert list(out) == ["p3", "p4", "p5", "p6", "p7"]
    for name, want in zip(out, (n3, n4, n5, p6, p7)):
        torch.testing.assert_close(out[name], want)
    assert out["p7"].shape == (1, 64, 1, 1) and not torch.allclose(out["p5"], top_down["p5"])


def test_bottom_up_path_needs_the_top_levels_from_p5():
    with pytest.raises(ValueError, match=r"MODEL.FPN.TOP_LEVELS_IN_FEATURE must be 'p5', got 'res5'"):
        build_backbone(load_cfg(FCOS_TINY, "MODEL.FPN.BOTTOM_UP_PATH", True, "MODEL.FPN.TOP_LEVELS_IN_FEATURE", "res5"))


# ---------------------------------------------------------------------------------------------
# MODEL.DENSE.TOWER_CONV_BIAS


def _convs(tower):
    return [m for m in tower if isinstance(m, (nn.Conv2d, ModulatedDeformConvWithOffsets))]


def test_tower_conv_bias():
    gn_auto = conv_tower(32, 2, "GN")
    assert [type(m).__name__ for m in gn_auto] == ["Conv2d", "GroupNorm", "ReLU"] * 2
    assert all(c.bias is None for c in _convs(gn_auto))  # the GN shift makes a bias redundant
    gn_always = conv_tower(32, 2, "GN", "always")
    assert len(_convs(gn_always)) == 2 and all(c.bias is not None for c in _convs(gn_always))
    assert sorted(gn_always.state_dict()) == ["0.bias", "0.weight", "1.bias", "1.weight",
                                              "3.bias", "3.weight", "4.bias", "4.weight"]
    plain = conv_tower(32, 2, "")
    assert [type(m).__name__ for m in plain] == ["Conv2d", "ReLU"] * 2
    assert all(c.bias is not None for c in _convs(plain))
    with pytest.raises(ValueError, match=r"MODEL\.DENSE\.TOWER_CONV_BIAS.*'never'"):
        conv_tower(32, 2, "GN", "never")


def test_tower_conv_bias_reaches_every_head_tower():
    fcos = FCOSHead(input_shape=SHAPES, num_classes=2, num_convs=2, tower_conv_bias="always")
    for tower in (fcos.cls_tower, fcos.box_tower):
        assert [c.bias.abs().max().item() for c in _convs(tower)] == [0.0, 0.0]  # present, zero-initialised
    vfnet = VFNetHead(input_shape=SHAPES, num_classes=2, num_convs=1, tower_conv_bias="always")
    assert vfnet.box_init_conv[0].bias is not None
    assert VFNetHead(input_shape=SHAPES, num_classes=2, num_convs=1).box_init_conv[0].bias is None
    tood = TOODHead(input_shape=SHAPES, num_classes=2, num_convs=2, tower_conv_bias="always")
    assert all(conv[0].bias is not None for conv in tood.inter_convs)
    cfg = load_cfg(FCOS_TINY, "MODEL.DENSE.TOWER_CONV_BIAS", "never")
    with pytest.raises(ValueError, match=r"MODEL\.DENSE\.TOWER_CONV_BIAS"):
        build_model(cfg)


# ---------------------------------------------------------------------------------------------
# MODEL.DENSE.DCN_ON_LAST_CONV / ModulatedDeformConvWithOffsets


def _dcn(seed=0):
    torch.manual_seed(seed)
    dcn = ModulatedDeformConvWithOffsets(3, 4, 3, padding=1)
    with torch.no_grad():
        dcn.bias.copy_(torch.tensor([0.5, -1.0, 2.0, 0.25]))
    return dcn, torch.randn(2, 3, 5, 6)


def test_dcn_with_its_zero_offset_conv_is_half_the_conv_plus_bias():
    dcn, x = _dcn()
    assert dcn.conv_offset.out_channels == 27  # 18 offsets + 9 mask logits (3x3 kernel)
    assert not dcn.conv_offset.weight.any() and not dcn.conv_offset.bias.any()
    # offsets 0, every sample weighted sigmoid(0) = 0.5; the bias is added after the modulation
    expected = 0.5 * F.conv2d(x, dcn.weight, padding=1) + dcn.bias.view(1, 4, 1, 1)
    torch.testing.assert_close(dcn(x), expected, rtol=1e-5, atol=1e-5)


def test_dcn_offset_layout_dy_then_dx_and_mask_last():
    dcn, x = _dcn()
    with torch.no_grad():
        dcn.conv_offset.bias[0:18:2] = 1.0  # channel 2k: dy of kernel point k = +1 row (down)
        dcn.conv_offset.bias[18:] = 20.0  # mask logits: sigmoid(20) = 1 - 2e-9
    out = dcn(x)
    conv = F.conv2d(x, dcn.weight, dcn.bias, padding=1)
    # output row y samples input rows y + i (i = 0..2) instead of y - 1 + i: the regular conv one
    # row down, i.e. the conv output shifted up by one row
    torch.testing.assert_close(out[:, :, :-1], conv[:, :, 1:], rtol=1e-5, atol=1e-5)
    # last row: kernel rows 1, 2 fall on rows 5, 6 outside the 5-row input (zeros), only row 0 counts
    last = F.conv2d(x[:, :, -1:], dcn.weight[:, :, :1], dcn.bias, padding=(0, 1))
    torch.testing.assert_close(out[:, :, -1:], last, rtol=1e-5, atol=1e-5)
    # had channel 2k been dx, the columns would have shifted instead
    assert not torch.allclose(out[:, :, :, :-1], conv[:, :, :, 1:], atol=1e-3)


def test_head_with_dcn_on_last_conv():
    torch.manual_seed(0)
    head = FCOSHead(input_shape=SHAPES, num_classes=2, num_convs=2, dcn_on_last_conv=True)
    for tower in (head.cls_tower, head.box_tower):
        # [conv, GN, ReLU, DCN, GN, ReLU]
        assert type(tower[0]) is nn.Conv2d and isinstance(tower[3], ModulatedDeformConvWithOffsets)
        dcn = tower[3]
        assert dcn.bias is None  # "auto" with GN
        assert not dcn.conv_offset.weight.any() and not dcn.conv_offset.bias.any()  # stays a regular conv
        assert 0.005 < dcn.weight.std().item() < 0.015  # N(0, 0.01) like the other tower convs
    keys = set(head.state_dict())
    assert {"cls_tower.3.weight", "cls_tower.3.conv_offset.weight", "box_tower.3.conv_offset.bias"} <= keys
    out = head(_features())
    assert [t.shape for t in out["ltrb"]] == [(1, 4, 4, 5), (1, 4, 2, 3)]
    # from the config: the last of MODEL.DENSE.NUM_CONVS convs (tiny: 2 -> index 3 of [conv, GN, ReLU] x 2)
    cfg = load_cfg(FCOS_TINY, "MODEL.DENSE.DCN_ON_LAST_CONV", True)
    head = FCOSHead(cfg, [ShapeSpec(channels=cfg.MODEL.FPN.OUT_CHANNELS, stride=8)])
    assert [i for i, m in enumerate(head.cls_tower) if isinstance(m, ModulatedDeformConvWithOffsets)] == [
        3 * (cfg.MODEL.DENSE.NUM_CONVS - 1)]
    with pytest.raises(ValueError, match="DCN_ON_LAST_CONV"):
        TOODHead(input_shape=SHAPES, num_classes=2, num_convs=2, dcn_on_last_conv=True)
    with pytest.raises(ValueError, match="DCN_ON_LAST_CONV"):
        build_model(load_cfg(TOOD_TINY, "MODEL.DENSE.DCN_ON_LAST_CONV", True))


# ---------------------------------------------------------------------------------------------
# MODEL.FCOS_HEAD.BOX_CODER "anchor_delta"


def _ltrb(deltas, side):
    return anchor_deltas_to_ltrb(torch.tensor(deltas).view(1, 4, 1, 1), side).flatten()


def test_anchor_deltas_to_ltrb_hand_values():
    # deltas * (0.1, 0.1, 0.2, 0.2) = (0.1, -0.05, log 2, 0); a = 64: centre moves by
    # (64 * 0.1, 64 * -0.05) = (6.4, -3.2) (right, up); size (64 * 2, 64 * 1) = (128, 64), halves (64, 32)
    # l = 64 - 6.4, t = 32 + 3.2, r = 64 + 6.4, b = 32 - 3.2
    got = _ltrb([1.0, -0.5, math.log(2) / 0.2, 0.0], 64.0)
    torch.testing.assert_close(got, torch.tensor([57.6, 35.2, 70.4, 28.8]))
    # dw' = dh' = 0 and no shift: the anchor itself, a / 2 on every side
    torch.testing.assert_close(_ltrb([0.0, 0.0, 0.0, 0.0], 8.0), torch.full((4,), 4.0))


def test_anchor_deltas_clamp_and_negative_sides():
    assert DELTA_MAX_LOG_RATIO == pytest.approx(math.log(1000 / 16))  # 4.1352
    # dw' = 100 * 0.2 = 20 -> clamped to log 62.5: half width 8 * 62.5 / 2 = 250;
    # dh' = -20 -> -log 62.5: half height 8 / 62.5 / 2 = 0.064
    torch.testing.assert_close(_ltrb([0.0, 0.0, 100.0, -100.0], 8.0), torch.tensor([250.0, 0.064, 250.0, 0.064]))
    # dw' = 20 * 0.2 = 4 < 4.135 is not clamped: 8 * e^4 / 2 = 218.393
    torch.testing.assert_close(_ltrb([0.0, 0.0, 20.0, 0.0], 8.0)[0], torch.tensor(4 * math.exp(4.0)))
    # dx' = 10 * 0.1 = 1: the centre moves a whole anchor (8 px) right of a box 8 wide: x0 = x + 4,
    # so l = 4 - 8 = -4 (the box does not contain its point), r = 4 + 8 = 12
    torch.testing.assert_close(_ltrb([10.0, 0.0, 0.0, 0.0], 8.0), torch.tensor([-4.0, 4.0, 12.0, 4.0]))


def test_fcos_head_with_anchor_deltas():
    head = FCOSHead(input_shape=SHAPES, num_classes=2, num_convs=1, box_coder="anchor_delta", anchor_scale=8.0)
    with torch.no_grad():
        head.box_pred.weight.zero_()
        head.box_pred.bias.copy_(torch.tensor([1.0, -0.5, math.log(2) / 0.2, 0.0]))
        head.scales[1].scale.fill_(0.5)
    ltrb = head(_features())["ltrb"]
    # level 0: a = 8 * 8 = 64, Scale 1: the hand values above at every location
    torch.testing.assert_close(ltrb[0], torch.tensor([57.6, 35.2, 70.4, 28.8]).view(1, 4, 1, 1).expand(1, 4, 4, 5))
    # level 1: a = 8 * 16 = 128, Scale 0.5 halves the deltas first: d' = (0.05, -0.025, log(2) / 2, 0):
    # shift (6.4, -3.2), half width 64 * sqrt(2) = 90.50967, half height 64
    hw = 64 * math.sqrt(2)
    expected = torch.tensor([hw - 6.4, 64 + 3.2, hw + 6.4, 64 - 3.2]).view(1, 4, 1, 1).expand(1, 4, 2, 3)
    torch.testing.assert_close(ltrb[1], expected)
    with pytest.raises(ValueError, match="BOX_CODER"):
        FCOSHead(input_shape=SHAPES, num_classes=2, box_coder="delta")
    with pytest.raises(ValueError, match="ANCHOR_SCALE"):
        FCOSHead(input_shape=SHAPES, num_classes=2, box_coder="anchor_delta", anchor_scale=0.0)


def test_anchor_scale_is_read_only_with_anchor_deltas():
    model = build_model(load_cfg(FCOS_TINY, "MODEL.FCOS_HEAD.BOX_CODER", "anchor_delta",
                                 "MODEL.ATSS.ANCHOR_SCALE", 4.0))
    assert model.head.box_coder == "anchor_delta" and model.head.anchor_scale == 4.0
    with pytest.raises(ValueError, match=r"MODEL\.ATSS\.ANCHOR_SCALE"):  # set but unread by FCOS's coder
        build_model(load_cfg(FCOS_TINY, "MODEL.ATSS.ANCHOR_SCALE", 4.0))


# ---------------------------------------------------------------------------------------------
# MODEL.DENSE.TOPK_CANDIDATES_BY, empty boxes before NMS, clip_boxes


def test_topk_by_score_or_candidate_picks_different_pairs():
    # (point, class) pairs: candidate (class prob) / ranking score (e.g. p * centerness)
    #   (0, 0): 0.9 / 0.2   (0, 1): 0.02 / 0.6 (below the 0.05 threshold: never a candidate)
    #   (1, 0): 0.8 / 0.5   (1, 1): 0.3 / 0.25
    cand = torch.tensor([[0.9, 0.02], [0.8, 0.3]])
    scores = torch.tensor([[0.2, 0.6], [0.5, 0.25]])
    # by score: the top 2 of {0.2, 0.5, 0.25} -> (1, 0) 0.5, (1, 1) 0.25
    s, p, c = select_candidates(scores, 0.05, 2, cand, "score")
    assert (s.tolist(), p.tolist(), c.tolist()) == ([0.5, 0.25], [1, 1], [0, 1])
    # by candidate: the top 2 of {0.9, 0.8, 0.3} -> (0, 0), (1, 0), then sorted by score: 0.5, 0.2
    s, p, c = select_candidates(scores, 0.05, 2, cand, "candidate")
    assert s.tolist() == pytest.approx([0.5, 0.2]) and (p.tolist(), c.tolist()) == ([1, 0], [0, 0])
    # fewer candidates than topk: both give all of them
    for by in ("score", "candidate"):
        assert select_candidates(scores, 0.05, 3, cand, by)[0].tolist() == pytest.approx([0.5, 0.25, 0.2])
    with pytest.raises(ValueError, match="TOPK_CANDIDATES_BY"):
        select_candidates(scores, 0.05, 2, cand, "class")
    with pytest.raises(ValueError, match="TOPK_CANDIDATES_BY"):
        build_model(load_cfg(FCOS_TINY, "MODEL.DENSE.TOPK_CANDIDATES_BY", "class"))


def _infer(points, ltrb, scores, **kwargs):
    args = dict(image_size=(100, 100), score_thresh=0.05, topk_candidates=10, nms_thresh=0.6, max_detections=2)
    args.update(kwargs)
    return dense_inference([torch.tensor(scores).view(-1, 1)], [torch.tensor(ltrb)], [torch.tensor(points)], **args)


def test_empty_box_is_dropped_before_nms():
    # A [5, 5, 15, 15] 0.9; B [50, 45, 50, 55] 0.8 has width 0; C [75, 75, 85, 85] 0.7.
    # B overlaps nothing, so NMS would keep it and the top 2 would be A, B; dropped first: A, C.
    points = [[10.0, 10.0], [50.0, 50.0], [80.0, 80.0]]
    ltrb = [[5.0, 5.0, 5.0, 5.0], [0.0, 5.0, 0.0, 5.0], [5.0, 5.0, 5.0, 5.0]]
    res = _infer(points, ltrb, [0.9, 0.8, 0.7])
    assert res.pred_boxes.tensor.tolist() == [[5, 5, 15, 15], [75, 75, 85, 85]]
    assert res.scores.tolist() == pytest.approx([0.9, 0.7])
    # an inverted box (l + r < 0, e.g. TOOD's) is empty too
    ltrb[1] = [3.0, 5.0, -4.0, 5.0]
    assert _infer(points, ltrb, [0.9, 0.8, 0.7]).scores.tolist() == pytest.approx([0.9, 0.7])
    # NMS-free: the same
    assert _infer(points, ltrb, [0.9, 0.8, 0.7], nms_thresh=None).scores.tolist() == pytest.approx([0.9, 0.7])


def test_clip_boxes_before_nms_or_not():
    # D [90, 45, 105, 55] crosses the right border (width 100); E [110, 10, 120, 20] lies outside.
    points = [[95.0, 50.0], [115.0, 15.0]]
    ltrb = [[5.0, 5.0, 10.0, 5.0], [5.0, 5.0, 5.0, 5.0]]
    clipped = _infer(points, ltrb, [0.9, 0.8])
    # clipped: D -> [90, 45, 100, 55]; E -> [100, 10, 100, 20], empty, so dropped
    assert clipped.pred_boxes.tensor.tolist() == [[90, 45, 100, 55]]
    raw = _infer(points, ltrb, [0.9, 0.8], clip_boxes=False)
    assert raw.pred_boxes.tensor.tolist() == [[90, 45, 105, 55], [110, 10, 120, 20]]


def test_detectors_pass_their_clip_and_topk_settings(monkeypatch):
    calls = []

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return dense_detections(*args, **kwargs)

    monkeypatch.setattr(detector_module, "dense_detections", recording)
    image = {"image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)}
    for config, opts, clip, by, within in (
            (TOOD_TINY, (), False, "score", False),
            (FCOS_TINY, ("MODEL.DENSE.TOPK_CANDIDATES_BY", "candidate",
                         "MODEL.DENSE.TOPK_CANDIDATES_WITHIN_POINTS", True), True, "candidate", True)):
        model = build_model(load_cfg(config, *opts)).eval()
        assert model.head.clip_boxes_before_nms is clip
        calls.clear()
        with torch.no_grad():
            model([image])
        assert [(c["clip_boxes"], c["topk_by"], c["topk_within_points"]) for c in calls] == [(clip, by, within)]


# ---------------------------------------------------------------------------------------------
# MODEL.DENSE.SCORE_VOTING_SIGMA (PAA's score voting after NMS)


def test_score_voting_hand_computed():
    # kept A [0, 0, 10, 10] class 0; candidates: A itself (0.9), B [0, 0, 10, 12] 0.5 (IoU 100/120),
    # C = B's box in class 1 (other class: no vote), D [50, 50, 60, 60] 0.8 (IoU 0: no vote)
    kept = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    cand = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 12.0], [0.0, 0.0, 10.0, 12.0], [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([0.9, 0.5, 0.7, 0.8])
    classes = torch.tensor([0, 0, 1, 0])
    voted = score_voting(kept, torch.tensor([0]), cand, scores, classes, sigma=0.025)
    # weights: A 0.9 * exp(0) = 0.9; B 0.5 * exp(-(1/6)^2 / 0.025) = 0.5 * exp(-1.1111) = 0.164597
    # y2 = (0.9 * 10 + 0.164597 * 12) / 1.064597 = 10.3092; x1, y1, x2 agree
    assert voted.tolist() == [pytest.approx([0.0, 0.0, 10.0, 10.3092], abs=1e-4)]
    # a wider sigma lets B weigh more: 0.5 * exp(-0.027778 / 0.1) = 0.378737 -> y2 = 10.5924
    assert score_voting(kept, torch.tensor([0]), cand, scores, classes, sigma=0.1)[0, 3].item() == pytest.approx(10.5924, abs=1e-4)
    # only zero-score voters: the box stays
    assert score_voting(kept, torch.tensor([0]), cand, torch.zeros(4), classes, 0.025).tolist() == kept.tolist()
    # a candidate touching A's corner (IoU 0.0025 / 199.9975 < 0.01) does not vote, however wide sigma
    # makes its weight (0.9 * exp(-1 / 10) = 0.81: without the gate A would move 4.7 px)
    corner = torch.tensor([[0.0, 0.0, 10.0, 10.0], [9.95, 9.95, 19.95, 19.95]])
    voted = score_voting(kept, torch.tensor([0]), corner, torch.tensor([0.9, 0.9]), torch.tensor([0, 0]), sigma=10.0)
    assert voted.tolist() == kept.tolist()


def test_score_voting_moves_the_kept_boxes_after_nms():
    # A [5, 5, 15, 15] 0.9 suppresses B [5, 5, 15, 17] 0.5 (IoU 100/120 > 0.6); C [60, 60, 70, 70] 0.7
    points = [[10.0, 10.0], [10.0, 11.0], [65.0, 65.0]]
    ltrb = [[5.0, 5.0, 5.0, 5.0], [5.0, 6.0, 5.0, 6.0], [5.0, 5.0, 5.0, 5.0]]
    plain = _infer(points, ltrb, [0.9, 0.5, 0.7])
    voted = _infer(points, ltrb, [0.9, 0.5, 0.7], voting_sigma=0.025)
    assert plain.pred_boxes.tensor.tolist() == [[5, 5, 15, 15], [60, 60, 70, 70]]
    # A moves toward B as in the hand-computed case (shifted by 5 px); C has no neighbour
    assert voted.pred_boxes.tensor.tolist() == [pytest.approx([5, 5, 15, 15.3092], abs=1e-4), [60, 60, 70, 70]]
    assert voted.scores.tolist() == plain.scores.tolist()
    with pytest.raises(ValueError, match="needs NMS"):
        _infer(points, ltrb, [0.9, 0.5, 0.7], nms_thresh=None, voting_sigma=0.025)


def test_score_voting_config_key():
    model = build_model(load_cfg(FCOS_TINY, "MODEL.DENSE.SCORE_VOTING_SIGMA", 0.05))
    assert model.test_score_voting_sigma == 0.05
    assert build_model(load_cfg(FCOS_TINY)).test_score_voting_sigma is None  # 0.0: off
    with pytest.raises(ValueError, match=r"SCORE_VOTING_SIGMA must be > 0 \(0.0: off\), got -0.1"):
        build_model(load_cfg(FCOS_TINY, "MODEL.DENSE.SCORE_VOTING_SIGMA", -0.1))
    # NMS-free inference has no suppressed boxes to vote
    with pytest.raises(ValueError, match="SCORE_VOTING_SIGMA 0.025: .*POSTPROCESS 'nms'"):
        build_model(load_cfg("configs/DeFCN/DeFCN_tiny_R_18_cpu.yaml", "MODEL.DENSE.SCORE_VOTING_SIGMA", 0.025))


def test_detector_votes_with_its_sigma(monkeypatch):
    calls = []

    def recording(*args, **kwargs):
        calls.append(kwargs["voting_sigma"])
        return dense_detections(*args, **kwargs)

    monkeypatch.setattr(detector_module, "dense_detections", recording)
    model = build_model(load_cfg(FCOS_TINY, "MODEL.DENSE.SCORE_VOTING_SIGMA", 0.025)).eval()
    with torch.no_grad():
        model([{"image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)}])
    assert calls == [0.025]


# ---------------------------------------------------------------------------------------------
# MODEL.DENSE.POSTPROCESS "peaks" (CenterNet's max-pool peaks, NMS-free)


def peak_scores(scores, shapes, kernel, factor):
    return [s * f for s, f in zip(scores, peak_factors(scores, shapes, kernel, factor))]


def test_peak_factors_hand_computed():
    # One level, 3 x 4 points, 2 classes (row-major: point index = 4 * y + x).
    class0 = torch.tensor([[0.9, 0.8, 0.1, 0.2],
                           [0.3, 0.4, 0.1, 0.6],
                           [0.1, 0.2, 0.7, 0.1]])
    class1 = torch.tensor([[0.1, 0.1, 0.1, 0.1],
                           [0.1, 0.5, 0.5, 0.1],  # a tie: both are peaks
                           [0.1, 0.1, 0.1, 0.1]])
    scores = torch.stack([class0.flatten(), class1.flatten()], dim=1)  # [12, 2]
    out = peak_scores([scores], [(3, 4)], 3, 0.5)[0]
    # class 0: 0.9 (its window: 0.9, 0.8, 0.3, 0.4) and 0.7 (0.4, 0.1, 0.6, 0.2, 0.1 around it) are
    # peaks; 0.6 is not (0.7 is its diagonal neighbour); everything else is halved
    expected0 = torch.tensor([[0.9, 0.4, 0.05, 0.1],
                              [0.15, 0.2, 0.05, 0.3],
                              [0.05, 0.1, 0.7, 0.05]])
    expected1 = torch.tensor([[0.05, 0.05, 0.05, 0.05],
                              [0.05, 0.5, 0.5, 0.05],
                              [0.05, 0.05, 0.05, 0.05]])
    assert torch.allclose(out[:, 0].reshape(3, 4), expected0)
    assert torch.allclose(out[:, 1].reshape(3, 4), expected1)
    # a 5 x 5 window: 0.7 now sees 0.9 (two columns and rows away) and is no peak
    wide = peak_scores([scores], [(3, 4)], 5, 0.0)[0][:, 0].reshape(3, 4)
    assert wide.nonzero().tolist() == [[0, 0]]
    # levels are independent: a second level with one point is its own peak
    two = peak_scores([scores, torch.tensor([[0.2, 0.3]])], [(3, 4), (1, 1)], 3, 0.0)
    assert torch.equal(two[1], torch.tensor([[0.2, 0.3]]))


@pytest.mark.parametrize("kernel,factor,match", [
    (2, 0.3, "PEAK_KERNEL must be an odd whole number >= 3.*got 2"),
    (1, 0.3, "PEAK_KERNEL .* got 1"),
    (3.0, 0.3, "PEAK_KERNEL .* got 3.0"),
    (True, 0.3, "PEAK_KERNEL .* got True"),
    (3, 1.0, r"NON_PEAK_SCORE_FACTOR must be a number in \[0, 1\).*got 1.0"),
    (3, -0.1, "NON_PEAK_SCORE_FACTOR .* got -0.1"),
    (3, "0.3", "NON_PEAK_SCORE_FACTOR .* got '0.3'"),
])
def test_peak_factors_refuse_bad_settings(kernel, factor, match):
    with pytest.raises(ValueError, match=match):
        peak_factors([torch.zeros(4, 1)], [(2, 2)], kernel, factor)


def test_peaks_config_keys():
    model = build_model(load_cfg(FCOS_TINY, "MODEL.DENSE.POSTPROCESS", "peaks", "MODEL.DENSE.PEAK_KERNEL", 5))
    assert (model.test_nms_thresh, model.test_peak_kernel, model.test_non_peak_factor) == (None, 5, 0.3)
    assert build_model(load_cfg(FCOS_TINY)).test_peak_kernel is None
    # the peak keys without "peaks" are unused keys
    with pytest.raises(ValueError, match="MODEL.DENSE.PEAK_KERNEL"):
        build_model(load_cfg(FCOS_TINY, "MODEL.DENSE.PEAK_KERNEL", 5))
    with pytest.raises(ValueError, match="PEAK_KERNEL .* got 4"):
        build_model(load_cfg(FCOS_TINY, "MODEL.DENSE.POSTPROCESS", "peaks", "MODEL.DENSE.PEAK_KERNEL", 4))
    # score voting needs the boxes NMS suppressed
    with pytest.raises(ValueError, match="SCORE_VOTING_SIGMA 0.025: .*'peaks'"):
        build_model(load_cfg(FCOS_TINY, "MODEL.DENSE.POSTPROCESS", "peaks", "MODEL.DENSE.SCORE_VOTING_SIGMA", 0.025))


def test_detector_with_a_window_wider_than_every_level_keeps_one_peak_per_level_and_class():
    # 3 classes, 5 levels, a 128 x 128 input (no padding; P3: 16 x 16 points): a 33 x 33 window
    # covers every level, so each level and class has exactly one peak; non-peaks are dropped
    # (factor 0) and the threshold 0 keeps every peak: 15 detections, 5 per class.
    cfg = load_cfg(FCOS_TINY, "MODEL.DENSE.NUM_CLASSES", 3, "MODEL.DENSE.POSTPROCESS", "peaks",
                   "MODEL.DENSE.PEAK_KERNEL", 33, "MODEL.DENSE.NON_PEAK_SCORE_FACTOR", 0.0,
                   "MODEL.DENSE.SCORE_THRESH_TEST", 0.0)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    torch.nn.init.normal_(model.head.cls_logits.weight, std=0.05)  # spread-out scores: no ties
    torch.nn.init.constant_(model.head.box_pred.bias, 1.0)  # no empty box (an empty one is dropped)
    image = {"image": torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8)}
    with torch.no_grad():
        detections = model([image])[0]["instances"]
        model.test_peak_kernel = None  # every (point, class) of the same scores: 341 points x 3
        model.max_detections_per_image = 2000
        plain = model([image])[0]["instances"]
    assert len(detections) == 15 and detections.pred_classes.bincount().tolist() == [5, 5, 5]
    assert len(plain) == 341 * 3
    # every peak is one of those (point, class) pairs, with its score unchanged
    assert set(detections.scores.tolist()) <= set(plain.scores.tolist())


def test_detector_peaks_equal_max_pooling_on_the_heads_maps_of_a_padded_non_square_image():
    # GFL (its scores are sigmoid(logits), no other score thresholded) on a 120 x 250 image, which
    # detectron2 pads to 128 x 256: the expected detections are the 3 x 3 peaks of each level's
    # [K, H, W] probability map with the points in the padding zeroed first, computed here on the
    # head's maps themselves, so a transposed or mis-ordered grid, or a padded point taking part,
    # fails; non-peaks are dropped (factor 0), threshold 0, room for every peak.
    cfg = load_cfg("configs/GFL/GFL_tiny_R_18_cpu.yaml", "MODEL.DENSE.NUM_CLASSES", 2, "MODEL.DENSE.POSTPROCESS", "peaks",
                   "MODEL.DENSE.NON_PEAK_SCORE_FACTOR", 0.0, "MODEL.DENSE.SCORE_THRESH_TEST", 0.0,
                   "TEST.DETECTIONS_PER_IMAGE", 5000)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    torch.nn.init.normal_(model.head.cls_logits.weight, std=0.05)
    image = torch.randint(0, 256, (3, 120, 250), dtype=torch.uint8)
    with torch.no_grad():
        detections = model([{"image": image}])[0]["instances"]
        images = model.preprocess_image([{"image": image}])
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        predictions = model.head(features)
        expected = []
        for logits, points in zip(predictions["logits"], model.shift_generator(features)):
            probs = torch.sigmoid(logits[0])  # [K, H, W]
            inside = ((points[:, 0] < 250) & (points[:, 1] < 120)).reshape(probs.shape[1:])
            probs = probs * inside
            peaks = (probs >= F.max_pool2d(probs[None], 3, stride=1, padding=1)[0]) & (probs > 0)
            expected += probs[peaks].tolist()
    assert tuple(images.tensor.shape[-2:]) == (128, 256)
    assert 100 < len(expected) < 5000 and len(detections) == len(expected)
    assert sorted(detections.scores.tolist()) == pytest.approx(sorted(expected), abs=1e-6)


def test_peaks_refuse_nms():
    model = build_model(load_cfg(FCOS_TINY))
    with pytest.raises(ValueError, match="score peaks .* with NMS at 0.6"):
        type(model)(backbone=model.backbone, head=model.head, head_in_features=model.head_in_features,
                    shift_generator=model.shift_generator, criterion=model.criterion, num_classes=1,
                    pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3, test_nms_thresh=0.6, test_peak_kernel=3)
    # the NMS threshold is not read with peaks: setting it is an unused key
    with pytest.raises(ValueError, match="MODEL.DENSE.NMS_THRESH_TEST"):
        build_model(load_cfg(FCOS_TINY, "MODEL.DENSE.POSTPROCESS", "peaks", "MODEL.DENSE.NMS_THRESH_TEST", 0.5))
    with pytest.raises(ValueError, match="MODEL.DENSE.NON_PEAK_SCORE_FACTOR"):
        build_model(load_cfg(FCOS_TINY, "MODEL.DENSE.NON_PEAK_SCORE_FACTOR", 0.5))


# ---------------------------------------------------------------------------------------------
# MODEL.VFNET_HEAD.INIT_BOX_NORM


def _vfnet(init_box_norm):
    torch.manual_seed(0)
    head = VFNetHead(input_shape=SHAPES, num_classes=2, num_convs=1, init_box_norm=init_box_norm)
    with torch.no_grad():
        head.box_init_pred.weight.zero_()  # the bias (as initialised) alone gives the box
    return head


@pytest.mark.parametrize("norm,bias,per_stride", [
    ("stride", 0.0, 1.0),  # exp(0) * stride
    ("reg_denom", 0.0, 8.0),  # exp(0) * 8 stride
    ("relu", 4.0, 4.0),  # relu(4) * stride
])
def test_vfnet_initial_box_norms(norm, bias, per_stride):
    head = _vfnet(norm)
    assert head.box_init_pred.bias.tolist() == [bias] * 4
    init = head(_features())["ltrb_init"]
    for level, stride in enumerate((8, 16)):
        assert torch.equal(init[level], torch.full_like(init[level], per_stride * stride))


def test_vfnet_initial_box_applies_the_scale_before_exp():
    head = _vfnet("reg_denom")
    with torch.no_grad():
        head.box_init_pred.bias.fill_(2 * math.log(3))
        head.scales_init[1].scale.fill_(0.5)
    init = head(_features())["ltrb_init"]
    # level 0: exp(2 log 3) * 8 * 8 = 9 * 64 = 576; level 1: exp(0.5 * 2 log 3) * 8 * 16 = 3 * 128 = 384
    torch.testing.assert_close(init[0], torch.full_like(init[0], 576.0))
    torch.testing.assert_close(init[1], torch.full_like(init[1], 384.0))
    assert load_cfg("configs/VFNet/VFNet_tiny_R_18_cpu.yaml").MODEL.VFNET_HEAD.INIT_BOX_NORM == "reg_denom"

"""Bad settings and inputs fail loudly, naming the config key or the offending value, instead of
silently producing wrong detections or an opaque one_hot / CUDA device assert."""
import math

import pytest
import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

from conftest import load_cfg
from d2_anchorfree.modeling.heads import DeFCNHead, FCOSHead, GFLHead, VFNetHead
from d2_anchorfree.modeling.heads.towers import check_head_inputs, decode_ltrb
from d2_anchorfree.modeling.losses import check_focal_parameters, focal_loss_with_labels
from d2_anchorfree.modeling.losses.terms import FocalLoss
from d2_anchorfree.modeling.postprocessing import dense_inference, select_candidates

FCOS_TINY = "configs/FCOS/FCOS_tiny_R_18_cpu.yaml"


@pytest.mark.parametrize("key,value", [
    ("MODEL.DENSE.TOPK_CANDIDATES_TEST", 0),
    ("MODEL.DENSE.SCORE_THRESH_TEST", -0.01),
    ("MODEL.DENSE.SCORE_THRESH_TEST", 1.0),  # would keep nothing: scores are <= 1
    ("MODEL.DENSE.NMS_THRESH_TEST", 0.0),  # would suppress every overlapping box
    ("MODEL.DENSE.NMS_THRESH_TEST", 1.5),
    ("TEST.DETECTIONS_PER_IMAGE", 0),
    ("MODEL.FCOS_HEAD.SCORE_EXPONENT", 0.0),  # every score would be 1
    ("MODEL.FCOS_HEAD.SCORE_EXPONENT", 1.5),
    ("MODEL.FOCAL_LOSS.ALPHA", 1.5),
    ("MODEL.FOCAL_LOSS.GAMMA", -1.0),
])
def test_bad_fcos_test_and_loss_settings_raise_naming_the_key(key, value):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_model(load_cfg(FCOS_TINY, key, value))


def test_boundary_settings_are_accepted():
    # SCORE_THRESH_TEST 0 (keep everything), NMS 1.0 (suppress only identical boxes), exponent 1
    # (the plain product), alpha < 0 (fvcore: no alpha weighting), gamma 0 (plain BCE).
    model = build_model(load_cfg(
        FCOS_TINY, "MODEL.DENSE.SCORE_THRESH_TEST", 0.0, "MODEL.DENSE.NMS_THRESH_TEST", 1.0,
        "MODEL.FCOS_HEAD.SCORE_EXPONENT", 1.0, "MODEL.FOCAL_LOSS.ALPHA", -1.0,
        "MODEL.FOCAL_LOSS.GAMMA", 0.0, "MODEL.DENSE.TOPK_CANDIDATES_TEST", 1,
        "TEST.DETECTIONS_PER_IMAGE", 1))
    (focal,) = [t for t in model.criterion.loss_terms if isinstance(t, FocalLoss)]
    assert model.test_score_thresh == 0.0 and focal.alpha == -1.0


def test_bad_defcn_focal_and_vfnet_settings_raise_naming_the_key():
    with pytest.raises(ValueError, match=r"MODEL\.FOCAL_LOSS\.ALPHA"):
        build_model(load_cfg("configs/DeFCN/DeFCN_tiny_R_18_cpu.yaml", "MODEL.FOCAL_LOSS.ALPHA", 2.0))
    vfnet = "configs/VFNet/VFNet_tiny_R_18_cpu.yaml"
    # VFL's alpha weighs the negatives; a negative value would make their loss negative.
    for key, value in (("MODEL.VFL.ALPHA", -0.5), ("MODEL.VFL.ALPHA", 1.5), ("MODEL.VFL.GAMMA", -2.0)):
        with pytest.raises(ValueError, match=key.replace(".", r"\.")):
            build_model(load_cfg(vfnet, key, value))


def test_check_focal_parameters_ranges():
    check_focal_parameters(0.25, 2.0, "A", "G")
    check_focal_parameters(-1.0, 0.0, "A", "G")  # disabled alpha
    for alpha, gamma, match in ((1.01, 2.0, "A must be in"), (math.nan, 2.0, "A must be in"),
                                (0.25, -0.1, "G must be >= 0"), (0.25, math.nan, "G must be >= 0")):
        with pytest.raises(ValueError, match=match):
            check_focal_parameters(alpha, gamma, "A", "G")
    with pytest.raises(ValueError, match=r"A must be in \[0, 1\], got -0.5"):
        check_focal_parameters(-0.5, 2.0, "A", "G", negative_alpha_disables=False)


def test_focal_loss_rejects_labels_outside_0_to_k():
    logits = torch.zeros(3, 2)  # K = 2: labels 0, 1 (classes) and 2 (background) are valid
    valid = torch.ones(3, dtype=torch.bool)
    assert torch.isfinite(focal_loss_with_labels(logits, torch.tensor([0, 1, 2]), valid, 0.25, 2.0))
    for bad in (3, -1):
        with pytest.raises(ValueError, match=f"got {bad}"):
            focal_loss_with_labels(logits, torch.tensor([0, bad, 2]), valid, 0.25, 2.0)


def shapes(*strides, channels=32):
    return [ShapeSpec(channels=channels, stride=s) for s in strides]


@pytest.mark.parametrize("make_head", [
    lambda: FCOSHead(input_shape=shapes(8, 16, 32), num_classes=2, num_convs=0, norm=""),
    lambda: DeFCNHead(input_shape=shapes(8, 16, 32), num_classes=2, num_convs=0, norm="", max_filter=None),
    lambda: GFLHead(input_shape=shapes(8, 16, 32), num_classes=2, num_convs=0, norm=""),
    lambda: VFNetHead(input_shape=shapes(8, 16, 32), num_classes=2, num_convs=0, norm=""),
])
def test_every_head_rejects_a_wrong_number_of_levels(make_head):
    head = make_head()
    two_levels = [torch.zeros(1, 32, 4, 4), torch.zeros(1, 32, 2, 2)]  # 3 strides, 2 maps
    with pytest.raises(ValueError, match=r"got 2 feature levels for strides \[8, 16, 32\]"):
        head(two_levels)


def test_check_head_inputs():
    assert check_head_inputs(shapes(8, 16), 3) == 32
    with pytest.raises(ValueError, match="equal channels"):
        check_head_inputs([ShapeSpec(channels=32, stride=8), ShapeSpec(channels=64, stride=16)], 3, "FCOS")
    with pytest.raises(ValueError, match="equal channels"):
        check_head_inputs([], 3)
    with pytest.raises(ValueError, match="NUM_CLASSES must be >= 1, got 0"):
        FCOSHead(input_shape=shapes(8), num_classes=0, num_convs=0, norm="")


def test_decode_ltrb_both_parametrisations():
    reg = torch.tensor([-1.0, 0.0, 2.0, 50.0]).reshape(1, 4, 1, 1)
    # normalized: relu(x) * stride = (0, 0, 16, 400) for stride 8
    assert decode_ltrb(reg, 8, True).flatten().tolist() == [0.0, 0.0, 16.0, 400.0]
    # paper: exp(x), the input clamped at 20 so that 50 gives exp(20), not inf
    got = decode_ltrb(reg, 8, False).flatten()
    assert got.tolist() == pytest.approx([math.exp(-1), 1.0, math.exp(2), math.exp(20)])


def test_candidate_scores_must_match_the_scores():
    scores = torch.rand(4, 2)
    with pytest.raises(ValueError, match="candidate_scores"):
        select_candidates(scores, 0.05, 10, candidate_scores=torch.rand(4, 3))
    with pytest.raises(ValueError, match=r"scores must be \[R, K\]"):
        select_candidates(scores.flatten(), 0.05, 10)
    shifts, ltrb = [torch.zeros(4, 2)], [torch.ones(4, 4)]
    with pytest.raises(ValueError, match="levels differ"):
        dense_inference([scores], ltrb, shifts, (8, 8), 0.05, 10, 0.6, 10, candidate_scores=[scores, scores])

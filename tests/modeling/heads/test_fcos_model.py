"""FCOS head shapes, regression parametrisations, loss bookkeeping and input checks."""
import math

import pytest
import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from d2_anchorfree.modeling.heads import FCOSHead

from conftest import load_cfg, loss_terms_on, make_batch, make_instances


@pytest.mark.parametrize("norm_reg", [False, True])
def test_head_output_shapes_per_level(norm_reg):
    shapes = [ShapeSpec(channels=32, stride=s) for s in (8, 16, 32)]
    head = FCOSHead(input_shape=shapes, num_classes=3, num_convs=2, norm="GN", norm_reg_targets=norm_reg)
    feats = [torch.randn(2, 32, h, w) for h, w in ((16, 20), (8, 10), (4, 5))]
    out = head(feats)
    assert set(out) == {"logits", "ltrb", "centerness"}
    logits, ltrb, ctr = out["logits"], out["ltrb"], out["centerness"]
    for f, l, d, c in zip(feats, logits, ltrb, ctr):
        h, w = f.shape[-2:]
        assert l.shape == (2, 3, h, w) and d.shape == (2, 4, h, w) and c.shape == (2, 1, h, w)
        assert (d >= 0).all()
    # Prior-probability init: sigmoid(bias) = 0.01.
    assert torch.sigmoid(head.cls_logits.bias).tolist() == pytest.approx([0.01] * 3)


def test_norm_reg_targets_scales_by_stride():
    shapes = [ShapeSpec(channels=32, stride=s) for s in (8, 16)]
    head = FCOSHead(input_shape=shapes, num_classes=1, num_convs=0, norm="", norm_reg_targets=True)
    torch.nn.init.zeros_(head.box_pred.weight)
    torch.nn.init.constant_(head.box_pred.bias, 2.0)  # relu(1.0 * 2) * stride
    ltrb = head([torch.randn(1, 32, 2, 2), torch.randn(1, 32, 1, 1)])["ltrb"]
    assert ltrb[0].unique().tolist() == [16.0] and ltrb[1].unique().tolist() == [32.0]


def test_losses_are_normalised_and_finite_without_objects():
    cfg = load_cfg("configs/FCOS/FCOS_tiny_R_18_cpu.yaml")
    model = build_model(cfg)
    empty = make_batch()[1:]  # the image without objects only
    with EventStorage():
        losses = model(empty)
    # No positives: box and centerness losses are exactly zero, classification is not.
    assert losses["loss_box"].item() == 0 and losses["loss_ctr"].item() == 0
    assert losses["loss_cls"].item() > 0


def test_fcos_preset_box_loss_is_the_authors_iou_loss():
    # The FCOS preset's box loss "iou" (FCOS paper config) is the FCOS authors' -log((I + 1) / (U + 1))
    # in pixels^2 (fcos_core/layers/iou_loss.py). One stride-8 point (4, 4), positive for GT
    # [0, 0, 16, 8] (ltrb (4, 4, 12, 4), area 128). The predicted ltrb (0, 2, 0, 2) has zero
    # width (a ReLU output at 0): I = 0, U = 128 + 0 - 0 = 128, loss log(129) = 4.8598124
    # (-log(max(IoU, 1e-7)) gave 16.118 and no gradient). Centerness weighting of one positive:
    # w / w = 1. Gradient on l (and r): -(dI/dl) / (I + 1) + (dU/dl) / (U + 1), dI/dl = h_I = 4,
    # dU/dl = (t + b) - h_I = 0 -> -4: the loss opens the box; on t and b: dI/dt = w_I = 0,
    # dU/dt = (l + r) - 0 = 0 -> 0.
    assert load_cfg("configs/FCOS/FCOS_R_50_FPN_1x.yaml").MODEL.BOX_LOSS.TYPE == "iou"
    model = build_model(load_cfg("configs/FCOS/FCOS_tiny_R_18_cpu.yaml", "MODEL.BOX_LOSS.TYPE", "",
                                 "MODEL.BOX_LOSS.WEIGHT", -1.0))
    box_term = next(t for t in model.criterion.loss_terms if type(t).__name__ == "BoxLoss")
    assert (box_term.loss_type, box_term.weight) == ("iou", 1.0)  # the FCOS preset's
    shifts = [torch.tensor([[4.0, 4.0]])] + [torch.zeros(0, 2)] * 4
    gt = make_instances((8, 16), [[0, 0, 16, 8]], [0])
    ltrb = torch.tensor([[[0.0, 2.0, 0.0, 2.0]]], requires_grad=True)
    flat = {"logits": torch.zeros(1, 1, 1), "ltrb": ltrb, "centerness": torch.zeros(1, 1, 1)}
    losses = loss_terms_on(model, shifts, [gt], torch.tensor([[0]]), flat)
    assert losses["loss_box"].item() == pytest.approx(math.log(129), rel=1e-6)
    losses["loss_box"].backward()
    assert ltrb.grad[0, 0].tolist() == pytest.approx([-4.0, 0.0, -4.0, 0.0], abs=1e-6)


def test_unknown_class_id_and_degenerate_box_raise():
    cfg = load_cfg("configs/FCOS/FCOS_tiny_R_18_cpu.yaml")  # NUM_CLASSES 1
    model = build_model(cfg)
    batch = make_batch()
    batch[0]["instances"] = make_instances((128, 160), [[10, 10, 50, 50]], [3])
    with EventStorage(), pytest.raises(ValueError, match="gt class 3"):
        model(batch)
    batch[0]["instances"] = make_instances((128, 160), [[10, 10, 10, 50]], [0])
    with EventStorage(), pytest.raises(ValueError, match="degenerate"):
        model(batch)
    batch[0]["instances"] = make_instances((128, 160), [[10, 10, float("nan"), 50]], [0])
    with EventStorage(), pytest.raises(ValueError, match="non-finite"):
        model(batch)


@pytest.mark.slow  # 40 training steps
def test_tiny_fcos_overfits_one_image():
    """End-to-end learning: a few dozen steps on one image must fit its two boxes."""
    torch.manual_seed(0)
    cfg = load_cfg("configs/FCOS/FCOS_tiny_R_18_cpu.yaml")
    model = build_model(cfg)
    batch = make_batch()[:1]
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    first = None
    for _ in range(40):
        with EventStorage():
            loss = sum(model(batch).values())
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    model.eval()
    with torch.no_grad():
        inst = model([{"image": batch[0]["image"]}])[0]["instances"]
    from detectron2.structures import pairwise_iou
    best = pairwise_iou(batch[0]["instances"].gt_boxes, inst.pred_boxes[:10]).max(dim=1).values
    assert (best > 0.5).all(), best


def test_candidates_thresholded_on_class_probability_ranked_by_combined_score():
    """FCOS inference (paper Sec. 3.1): keep p_cls > thresh, rank by sqrt(p_cls * centerness)."""
    from d2_anchorfree.modeling.postprocessing import dense_inference

    shifts = [torch.tensor([[10.0, 10.0], [50.0, 50.0], [90.0, 90.0]])]
    probs = torch.tensor([[0.04], [0.9], [0.5]])  # point 0 fails the 0.05 class threshold
    ctr = torch.tensor([[1.0], [0.01], [1.0]])
    scores = [(probs * ctr).sqrt()]  # 0.2, 0.095, 0.707
    ltrb = [torch.full((3, 4), 5.0)]
    out = dense_inference(scores, ltrb, shifts, (128, 128), 0.05, 10, 0.6, 100, candidate_scores=[probs])
    assert out.scores.tolist() == pytest.approx([0.5 ** 0.5, 0.009 ** 0.5])  # point 2 first, then 1
    assert out.pred_boxes.tensor[0].tolist() == [85, 85, 95, 95]
    with pytest.raises(ValueError, match="levels differ"):
        dense_inference(scores, ltrb, shifts + shifts, (128, 128), 0.05, 10, 0.6, 100)

"""GFL: Quality Focal Loss, Distribution Focal Loss, the integral decoding, DGQP, the head, the
loss bookkeeping of the GFL detector (hand-computed) and the GFL YAMLs."""
import math

import pytest
import torch

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from fvcore.nn import sigmoid_focal_loss

from d2_anchorfree.modeling.assigners import ATSSAssigner, FCOSAssigner
from d2_anchorfree.modeling.heads.gfl_head import DGQP, GFLHead, distribution_to_distance
from d2_anchorfree.modeling.losses import dfl_targets, distribution_focal_loss, quality_focal_loss
from d2_anchorfree.modeling.targets import floored_positives_per_image

from conftest import load_cfg, loss_terms_on, make_batch, make_instances, train_step_and_predict

LOG2 = math.log(2)


# ---- Quality Focal Loss (Eq. 5): -|y - s|^beta ((1 - y) log(1 - s) + y log s)

def test_qfl_hand_values():
    # (x=0 -> s=0.5, y=0.6): 0.1^2 * (0.4 log2 + 0.6 log2) = 0.01 log2       = 0.0069315
    # (x=log3 -> s=0.75, y=0): 0.75^2 * -log(0.25) = 0.5625 * 1.3862944       = 0.7797906
    # (x=0, y=0): 0.25 log2 = 0.1732868;  (x=0, y=1): 0.25 log2 = 0.1732868
    logits = torch.tensor([[0.0, math.log(3)], [0.0, 0.0]])
    target = torch.tensor([[0.6, 0.0], [0.0, 1.0]])
    expected = 0.01 * LOG2 + 0.5625 * math.log(4) + 0.5 * LOG2
    assert quality_focal_loss(logits, target, beta=2.0).item() == pytest.approx(expected, rel=1e-6)
    # Same value from probabilities (the DGQP path).
    from_probs = quality_focal_loss(torch.sigmoid(logits), target, beta=2.0, activated=True)
    assert from_probs.item() == pytest.approx(expected, rel=1e-6)


def test_qfl_with_hard_labels_is_focal_loss_and_handles_all_negative():
    # y in {0, 1}: QFL(beta) = FL(gamma=beta) without alpha (the paper's Sec. 3.2 remark).
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=g) * 3
    hard = (torch.rand(6, 3, generator=g) < 0.3).float()
    for target in (hard, torch.zeros(6, 3)):
        fl = sigmoid_focal_loss(logits, target, alpha=-1, gamma=2.0, reduction="sum")
        assert quality_focal_loss(logits, target, beta=2.0).item() == pytest.approx(fl.item(), rel=1e-5)


def test_qfl_gradient_vanishes_at_the_soft_target_and_pushes_towards_it():
    x = torch.tensor([[0.0, 0.0, 0.0]], requires_grad=True)  # s = 0.5 everywhere
    quality_focal_loss(x, torch.tensor([[0.5, 0.9, 0.1]])).backward()
    assert x.grad[0, 0].item() == pytest.approx(0.0, abs=1e-7)  # y == s: minimum
    assert x.grad[0, 1] < 0 and x.grad[0, 2] > 0  # descent raises s towards 0.9, lowers it to 0.1
    p = torch.tensor([[0.0, 1.0]], requires_grad=True)  # saturated probabilities stay finite
    loss = quality_focal_loss(p, torch.tensor([[1.0, 0.0]]), activated=True)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(p.grad).all()
    with pytest.raises(ValueError, match="differ"):
        quality_focal_loss(torch.zeros(2, 3), torch.zeros(3, 2))


# ---- Distribution Focal Loss (Eq. 7): -((y_{i+1} - y) log S_i + (y - y_i) log S_{i+1})

def test_dfl_hand_values_including_the_upper_edge():
    # S = (1, 2, 3, 4, 10) / 20 = (0.05, 0.1, 0.15, 0.2, 0.5), n = REG_MAX = 4.
    logits = torch.log(torch.tensor([[1.0, 2.0, 3.0, 4.0, 10.0]])).expand(5, -1)
    target = torch.tensor([2.5, 4.0, 0.0, 3.0, 0.25])
    expected = [
        -(0.5 * math.log(0.15) + 0.5 * math.log(0.2)),  # y = 2.5: bins 2, 3           = 1.7532794
        -math.log(0.5),  # y = 4 = n: bins (3, 4), weights (0, 1)                       = 0.6931472
        -math.log(0.05),  # y = 0: all weight on bin 0                                  = 2.9957323
        -math.log(0.2),  # y = 3: bins (3, 4), weights (1, 0)                           = 1.6094379
        -(0.75 * math.log(0.05) + 0.25 * math.log(0.1)),  # y = 0.25: bins 0, 1        = 2.8225737
    ]
    assert distribution_focal_loss(logits, target).tolist() == pytest.approx(expected, rel=1e-6)
    # Uniform S over 17 bins: -log(1/17) whatever y.
    assert distribution_focal_loss(torch.zeros(2, 17), torch.tensor([2.3, 16.0])).tolist() == pytest.approx(
        [math.log(17)] * 2, rel=1e-6)


def test_dfl_at_reg_max_has_a_finite_gradient_towards_the_last_bin():
    logits = torch.zeros(1, 17, requires_grad=True)
    loss = distribution_focal_loss(logits, torch.tensor([16.0]))
    loss.backward()
    expected = torch.full((17,), 1 / 17)
    expected[16] -= 1  # d(-log S_16)/dz = S - onehot(16)
    assert torch.isfinite(loss) and torch.allclose(logits.grad[0], expected, atol=1e-6)


def test_dfl_gradient_step_moves_mass_to_the_two_bins_around_the_target():
    logits = torch.zeros(1, 17, requires_grad=True)
    before = torch.softmax(logits, 1).detach()
    distribution_focal_loss(logits, torch.tensor([2.3])).sum().backward()
    after = torch.softmax(logits - 0.5 * logits.grad, 1)
    up = after[0] > before[0]
    assert up[2] and up[3] and up.sum() == 2
    # Many steps: S -> (S_2, S_3) = (0.7, 0.3), whose integral is the target 2.3 (Eq. 6).
    z = torch.zeros(1, 17, requires_grad=True)
    opt = torch.optim.SGD([z], lr=2.0)
    for _ in range(500):
        opt.zero_grad()
        distribution_focal_loss(z, torch.tensor([2.3])).sum().backward()
        opt.step()
    probs = torch.softmax(z, 1)[0]
    assert probs[2].item() == pytest.approx(0.7, abs=0.02) and probs[3].item() == pytest.approx(0.3, abs=0.02)
    integral = distribution_to_distance(z.detach().repeat(1, 4), 16)
    assert integral[0].tolist() == pytest.approx([2.3] * 4, abs=0.05)


def test_dfl_rejects_targets_outside_the_bins():
    with pytest.raises(ValueError, match="16.5"):
        distribution_focal_loss(torch.zeros(1, 17), torch.tensor([16.5]))
    with pytest.raises(ValueError, match="outside"):
        distribution_focal_loss(torch.zeros(1, 17), torch.tensor([-0.1]))


def test_dfl_targets_stop_one_tenth_below_reg_max():
    # MMDetection's bbox2distance clamps each side to [0, REG_MAX - 0.1]: with REG_MAX 4,
    # 4.0 and 5.5 -> 3.9, 3.95 -> 3.9, 0.5 stays, -1 (point outside the box) -> 0.
    got = dfl_targets(torch.tensor([4.0, 5.5, 3.95, 0.5, -1.0]), 4)
    assert got.tolist() == pytest.approx([3.9, 3.9, 3.9, 0.5, 0.0])
    # y = 3.9: bins 3 and 4 with weights 0.1 and 0.9. S = (1, 2, 3, 4, 10) / 20:
    # -(0.1 log 0.2 + 0.9 log 0.5) = 0.1609438 + 0.6238325 = 0.7847763 (y = 4 gave -log 0.5).
    logits = torch.log(torch.tensor([[1.0, 2.0, 3.0, 4.0, 10.0]]))
    assert distribution_focal_loss(logits, got[:1]).item() == pytest.approx(
        -(0.1 * math.log(0.2) + 0.9 * math.log(0.5)), rel=1e-5)
    with pytest.raises(ValueError, match="REG_MAX must be >= 1, got 0"):
        dfl_targets(torch.zeros(1), 0)


def test_dfl_term_target_at_exactly_reg_max():
    # REG_MAX 4, one stride-8 level; point (4, 4) is positive for GT [0, 0, 36, 8]:
    # ltrb = (4, 4, 32, 4) px = (0.5, 0.5, 4.0, 0.5) strides; the right side is exactly REG_MAX
    # -> target 3.9 (bins 3 and 4, weights 0.1 and 0.9).
    # Box logits: 0 for l, t, b (uniform S = 0.2: y = 0.5 costs log 5 each); right side
    # (0, 0, 0, 0, log 4) -> S = (1/8, 1/8, 1/8, 1/8, 1/2): 0.1 log 8 + 0.9 log 2 = 1.2 log 2
    # = 0.8317766 (the old target 4.0 gave log 2).
    # Weight: max class score 0.5 (logits log(1/3), 0); normalizer max(0.5, 1) = 1;
    # loss_dfl = 0.25 (DFL.WEIGHT) * 0.5 * (3 log 5 + 1.2 log 2) / 4 sides = 0.1768778.
    model = tiny_gfl("MODEL.DENSE.NUM_CLASSES", 2, "MODEL.GFL_HEAD.REG_MAX", 4)
    shifts = [torch.tensor([[4.0, 4.0]])] + [torch.zeros(0, 2)] * 4
    gt = make_instances((8, 40), [[0, 0, 36, 8]], [1])
    box_logits = torch.zeros(1, 1, 20)
    box_logits[0, 0, 14] = math.log(4)  # side 2 (r), bin 4
    flat = {"logits": torch.tensor([[[math.log(1 / 3), 0.0]]]), "box_logits": box_logits}
    losses = loss_terms_on(model, shifts, [gt], torch.tensor([[0]]), flat)
    expected = 0.25 * 0.5 * (3 * math.log(5) + 1.2 * LOG2) / 4
    assert expected == pytest.approx(0.1768778, rel=1e-6)
    assert losses["loss_dfl"].item() == pytest.approx(expected, rel=1e-5)


# ---- Integral decoding (Eq. 6) and DGQP

def test_integral_is_the_expectation_in_stride_units():
    # n = 4. l: S = (0.05, 0.1, 0.15, 0.2, 0.5) -> 0.1 + 0.3 + 0.6 + 2.0 = 3.0; t: uniform -> 2.0;
    # r: all mass on bin 1 -> 1.0; b: half on bins 3 and 4 -> 3.5. Times stride 8 -> pixels.
    sides = [torch.log(torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])), torch.zeros(5),
             torch.tensor([0.0, 100.0, 0.0, 0.0, 0.0]), torch.tensor([-100.0, -100.0, -100.0, 50.0, 50.0])]
    logits = torch.cat(sides)[None]  # [1, 4 * 5], side-major
    dist = distribution_to_distance(logits, 4)
    assert dist[0].tolist() == pytest.approx([3.0, 2.0, 1.0, 3.5], abs=1e-5)
    assert (dist * 8)[0].tolist() == pytest.approx([24.0, 16.0, 8.0, 28.0], abs=1e-4)
    with pytest.raises(ValueError, match="REG_MAX"):
        distribution_to_distance(torch.zeros(1, 20), 16)


def test_dgqp_statistics_by_hand():
    # reg_max 3 (4 bins), top-2. fc1 = identity on the 4 * 3 statistics, fc2 = sum - 3.
    # Uniform sides: top-2 (0.25, 0.25), mean 0.25 -> 0.75 per side, 3.0 in all -> sigmoid(0).
    # One-hot sides: top-2 (1, 0), mean 0.5 -> 1.5 per side, 6.0 in all -> sigmoid(3).
    dgqp = DGQP(reg_max=3, topk=2, hidden=12)
    with torch.no_grad():
        dgqp.fc1.weight.copy_(torch.eye(12)[:, :, None, None])
        dgqp.fc1.bias.zero_()
        dgqp.fc2.weight.fill_(1.0)
        dgqp.fc2.bias.fill_(-3.0)
    uniform = torch.zeros(1, 16, 1, 1)
    one_hot = torch.tensor([100.0, 0, 0, 0] * 4).reshape(1, 16, 1, 1)
    out = dgqp(torch.cat([uniform, one_hot], dim=3))  # [1, 1, 1, 2]
    assert out.shape == (1, 1, 1, 2)
    assert out.flatten().tolist() == pytest.approx([0.5, 1 / (1 + math.exp(-3))], abs=1e-5)
    with pytest.raises(ValueError, match="DGQP_TOPK"):
        DGQP(reg_max=3, topk=5)


@pytest.mark.parametrize("dgqp", [False, True])
def test_head_shapes_and_init(dgqp):
    shapes = [ShapeSpec(channels=32, stride=s) for s in (8, 16)]
    head = GFLHead(input_shape=shapes, num_classes=3, reg_max=7, num_convs=1, norm="GN", dgqp=dgqp)
    feats = [torch.randn(2, 32, 6, 5), torch.randn(2, 32, 3, 3)]
    out = head(feats)
    assert set(out) == ({"logits", "box_logits", "quality"} if dgqp else {"logits", "box_logits"})
    logits, box_logits, quality = out["logits"], out["box_logits"], out.get("quality")
    for f, l, b in zip(feats, logits, box_logits):
        assert l.shape == (2, 3, *f.shape[-2:]) and b.shape == (2, 32, *f.shape[-2:])
    assert torch.sigmoid(head.cls_logits.bias).tolist() == pytest.approx([0.01] * 3)
    assert not hasattr(head, "centerness")
    if dgqp:
        assert [q.shape for q in quality] == [(2, 1, 6, 5), (2, 1, 3, 3)]
        assert all(((q > 0) & (q < 1)).all() for q in quality)
    else:
        assert quality is None


# ---- The GFL detector's losses

def tiny_gfl(*opts):
    return build_model(load_cfg("configs/GFL/GFL_tiny_R_18_cpu.yaml", *opts))


def test_losses_by_hand():
    # One stride-8 level with points (4,4) (positive for GT 0) and (12,4) (background); K = 2,
    # REG_MAX 4. GT [0,0,16,8] class 1: from (4,4), ltrb = (4,4,12,4) px = (0.5,0.5,1.5,0.5).
    # Box logits 0 -> uniform S = 0.2 -> every side 2 strides = 16 px: box [-12,-12,20,20]
    # (area 1024) contains the GT (128): IoU = GIoU = 0.125.
    # QFL (num_pos 1): point 0 logits (log(1/3), 0) -> s = (0.25, 0.5), y = (0, 0.125):
    #   0.25^2 * -log(0.75) + 0.375^2 * log2 = 0.0179801 + 0.0974738; point 1 s = (0.5, 0.5),
    #   y = 0: 2 * 0.25 log2 = 0.3465736. Total 0.4620275.
    # Weight = max s of point 0 = 0.5; normalizer max(0.5, 1) = 1 (clamped as in the code).
    # GIoU: 2.0 * 0.5 * (1 - 0.125) = 0.875. DFL: S = 0.2 at every bin -> each side log 5;
    #   0.25 * 0.5 * 4 * log5 / 4 = 0.2011797.
    model = tiny_gfl("MODEL.DENSE.NUM_CLASSES", 2, "MODEL.GFL_HEAD.REG_MAX", 4)
    shifts = [torch.tensor([[4.0, 4.0], [12.0, 4.0]])] + [torch.zeros(0, 2)] * 4
    gt = make_instances((8, 16), [[0, 0, 16, 8]], [1])
    scores = torch.tensor([[[math.log(1 / 3), 0.0], [0.0, 0.0]]], requires_grad=True)
    box_logits = torch.zeros(1, 2, 20, requires_grad=True)
    assert not model.head.cls_scores_activated  # no DGQP: QFL on the logits
    flat = {"logits": scores, "box_logits": box_logits}
    losses = loss_terms_on(model, shifts, [gt], torch.tensor([[0, -1]]), flat)
    assert set(losses) == {"loss_cls", "loss_box", "loss_dfl"}
    assert losses["loss_cls"].item() == pytest.approx(
        0.0625 * -math.log(0.75) + 0.140625 * LOG2 + 0.5 * LOG2, rel=1e-5)
    assert losses["loss_box"].item() == pytest.approx(0.875, rel=1e-5)
    assert losses["loss_dfl"].item() == pytest.approx(0.25 * 0.5 * math.log(5), rel=1e-5)
    # The IoU target and the box-loss weights are detached: QFL trains only the scores, the box
    # losses only the distributions.
    losses["loss_cls"].backward(retain_graph=True)
    assert box_logits.grad is None or not box_logits.grad.any()
    qfl_grad = scores.grad.clone()
    (losses["loss_box"] + losses["loss_dfl"]).backward()
    assert torch.equal(scores.grad, qfl_grad)  # the box losses add nothing to the scores
    assert box_logits.grad[0, 0].abs().sum() > 0
    # IGNORE (-2) leaves point 1 out of QFL: only point 0's 0.1154539 remains.
    ignored = loss_terms_on(model, shifts, [gt], torch.tensor([[0, -2]]), flat)
    expected = 0.0625 * -math.log(0.75) + 0.140625 * LOG2
    assert ignored["loss_cls"].item() == pytest.approx(expected, rel=1e-5)


def test_qfl_normalizer_counts_an_image_without_positives_as_one():
    # The points, GT and logits of test_losses_by_hand in image 0; image 1 has no object and
    # logits 0 at both points. QFL sums: image 0 0.0179801 + 0.0974738 + 0.3465736 = 0.4620275;
    # image 1: four (point, class) pairs with s = 0.5, y = 0: 4 * 0.25 log2 = log2 = 0.6931472.
    # Normalizer (MMDetection gfl_head.py): max(1, 1) + max(0, 1) = 2, not max(1 positive, 1) = 1:
    # loss_cls = (0.4620275 + 0.6931472) / 2 = 0.5775874.
    # The box losses keep their own normalizer: max(sum of weights 0.5, 1) = 1 -> GIoU 0.875.
    model = tiny_gfl("MODEL.DENSE.NUM_CLASSES", 2, "MODEL.GFL_HEAD.REG_MAX", 4)
    shifts = [torch.tensor([[4.0, 4.0], [12.0, 4.0]])] + [torch.zeros(0, 2)] * 4
    gts = [make_instances((8, 16), [[0, 0, 16, 8]], [1]), make_instances((8, 16), [], [])]
    scores = torch.tensor([[[math.log(1 / 3), 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    flat = {"logits": scores, "box_logits": torch.zeros(2, 2, 20)}
    losses = loss_terms_on(model, shifts, gts, torch.tensor([[0, -1], [-1, -1]]), flat)
    image0 = 0.0625 * -math.log(0.75) + 0.140625 * LOG2 + 0.5 * LOG2
    assert losses["loss_cls"].item() == pytest.approx((image0 + LOG2) / 2, rel=1e-5)
    assert losses["loss_box"].item() == pytest.approx(0.875, rel=1e-5)
    # A batch whose images all have positives divides by the positives (here 1 + 2 = 3).
    assert floored_positives_per_image(torch.tensor([[True, False], [True, True]])).item() == 3
    assert floored_positives_per_image(torch.tensor([[True, False], [False, False]])).item() == 2
    with pytest.raises(ValueError, match=r"pos must be \[N, R\], got \(2,\)"):
        floored_positives_per_image(torch.tensor([True, False]))


def test_box_losses_normalised_by_the_sum_of_score_weights():
    # Three positives with s = 0.9 at their class: weights sum 2.7 > 1 -> box and DFL losses
    # are per-weight averages; same value as one positive when the three are identical.
    model = tiny_gfl("MODEL.GFL_HEAD.REG_MAX", 4)
    shifts = [torch.tensor([[4.0, 4.0]] * 3)] + [torch.zeros(0, 2)] * 4
    gt = make_instances((8, 16), [[0, 0, 16, 8]], [0])
    scores = torch.full((1, 3, 1), math.log(9))  # sigmoid = 0.9
    box_logits = torch.zeros(1, 3, 20)
    matched = torch.zeros(1, 3, dtype=torch.long)
    losses = loss_terms_on(model, shifts, [gt], matched, {"logits": scores, "box_logits": box_logits})
    assert losses["loss_box"].item() == pytest.approx(2.0 * 0.875, rel=1e-5)
    assert losses["loss_dfl"].item() == pytest.approx(0.25 * math.log(5), rel=1e-5)


def test_image_without_objects_and_targets_beyond_reg_max():
    model = tiny_gfl("MODEL.GFL_HEAD.REG_MAX", 2)  # 2 strides: larger objects are clamped to the last bin
    empty = make_batch(128, 160)[1:]
    with EventStorage():
        losses = model(empty)
    assert losses["loss_box"].item() == 0 and losses["loss_dfl"].item() == 0
    assert losses["loss_cls"].item() > 0
    sum(losses.values()).backward()
    assert model.head.box_pred.weight.grad is not None  # kept in the graph by 0 * sum
    with EventStorage():
        big_gt = make_instances((128, 160), [[2, 2, 150, 120]], [0])
        big = model([{"image": empty[0]["image"], "instances": big_gt}])
    assert all(torch.isfinite(v) for v in big.values()) and big["loss_dfl"] > 0


# ---- YAMLs

@pytest.mark.parametrize("config_file, opts", [
    ("configs/GFL/GFL_tiny_R_18_cpu.yaml", []),
    ("configs/GFL/GFL_tiny_R_18_cpu.yaml", ["MODEL.GFL_HEAD.DGQP", True]),
    pytest.param("configs/GFL/GFL_R_50_FPN_1x.yaml", [], marks=pytest.mark.slow),
])
def test_gfl_configs_train_one_step_and_predict(config_file, opts):
    model, losses = train_step_and_predict(load_cfg(config_file, "MODEL.DENSE.SCORE_THRESH_TEST", 0.0, *opts), 1)
    assert type(model).__name__ == "GFL" and isinstance(model.criterion.assigner, ATSSAssigner)
    assert set(losses) == {"loss_cls", "loss_box", "loss_dfl"}
    assert losses["loss_box"] > 0 and losses["loss_dfl"] > 0  # the objects got positives
    assert (model.head.dgqp is not None) == ("MODEL.GFL_HEAD.DGQP" in opts)


def test_gfl_with_the_fcos_assigner_from_yaml():
    cfg = load_cfg("configs/GFL/GFL_tiny_R_18_cpu.yaml", "MODEL.DENSE.ASSIGNER", "FCOSAssigner",
                   "MODEL.DENSE.SCORE_THRESH_TEST", 0.0)
    model, _ = train_step_and_predict(cfg, 1)
    assert isinstance(model.criterion.assigner, FCOSAssigner)

"""IoU-family and focal losses against values worked out by hand."""
import math

import pytest
import torch

from d2_anchorfree.modeling.geometry import ltrb_as_boxes, paired_iou
from d2_anchorfree.modeling.losses import focal_loss_with_labels, iou_loss


def test_iou_losses_on_nested_ltrb():
    # pred ltrb (1,1,1,1) -> box [-1,-1,1,1] (area 4) inside target (2,2,2,2) (area 16): IoU = 1/4.
    pred = ltrb_as_boxes(torch.tensor([[1.0, 1, 1, 1]]))
    target = ltrb_as_boxes(torch.tensor([[2.0, 2, 2, 2]]))
    # "iou" is the FCOS authors' -log((I + 1) / (U + 1)): I = 4, U = 16 -> -log(5 / 17) = 1.2237754.
    assert iou_loss(pred, target, "iou").item() == pytest.approx(-math.log(5 / 17))
    assert iou_loss(pred, target, "linear_iou").item() == pytest.approx(0.75)
    # enclosing box = target, so GIoU = IoU.
    assert iou_loss(pred, target, "giou").item() == pytest.approx(0.75)


def test_giou_of_disjoint_boxes():
    # [0,0,1,1] vs [2,0,3,1]: IoU 0, union 2, enclosing [0,0,3,1] area 3 -> GIoU = -(3-2)/3.
    a, b = torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([[2.0, 0, 3, 1]])
    assert paired_iou(a, b, giou=True).item() == pytest.approx(-1 / 3, abs=1e-6)
    assert iou_loss(a, b, "giou").item() == pytest.approx(4 / 3, abs=1e-6)


def test_diou_and_ciou_hand_computed():
    """Zheng et al. (AAAI 2020) Eq. 6-11. (0, 0, 2, 2) vs (1, 1, 3, 3): IoU 1/7, centre distance^2 2,
    enclosing diagonal^2 18, same aspect (v = 0): DIoU = CIoU = 1 - 1/7 + 2/18. (0, 0, 2, 1) vs
    (0, 0, 1, 2): IoU 1/3, d^2 = 0.5, c^2 = 8, v = 4/pi^2 (atan(1/2) - atan(2))^2 = 0.1678253,
    alpha = v / (1 - 1/3 + v) = 0.2011146: DIoU 0.7291667, CIoU + alpha v = 0.7629186."""
    a, b = torch.tensor([[0.0, 0, 2, 2], [0, 0, 2, 1]]), torch.tensor([[1.0, 1, 3, 3], [0, 0, 1, 2]])
    diou = iou_loss(a, b, "diou", reduction="none")
    v = 4 / math.pi ** 2 * (math.atan(0.5) - math.atan(2)) ** 2
    assert diou.tolist() == pytest.approx([1 - 1 / 7 + 2 / 18, 1 - 1 / 3 + 0.5 / 8], rel=1e-5)
    ciou = iou_loss(a, b, "ciou", reduction="none")
    assert ciou.tolist() == pytest.approx([1 - 1 / 7 + 2 / 18, 1 - 1 / 3 + 0.5 / 8 + v * v / (2 / 3 + v)], rel=1e-5)
    assert ciou[1].item() == pytest.approx(0.7629186, rel=1e-5)
    # from ltrb around one point: only the relative geometry matters, as for the other types
    pred, target = ltrb_as_boxes(torch.tensor([[1.0, 1, 1, 1]])), ltrb_as_boxes(torch.tensor([[2.0, 2, 2, 2]]))
    assert iou_loss(pred, target, "ciou").item() == pytest.approx(0.75, rel=1e-5)  # same centre, same aspect
    w = torch.tensor([2.0, 0.5])
    assert iou_loss(a, b, "ciou", weight=w).item() == pytest.approx((ciou * w).sum().item(), rel=1e-6)
    with pytest.raises(ValueError, match="must be one of iou/linear_iou/giou/diou/ciou, got 'eiou'"):
        iou_loss(a, b, "eiou")


def test_fcos_iou_loss_is_finite_with_a_gradient_at_zero_iou():
    # FCOS authors' form (fcos_core/layers/iou_loss.py): -log((I + 1) / (U + 1)), pixels.
    # Disjoint [0, 0, 1, 1] and [2, 0, 3, 1]: I = 0, U = 1 + 1 = 2 -> log 3 = 1.0986123
    # (-log(max(IoU, eps)) gave -log(eps) and no gradient). d/dbox of log(U + 1) with
    # U = (x1 - x0)(y1 - y0) + 1: (1 / 3) * (-1, -1, 1, 1): the loss shrinks the predicted box.
    pred = torch.tensor([[0.0, 0, 1, 1]], requires_grad=True)
    loss = iou_loss(pred, torch.tensor([[2.0, 0, 3, 1]]), "iou")
    assert loss.item() == pytest.approx(math.log(3), rel=1e-6)
    loss.backward()
    assert pred.grad[0].tolist() == pytest.approx([-1 / 3, -1 / 3, 1 / 3, 1 / 3], rel=1e-6)
    # A predicted ltrb of zero height (1, 0, 1, 0) at the center of the target (2, 2, 2, 2):
    # I = 2 * 0 = 0, U = 16 -> log 17 = 2.8332133. d/dt = -(dI/dt) / (I + 1) + (dU/dt) / (U + 1)
    # with dI/dt = w_I = 2 and dU/dt = (l + r) - dI/dt = 0: -2 (the same for b); l and r: 0.
    ltrb = torch.tensor([[1.0, 0, 1, 0]], requires_grad=True)
    loss = iou_loss(ltrb_as_boxes(ltrb), ltrb_as_boxes(torch.tensor([[2.0, 2, 2, 2]])), "iou")
    assert loss.item() == pytest.approx(math.log(17), rel=1e-6)
    loss.backward()
    assert ltrb.grad[0].tolist() == pytest.approx([0.0, -2.0, 0.0, -2.0], abs=1e-6)


def test_iou_loss_weights_and_errors():
    pred = ltrb_as_boxes(torch.tensor([[1.0, 1, 1, 1], [2.0, 2, 2, 2]]))
    target = ltrb_as_boxes(torch.tensor([[2.0, 2, 2, 2], [2.0, 2, 2, 2]]))
    # losses 0.75 and 0 (identical); weights 2 and 5 -> 1.5
    assert iou_loss(pred, target, "linear_iou", weight=torch.tensor([2.0, 5.0])).item() == pytest.approx(1.5)
    with pytest.raises(ValueError, match="BOX_LOSS_TYPE"):
        iou_loss(pred, target, "l1")


def test_iou_loss_gradient_grows_the_small_box():
    pred = torch.tensor([[1.0, 1, 1, 1]], requires_grad=True)
    iou_loss(ltrb_as_boxes(pred), ltrb_as_boxes(torch.tensor([[2.0, 2, 2, 2]])), "giou").backward()
    assert (pred.grad < 0).all()  # descending the loss increases every distance


def test_focal_loss_by_hand():
    # logit 0 -> p = 0.5. Positive: alpha (1-p)^2 (-log p) = 0.25 * 0.25 * ln2.
    # Negative: (1-alpha) p^2 (-log(1-p)) = 0.75 * 0.25 * ln2.
    logits = torch.zeros(3, 2)
    labels = torch.tensor([0, 2, 1])  # class 0, background (K = 2), class 1
    valid = torch.tensor([True, True, False])  # third location ignored
    pos, neg = 0.25 * 0.25 * math.log(2), 0.75 * 0.25 * math.log(2)
    got = focal_loss_with_labels(logits, labels, valid, alpha=0.25, gamma=2.0)
    # row 0: one positive (class 0) + one negative (class 1); row 1: two negatives.
    assert got.item() == pytest.approx(pos + 3 * neg)

"""DeFCN (Wang et al., CVPR 2021): POTO one-to-one assignment, its auxiliary one-to-many
assignment, 3D Max Filtering, the head/meta-arch, NMS-free inference and the configs."""
import math

import pytest
import torch
import torch.nn.functional as F

from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from conftest import load_cfg, make_batch, make_instances, slow_unless_tiny
from d2_anchorfree.layers.max_filter import MaxFiltering3D, max_filter_3d
from d2_anchorfree.modeling.assigners import BACKGROUND, IGNORE, build_assigner
from d2_anchorfree.modeling.assigners.base import level_ranges
from d2_anchorfree.modeling.assigners.poto import (
    POTOAssigner, match_one_to_one, match_one_to_one_dense, pair_quality,
)
from d2_anchorfree.modeling.assigners.poto_aux import POTOAuxAssigner, candidate_threshold
from d2_anchorfree.modeling.heads import joint_logits
from d2_anchorfree.modeling.shift_generator import ShiftGenerator

DEFCN_CONFIGS = [
    "configs/DeFCN/POTO_R_50_FPN_1x.yaml",
    "configs/DeFCN/POTO_3DMF_R_50_FPN_1x.yaml",
    "configs/DeFCN/POTO_3DMF_Aux_R_50_FPN_1x.yaml",
    "configs/DeFCN/DeFCN_tiny_R_18_cpu.yaml",
]
TINY = "configs/DeFCN/DeFCN_tiny_R_18_cpu.yaml"


def point_box_distances(points, boxes):
    """Reference [R, G, 4] (l, t, r, b) from every point to every box (FCOS Eq. 1), dense on purpose."""
    p = points[:, None, :]
    return torch.cat([p - boxes[..., :2], boxes[..., 2:] - p], dim=-1)


def center_region(gt_boxes, point_strides, radius):
    """Reference [R, G, 4] center-sampling regions (cx -+ r s, cy -+ r s) clipped to the GT box."""
    centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2
    half = (point_strides * radius)[:, None, None]
    lo = torch.max(centers[None] - half, gt_boxes[None, :, :2])
    hi = torch.min(centers[None] + half, gt_boxes[None, :, 2:])
    return torch.cat([lo, hi], dim=2)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def grid(height, width, strides):
    """Per-level points of a height x width image (ShiftGenerator, offset 0.5)."""
    gen = ShiftGenerator(strides=strides, offset=0.5)
    return [gen.grid_shifts(-(-height // s), -(-width // s), s, "cpu") for s in strides]


def greedy_match(quality, in_prior):
    """A greedy matcher (NOT POTO): each GT in turn takes its best free in-prior location."""
    num_gt, num_points = quality.shape
    matched = torch.full((num_points,), BACKGROUND, dtype=torch.long)
    for g in range(num_gt):
        q = torch.where(in_prior[g] & (matched == BACKGROUND), quality[g], torch.tensor(-1.0))
        if q.max() >= 0:
            matched[q.argmax()] = g
    return matched


def total_quality(quality, matched):
    pos = matched >= 0
    return quality[matched[pos], pos.nonzero().squeeze(1)].sum().item()


def in_prior_part(matched, in_prior):
    """``matched`` [R] with its out-of-prior positives set to BACKGROUND."""
    pos = (matched >= 0).nonzero().squeeze(1)
    inside = in_prior[matched[pos], pos]
    kept = matched.clone()
    kept[pos[~inside]] = BACKGROUND
    return kept


def authors_objective(quality, in_prior, matched):
    """The DeFCN authors' matching value: Q of each matched pair, -1 outside the prior."""
    pos = (matched >= 0).nonzero().squeeze(1)
    g = matched[pos]
    return torch.where(in_prior[g, pos], quality[g, pos].double(), torch.tensor(-1.0, dtype=torch.float64)).sum().item()


def assert_same_optimum_as_the_authors(matched, quality, in_prior):
    """Our two-stage POTO vs the authors' full [G, R] matching (``match_one_to_one_dense``):
    the same in-prior pairs, the same number of positives (min(G, R) when nothing is crowd),
    each GT at most once, and the same objective value."""
    authors = match_one_to_one_dense(quality, in_prior)
    assert torch.equal(in_prior_part(matched, in_prior), in_prior_part(authors, in_prior))
    pos = matched >= 0
    assert int(pos.sum()) == int((authors >= 0).sum()) == min(quality.shape)
    assert len(set(matched[pos].tolist())) == int(pos.sum())
    assert authors_objective(quality, in_prior, matched) == pytest.approx(
        authors_objective(quality, in_prior, authors), abs=1e-9)


# ----------------------------------------------------------------------------- POTO quality
def test_quality_of_one_hand_computed_pair():
    # GT box [0, 0, 32, 32] of class 1; predicted box [0, 0, 32, 1] lies inside it:
    # IoU = 32 / 1024 = 1/32. p(class 1) = 0.32768 = 0.8^5 (class 0 has p = 0.9, must be unused).
    # Q = p^(1 - 0.8) * IoU^0.8 = 0.8 * (1/32)^0.8 = 0.8 * 2^-4 = 0.05.
    gt = make_instances((32, 32), [[0, 0, 32, 32]], [1])
    pred_logits = torch.tensor([[logit(0.9), logit(0.32768)]])
    pred_boxes = torch.tensor([[0.0, 0.0, 32.0, 1.0]])
    q = pair_quality(torch.tensor([0]), torch.tensor([0]), gt, torch.sigmoid(pred_logits), pred_boxes, alpha=0.8)
    assert q.item() == pytest.approx(0.05, rel=1e-5)
    # alpha = 0: class probability only; alpha = 1: IoU only
    assert pair_quality(torch.tensor([0]), torch.tensor([0]), gt, torch.sigmoid(pred_logits), pred_boxes, 0.0).item() == \
        pytest.approx(0.32768, rel=1e-5)
    assert pair_quality(torch.tensor([0]), torch.tensor([0]), gt, torch.sigmoid(pred_logits), pred_boxes, 1.0).item() == \
        pytest.approx(1 / 32, rel=1e-5)


# ----------------------------------------------------------------------------- POTO matching
def toy_greedy_trap():
    """16x16 image, one level of stride 8: points 0 (4, 4), 1 (12, 4), 2 (4, 12), 3 (12, 12).

    Two GTs with the same box [0, 0, 16, 8] (classes 0 and 1) contain points 0 and 1 only.
    Every point predicts that box (IoU 1), so Q = p^0.2 and p = Q^5 sets Q directly:
        Q      point 0   point 1
        GT 0     0.9       0.8
        GT 1     0.85      0.1
    Points 2 and 3 (outside both boxes) predict p = 0.99 for both classes: never usable.
    """
    shifts = grid(16, 16, [8])
    gt = make_instances((16, 16), [[0, 0, 16, 8], [0, 0, 16, 8]], [0, 1])
    q = torch.tensor([[0.9, 0.8], [0.85, 0.1]])
    pred_logits = torch.full((4, 2), logit(0.99))
    pred_logits[:2] = torch.logit(q.t() ** 5)  # [point, class]
    pred_boxes = torch.tensor([[0.0, 0.0, 16.0, 8.0]]).repeat(4, 1)
    quality = torch.tensor([[0.9, 0.8, 0.0, 0.0], [0.85, 0.1, 0.0, 0.0]])
    in_prior = torch.tensor([[True, True, False, False]] * 2)
    return shifts, gt, pred_logits, pred_boxes, quality, in_prior


@pytest.mark.parametrize("chunk_elements", [1 << 20, 0])  # dense solver / sparse solver
def test_poto_is_optimal_where_greedy_is_not(chunk_elements):
    shifts, gt, pred_logits, pred_boxes, quality, in_prior = toy_greedy_trap()
    assigner = POTOAssigner(strides=[8], sizes_of_interest=[], spatial_prior="inside",
                            chunk_elements=max(chunk_elements, 1))
    matched = assigner(shifts, gt, pred_scores=torch.sigmoid(pred_logits), pred_boxes=pred_boxes).matched
    # Optimal: GT 1 -> point 0 (0.85), GT 0 -> point 1 (0.8): total 1.65.
    assert matched.tolist() == [1, 0, BACKGROUND, BACKGROUND]
    assert total_quality(quality, matched) == pytest.approx(1.65)
    # Greedy: GT 0 grabs point 0 (0.9), GT 1 is left with point 1 (0.1): total 1.0 < 1.65.
    greedy = greedy_match(quality, in_prior)
    assert greedy.tolist() == [0, 1, BACKGROUND, BACKGROUND]
    assert total_quality(quality, greedy) == pytest.approx(1.0)
    assert not torch.equal(greedy, matched)


def brute_force_problem(shifts, strides, gt, pred_logits, pred_boxes, spatial_prior, radius,
                        level_prior, sizes, alpha=0.8):
    """Dense [G, R] quality and prior computed independently of the assigner's code path."""
    points = torch.cat(shifts)
    point_strides = torch.cat([torch.full((len(s),), float(st)) for s, st in zip(shifts, strides)])
    ranges = level_ranges(sizes, len(strides))
    lo = torch.cat([torch.full((len(s),), r[0]) for s, r in zip(shifts, ranges)])
    hi = torch.cat([torch.full((len(s),), r[1]) for s, r in zip(shifts, ranges)])
    boxes = gt.gt_boxes.tensor
    ltrb = point_box_distances(points, boxes)  # [R, G, 4]
    if spatial_prior == "inside":
        prior = ltrb.min(dim=2).values > 0
    else:
        prior = point_box_distances(points, center_region(boxes, point_strides, radius)).min(dim=2).values > 0
    if level_prior == "fcos":
        m = ltrb.max(dim=2).values
        prior &= (m >= lo[:, None]) & (m <= hi[:, None])
    G, R = len(boxes), len(points)
    probs = torch.sigmoid(pred_logits[:, gt.gt_classes]).t()  # [G, R]
    inter_lt = torch.max(pred_boxes[None, :, :2], boxes[:, None, :2])
    inter_rb = torch.min(pred_boxes[None, :, 2:], boxes[:, None, 2:])
    inter = (inter_rb - inter_lt).clamp(min=0).prod(dim=2)
    area_p = (pred_boxes[:, 2:] - pred_boxes[:, :2]).prod(dim=1)
    area_g = (boxes[:, 2:] - boxes[:, :2]).prod(dim=1)
    iou = inter / (area_p[None] + area_g[:, None] - inter)
    quality = probs ** (1 - alpha) * iou ** alpha
    assert quality.shape == (G, R)
    return quality, prior.t()


def random_case(gen, num_gt, height=64, width=96, num_classes=3, strides=(8, 16, 32)):
    shifts = grid(height, width, list(strides))
    points = torch.cat(shifts)
    xy = torch.rand(num_gt, 2, generator=gen) * torch.tensor([width, height])
    wh = 4 + torch.rand(num_gt, 2, generator=gen) * 50
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], 1)
    classes = torch.randint(0, num_classes, (num_gt,), generator=gen)
    gt = make_instances((height, width), boxes.tolist(), classes.tolist())
    pred_logits = torch.randn(len(points), num_classes, generator=gen) * 2
    ltrb = 1 + torch.rand(len(points), 4, generator=gen) * 30
    pred_boxes = torch.cat([points - ltrb[:, :2], points + ltrb[:, 2:]], 1)
    return list(strides), shifts, gt, pred_logits, pred_boxes


@pytest.mark.parametrize("spatial_prior,level_prior", [("center", "all"), ("inside", "all"),
                                                       ("center", "fcos"), ("inside", "fcos")])
def test_restricted_matching_equals_unrestricted_on_random_cases(spatial_prior, level_prior):
    gen = torch.Generator().manual_seed(1)
    sizes = [16, 32]
    for trial in range(8):
        num_gt = [1, 3, 7, 12, 25, 40, 2, 60][trial]
        strides, shifts, gt, pred_logits, pred_boxes = random_case(gen, num_gt)
        # chunk_elements small: several GT chunks per level
        assigner = POTOAssigner(strides=strides, sizes_of_interest=sizes, spatial_prior=spatial_prior,
                                center_sampling_radius=1.5, level_prior=level_prior, chunk_elements=200)
        matched = assigner(shifts, gt, pred_scores=torch.sigmoid(pred_logits), pred_boxes=pred_boxes).matched
        quality, in_prior = brute_force_problem(shifts, strides, gt, pred_logits, pred_boxes,
                                                spatial_prior, 1.5, level_prior, sizes)
        assert_same_optimum_as_the_authors(matched, quality, in_prior)
        # every GT exactly once (G <= R here)
        assert sorted(matched[matched >= 0].tolist()) == list(range(num_gt)), trial


@pytest.mark.parametrize("max_dense_elements", [1 << 20, 0])  # dense solver / sparse solver
def test_restricted_matching_equals_dense_with_more_gts_than_columns(max_dense_elements):
    # 6 GTs compete for 4 usable columns out of 10 points: in the prior, 2 GTs stay unmatched
    # (the first stage); the authors' full matching gives them out-of-prior points.
    gen = torch.Generator().manual_seed(3)
    for _ in range(20):
        quality = torch.rand(6, 10, generator=gen)
        in_prior = torch.zeros(6, 10, dtype=torch.bool)
        in_prior[:, [1, 4, 5, 8]] = torch.rand(6, 4, generator=gen) < 0.7
        gi, pi = in_prior.nonzero(as_tuple=True)
        first = match_one_to_one(pi, gi, quality[gi, pi], num_gt=6, num_points=10,
                                 max_dense_elements=max_dense_elements)
        assert torch.equal(first, in_prior_part(match_one_to_one_dense(quality, in_prior), in_prior))
        assert int((first >= 0).sum()) <= 4


@pytest.mark.parametrize("chunk_elements", [1 << 20, 1000])  # dense solver / sparse solver
def test_hundreds_of_gts(chunk_elements):
    gen = torch.Generator().manual_seed(7)
    strides, shifts, gt, pred_logits, pred_boxes = random_case(gen, 300, height=128, width=160,
                                                               strides=(8, 16, 32, 64, 128))
    assigner = POTOAssigner(strides=strides, sizes_of_interest=[64, 128, 256, 512],
                            chunk_elements=chunk_elements)
    matched = assigner(shifts, gt, pred_scores=torch.sigmoid(pred_logits), pred_boxes=pred_boxes).matched
    quality, in_prior = brute_force_problem(shifts, strides, gt, pred_logits, pred_boxes, "center",
                                            1.5, "all", [64, 128, 256, 512])
    assert_same_optimum_as_the_authors(matched, quality, in_prior)
    assert sorted(matched[matched >= 0].tolist()) == list(range(300))  # 428 points >= 300 GTs


def test_poto_no_gt():
    shifts = grid(32, 48, [8, 16])
    R = sum(len(s) for s in shifts)
    empty = make_instances((32, 48), [], [])
    for assigner in (POTOAssigner(strides=[8, 16], sizes_of_interest=[64]),
                     POTOAuxAssigner(strides=[8, 16], sizes_of_interest=[64])):
        matched = assigner(shifts, empty, pred_scores=torch.sigmoid(torch.zeros(R, 3)), pred_boxes=torch.zeros(R, 4)).matched
        assert matched.shape == (R,) and matched.dtype == torch.long
        assert (matched == BACKGROUND).all()


def test_gt_without_prior_location_gets_the_nearest_free_point_and_zero_quality_is_positive():
    # One level, stride 8, 32x32 image: points at 4, 12, 20, 28 on each axis.
    # GT 0 [5, 5, 11, 11] contains no point (4 < 5 and 12 > 11): in the authors' matching
    # (Q = -1 outside the prior) it still gets one point, outside its prior.
    # GT 1 [0, 0, 16, 16] contains points (4,4), (12,4), (4,12), (12,12) = indices 0, 1, 4, 5.
    # Every predicted box is degenerate (zero area) -> IoU 0 -> Q = 0 for all pairs; GT 1 still
    # gets exactly one positive inside its prior (needed to start training). GT 0's tie (Q = 0
    # everywhere) goes to the free point nearest its center (8, 8): one of the three of 0, 1, 4, 5
    # GT 1 left (all at distance sqrt(32)), the lowest index.
    shifts = grid(32, 32, [8])
    gt = make_instances((32, 32), [[5, 5, 11, 11], [0, 0, 16, 16]], [0, 0])
    points = shifts[0]
    pred_boxes = torch.cat([points, points], 1)
    for spatial_prior in ("inside", "center"):
        # "center" (radius 1.5 strides = 12 px around (8, 8), clipped to GT 1) gives the same four
        # points for GT 1; GT 0's center region is its box, still without a point.
        assigner = POTOAssigner(strides=[8], sizes_of_interest=[], spatial_prior=spatial_prior)
        matched = assigner(shifts, gt, pred_scores=torch.sigmoid(torch.zeros(16, 1)), pred_boxes=pred_boxes).matched
        gt1 = (matched == 1).nonzero().squeeze(1).tolist()
        gt0 = (matched == 0).nonzero().squeeze(1).tolist()
        assert len(gt1) == 1 and gt1[0] in (0, 1, 4, 5)
        assert gt0 == [min(set([0, 1, 4, 5]) - set(gt1))]
        assert int((matched >= 0).sum()) == 2


def two_gts_one_prior_point():
    """16x16 image, one level of stride 8: points 0 (4, 4), 1 (12, 4), 2 (4, 12), 3 (12, 12).

    GT 0 (class 0) and GT 1 (class 1) have the same box [2, 2, 6, 6]: both priors ("inside")
    hold point 0 only. Every point predicts that box (IoU 1), so Q = p^0.2 and p = Q^5:
        Q      point 0   point 1   point 2   point 3
        GT 0     0.9      0.95      0.95      0.95     (outside GT 0's prior: -1 for the authors)
        GT 1     0.6      0.5       0.7       0.3      (outside GT 1's prior: -1 for the authors)
    """
    shifts = grid(16, 16, [8])
    gt = make_instances((16, 16), [[2, 2, 6, 6], [2, 2, 6, 6]], [0, 1])
    quality = torch.tensor([[0.9, 0.95, 0.95, 0.95], [0.6, 0.5, 0.7, 0.3]])
    pred_scores = quality.t() ** 5  # [point, class]
    pred_boxes = torch.tensor([[2.0, 2.0, 6.0, 6.0]]).repeat(4, 1)
    in_prior = torch.tensor([[True, False, False, False]] * 2)
    return shifts, gt, pred_scores, pred_boxes, quality, in_prior


@pytest.mark.parametrize("chunk_elements", [1 << 20, 1])  # dense solver / sparse solver
def test_two_gts_with_the_same_single_prior_point_both_get_one_location(chunk_elements):
    shifts, gt, pred_scores, pred_boxes, quality, in_prior = two_gts_one_prior_point()
    assigner = POTOAssigner(strides=[8], sizes_of_interest=[], spatial_prior="inside",
                            chunk_elements=chunk_elements)
    matched = assigner(shifts, gt, pred_scores=pred_scores, pred_boxes=pred_boxes).matched
    # Authors' objective (Q in the prior, -1 outside, both GTs matched):
    #   GT 0 -> point 0 (0.9), GT 1 outside (-1): -0.1;  GT 1 -> point 0 (0.6), GT 0 outside: -0.4.
    # So GT 0 keeps point 0, GT 1 takes a free point outside its prior: all are worth -1 to the
    # authors; here the one of highest Q for GT 1, point 2 (0.7 > 0.5 > 0.3).
    assert matched.tolist() == [0, BACKGROUND, 1, BACKGROUND]
    assert authors_objective(quality, in_prior, matched) == pytest.approx(0.9 - 1.0)
    assert_same_optimum_as_the_authors(matched, quality, in_prior)


def test_more_gts_than_points_matches_every_point():
    # Five GTs with the box [2, 2, 6, 6] of test_two_gts_...: only point 0 is in their prior;
    # 4 points. Q of GT g: 0.5 + 0.1 g at point 0 (GT 4 has the best, 0.9, and keeps it),
    # 0.5 at the other points. min(5, 4) = 4 GTs get a point, like linear_sum_assignment on
    # [5, 4]: GT 4 point 0; then, in index order, GT 0, 1, 2 take the free points. Their Q ties
    # at 0.5, so the distance to the box center (4, 4) decides: points 1 (12, 4) and 2 (4, 12)
    # are 8 px away (tie: lower index first), point 3 (12, 12) 8 sqrt(2) px:
    # GT 0 -> point 1, GT 1 -> point 2, GT 2 -> point 3; GT 3 gets none.
    shifts = grid(16, 16, [8])
    gt = make_instances((16, 16), [[2, 2, 6, 6]] * 5, [0, 1, 2, 3, 4])
    quality = torch.full((5, 4), 0.5)
    quality[:, 0] = torch.tensor([0.5, 0.6, 0.7, 0.8, 0.9])
    pred_boxes = torch.tensor([[2.0, 2.0, 6.0, 6.0]]).repeat(4, 1)
    assigner = POTOAssigner(strides=[8], sizes_of_interest=[], spatial_prior="inside")
    matched = assigner(shifts, gt, pred_scores=quality.t() ** 5, pred_boxes=pred_boxes).matched
    assert matched.tolist() == [4, 0, 1, 2]
    in_prior = torch.zeros(5, 4, dtype=torch.bool)
    in_prior[:, 0] = True
    assert_same_optimum_as_the_authors(matched, quality, in_prior)


def test_crowd_gt_is_never_matched_and_its_points_are_ignored():
    shifts = grid(32, 32, [8])
    gt = make_instances((32, 32), [[0, 0, 16, 16], [16, 16, 32, 32]], [0, 0])
    gt.gt_is_crowd = torch.tensor([False, True])
    points = shifts[0]
    pred_boxes = torch.cat([points - 6, points + 6], 1)
    for assigner in (POTOAssigner(strides=[8], sizes_of_interest=[], spatial_prior="inside"),
                     POTOAuxAssigner(strides=[8], sizes_of_interest=[])):
        matched = assigner(shifts, gt, pred_scores=torch.sigmoid(torch.zeros(16, 1)), pred_boxes=pred_boxes).matched
        assert 1 not in matched.tolist()
        # points strictly inside the crowd box: (20|28, 20|28) -> indices 10, 11, 14, 15
        assert matched[[10, 11, 14, 15]].tolist() == [IGNORE] * 4
        assert int((matched == 0).sum()) >= 1


def test_bad_poto_settings_raise():
    with pytest.raises(ValueError, match="SPATIAL_PRIOR"):
        POTOAssigner(strides=[8], sizes_of_interest=[], spatial_prior="box")
    with pytest.raises(ValueError, match="LEVEL_PRIOR"):
        POTOAssigner(strides=[8], sizes_of_interest=[], level_prior="atss")
    with pytest.raises(ValueError, match="ALPHA"):
        POTOAssigner(strides=[8], sizes_of_interest=[], alpha=1.5)
    with pytest.raises(ValueError, match="POTO_AUX.TOPK"):
        POTOAuxAssigner(strides=[8], sizes_of_interest=[], topk=0)
    shifts = grid(16, 16, [8])
    gt = make_instances((16, 16), [[0, 0, 16, 16]], [0])
    with pytest.raises(ValueError, match="pred_boxes"):
        POTOAssigner(strides=[8], sizes_of_interest=[])(shifts, gt, pred_scores=torch.sigmoid(torch.zeros(4, 1)))
    with pytest.raises(ValueError, match="pred_scores must be"):
        POTOAssigner(strides=[8], sizes_of_interest=[])(
            shifts, gt, pred_scores=torch.sigmoid(torch.zeros(3, 1)), pred_boxes=torch.zeros(4, 4))


# ----------------------------------------------------------------------------- auxiliary assignment
def test_candidate_threshold_is_mean_plus_unbiased_std():
    values = torch.tensor([[0.9, 0.3, 0.3, 0.3], [0.5, -1.0, -1.0, -1.0], [-1.0, -1.0, -1.0, -1.0]])
    valid = values >= 0
    thr = candidate_threshold(values, valid)
    # row 0: mean 0.45, unbiased std sqrt((0.45^2 + 3 * 0.15^2) / 3) = sqrt(0.09) = 0.3 -> 0.75
    # row 1: one candidate -> std 0 -> 0.5; row 2: no candidate -> inf
    assert thr[0].item() == pytest.approx(0.75)
    assert thr[1].item() == pytest.approx(0.5)
    assert math.isinf(thr[2].item())


def test_aux_assignment_topk_per_level_and_statistical_threshold():
    # Level 0 (stride 8): 7 points on y = 4, x = 4, 12, ..., 52; level 1 (stride 16): 2 points
    # (8, 8) and (24, 8). GT [0, 0, 40, 16] (class 0) contains level-0 points 0..4 and both
    # level-1 points. Every point predicts the GT box (IoU 1), so Q = p^0.2 and p = Q^5:
    #   level 0: Q = [0.3, 0.9, 0.3, 0.1, 0.3 | 0.95, 0.95 (outside the box)]
    #   level 1: Q = [0.8, 0.4]
    # top-4 per level: level 0 -> {0.9, 0.3, 0.3, 0.3} (0.1 and the out-of-box points dropped),
    # level 1 -> {0.8, 0.4}. Six candidates: mean 3.0 / 6 = 0.5, deviations 0.4, -0.2 x3, 0.3,
    # -0.1 -> unbiased var (0.16 + 0.12 + 0.09 + 0.01) / 5 = 0.076, std 0.27568 -> t = 0.77568.
    # Foreground: level-0 point 1 (0.9) and level-1 point 0 (0.8, index 7).
    level0 = torch.tensor([[4.0 + 8 * i, 4.0] for i in range(7)])
    level1 = torch.tensor([[8.0, 8.0], [24.0, 8.0]])
    q = torch.tensor([0.3, 0.9, 0.3, 0.1, 0.3, 0.95, 0.95, 0.8, 0.4])
    gt = make_instances((16, 64), [[0, 0, 40, 16]], [0])
    pred_logits = torch.logit(q ** 5)[:, None]
    pred_boxes = torch.tensor([[0.0, 0.0, 40.0, 16.0]]).repeat(9, 1)
    aux = POTOAuxAssigner(strides=[8, 16], sizes_of_interest=[64], topk=4)
    matched = aux([level0, level1], gt, pred_scores=torch.sigmoid(pred_logits), pred_boxes=pred_boxes).matched
    assert (matched == 0).nonzero().squeeze(1).tolist() == [1, 7]
    assert (matched[[0, 2, 3, 4, 5, 6, 8]] == BACKGROUND).all()


def test_aux_point_claimed_by_two_gts_takes_the_higher_quality():
    # One point (4, 4) inside two GT boxes; top-1 -> each GT's single candidate is foreground
    # (std 0, threshold = its own Q). Q(GT 0) = 0.5, Q(GT 1) = 0.7 -> GT 1 wins.
    shifts = [torch.tensor([[4.0, 4.0]])]
    gt = make_instances((8, 8), [[0, 0, 8, 8], [0, 0, 8, 8]], [0, 1])
    pred_logits = torch.logit(torch.tensor([[0.5 ** 5, 0.7 ** 5]]))
    pred_boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0]])
    aux = POTOAuxAssigner(strides=[8], sizes_of_interest=[], topk=1)
    assert aux(shifts, gt, pred_scores=torch.sigmoid(pred_logits), pred_boxes=pred_boxes).matched.tolist() == [1]


# ----------------------------------------------------------------------------- 3D Max Filtering
def three_levels():
    """N = C = 1. L0 4x4 zeros with L0[0,0] = 16; L1 2x2 [[0, 0], [0, 8]]; L2 1x1 [[3]]."""
    l0 = torch.zeros(1, 1, 4, 4)
    l0[0, 0, 0, 0] = 16.0
    l1 = torch.tensor([[[[0.0, 0.0], [0.0, 8.0]]]])
    l2 = torch.tensor([[[[3.0]]]])
    return [l0, l1, l2]


def test_max_filter_3d_over_scale_only():
    # kernel 1, tau 2: level i sees levels i-1..i+1 (clipped), resized bilinearly
    # (align_corners=False) to its size.
    # Level 0 window {0, 1}: up(L1) 2x2 -> 4x4 = 8 * w(y) w(x), w = [0, 0.25, 0.75, 1]:
    #   [[0, 0, 0, 0], [0, .5, 1.5, 2], [0, 1.5, 4.5, 6], [0, 2, 6, 8]]; max with L0 -> [0,0] = 16.
    # Level 1 window {0, 1, 2}: down(L0) 4x4 -> 2x2 = 2x2 average = [[4, 0], [0, 0]];
    #   up(L2) = 3 everywhere; max(., L1) = [[4, 3], [3, 8]].
    # Level 2 window {1, 2}: down(L1) -> 1x1 = mean = 2; max(2, 3) = 3 (L0 is not in its window).
    out = max_filter_3d(three_levels(), kernel_size=1, tau=2)
    expected0 = torch.tensor([[16, 0, 0, 0], [0, .5, 1.5, 2], [0, 1.5, 4.5, 6], [0, 2, 6, 8]])
    assert torch.allclose(out[0][0, 0], expected0)
    assert torch.allclose(out[1][0, 0], torch.tensor([[4.0, 3.0], [3.0, 8.0]]))
    assert torch.allclose(out[2][0, 0], torch.tensor([[3.0]]))


def test_max_filter_3d_over_scale_and_space():
    # kernel 3 (stride 1, padding 1, borders ignored) on top of the scale max above.
    # Level 0: 3x3 max of expected0 -> [[16, 16, 2, 2], [16, 16, 6, 6], [2, 6, 8, 8], [2, 6, 8, 8]].
    # Level 1: every 3x3 window covers the whole 2x2 map -> 8. Level 2: 3.
    out = max_filter_3d(three_levels(), kernel_size=3, tau=2)
    expected0 = torch.tensor([[16.0, 16, 2, 2], [16, 16, 6, 6], [2, 6, 8, 8], [2, 6, 8, 8]])
    assert torch.allclose(out[0][0, 0], expected0)
    assert torch.allclose(out[1][0, 0], torch.full((2, 2), 8.0))
    assert torch.allclose(out[2][0, 0], torch.tensor([[3.0]]))
    # tau 0: space only. Level 1: 3x3 max of L1 = 8 everywhere; level 2: 3; level 0: 16 in the
    # top-left 2x2 block, 0 elsewhere.
    out = max_filter_3d(three_levels(), kernel_size=3, tau=0)
    expected0 = torch.zeros(4, 4)
    expected0[:2, :2] = 16
    assert torch.allclose(out[0][0, 0], expected0)
    assert torch.allclose(out[1][0, 0], torch.full((2, 2), 8.0))


def test_max_filter_3d_equals_max_pool3d_formulation():
    # The authors' formulation: stack the window's (resized) levels along a depth axis,
    # max_pool3d with kernel (tau+1, k, k), padding (tau//2, k//2, k//2), read level i's slice.
    torch.manual_seed(0)
    levels = [torch.randn(2, 3, 12, 10), torch.randn(2, 3, 6, 5), torch.randn(2, 3, 3, 3), torch.randn(2, 3, 2, 2)]
    for k, tau in [(3, 2), (5, 2), (3, 4), (1, 0)]:
        out = max_filter_3d(levels, k, tau)
        m = tau // 2
        for i, x in enumerate(levels):
            window = range(max(0, i - m), min(len(levels), i + m + 1))
            stack = torch.stack([levels[j] if j == i else F.interpolate(
                levels[j], size=x.shape[-2:], mode="bilinear", align_corners=False) for j in window], dim=2)
            ref = F.max_pool3d(stack, (tau + 1, k, k), stride=1, padding=(m, k // 2, k // 2))[:, :, min(i, m)]
            assert torch.equal(out[i], ref)


def test_max_filtering_block_residual_shapes_and_gradients():
    torch.manual_seed(0)
    feats = [torch.randn(2, 32, 8, 10, requires_grad=True), torch.randn(2, 32, 4, 5, requires_grad=True),
             torch.randn(2, 32, 2, 3, requires_grad=True)]
    block = MaxFiltering3D(32, kernel_size=3, tau=2, norm="GN")
    out = block(feats)
    assert [o.shape for o in out] == [f.shape for f in feats]
    assert all((o >= 0).all() for o in out)
    sum(o.sum() for o in out).backward()
    assert block.conv.weight.grad.abs().sum() > 0 and all(f.grad.abs().sum() > 0 for f in feats)
    # With a zero conv and no norm, max(0) = 0 and the block reduces to relu(x) (the residual).
    plain = MaxFiltering3D(32, norm="")
    torch.nn.init.zeros_(plain.conv.weight)
    torch.nn.init.zeros_(plain.conv.bias)
    assert all(torch.equal(o, F.relu(f)) for o, f in zip(plain([f.detach() for f in feats]), feats))
    with pytest.raises(ValueError, match="MAX_FILTER.TAU"):
        MaxFiltering3D(32, tau=1)
    with pytest.raises(ValueError, match="MAX_FILTER.KERNEL"):
        max_filter_3d(feats, kernel_size=2)


def test_joint_logits_is_the_logit_of_the_product():
    a = torch.tensor([-30.0, -3.0, 0.0, 2.0, 15.0, 40.0, 120.0])
    b = torch.tensor([-5.0, 1.0, 0.0, 30.0, 15.0, 40.0, 120.0])
    z = joint_logits(a, b)
    assert torch.isfinite(z).all()
    assert torch.allclose(torch.sigmoid(z), torch.sigmoid(a) * torch.sigmoid(b), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- meta-arch / configs
@pytest.mark.parametrize("config_file", slow_unless_tiny(DEFCN_CONFIGS))
def test_config_trains_one_step_with_one_positive_per_gt_and_predicts(config_file):
    torch.manual_seed(0)
    cfg = load_cfg(config_file)
    model = build_model(cfg)
    assert type(model).__name__ == "DeFCN"
    model.train()
    batch = make_batch(128, 160)  # image 0: two objects, image 1: none
    with EventStorage() as storage:
        losses = model(batch)
        num_pos_per_gt = storage.latest()["dense/num_pos_per_gt"][0]
    # AUX_ASSIGNER "" is the DeFCN preset's POTOAuxAssigner; "none" turns the auxiliary loss off.
    use_aux = cfg.MODEL.DENSE.AUX_ASSIGNER != "none"
    expected_keys = {"loss_cls", "loss_box"}
    if use_aux:
        expected_keys.add("loss_aux")
    assert set(losses) == expected_keys
    assert all(torch.isfinite(v) for v in losses.values())
    assert num_pos_per_gt == 1.0  # POTO: exactly one positive for each of the 2 GTs
    sum(losses.values()).backward()
    params = dict(model.named_parameters())
    no_grad = [n for n, p in params.items() if p.requires_grad and p.grad is None]
    assert not no_grad, no_grad[:5]
    head = model.head
    branches = [head.cls_logits.weight, head.box_pred.weight]
    if cfg.MODEL.MAX_FILTER.ENABLED:
        branches += [head.filter.weight, head.max_filter.conv.weight]
    else:
        assert head.filter is None and head.max_filter is None
    if use_aux:
        branches.append(head.aux_logits.weight)
    else:
        assert head.aux_logits is None
    assert all(w.grad.abs().sum() > 0 for w in branches)
    model.eval()
    with torch.no_grad():
        out = model([{"image": batch[0]["image"]}])
    inst = out[0]["instances"]
    assert len(inst) <= cfg.TEST.DETECTIONS_PER_IMAGE and inst.image_size == (128, 160)


def test_batch_without_any_gt_trains():
    torch.manual_seed(0)
    model = build_model(load_cfg(TINY))
    model.train()
    batch = make_batch(128, 160)
    batch = [batch[1], batch[1]]
    with EventStorage():
        losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_box"].item() == 0.0
    sum(losses.values()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def constructed_head(box, center_cell, filter_center, filter_other, num_classes=1):
    """A fake DeFCN head: on P3 the 3x3 cells around ``center_cell`` all predict ``box`` with a
    class logit of 5 (sigmoid 0.993); every other location has class logit -10. The filter
    logit is ``filter_center`` at ``center_cell`` and ``filter_other`` elsewhere."""
    def forward(features):
        logits, ltrb, filters = [], [], []
        for level, f in enumerate(features):
            n, _, h, w = f.shape
            stride = 8 * 2 ** level
            ys = (torch.arange(h, dtype=torch.float32) + 0.5) * stride
            xs = (torch.arange(w, dtype=torch.float32) + 0.5) * stride
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            d = torch.stack([xx - box[0], yy - box[1], box[2] - xx, box[3] - yy]).clamp(min=0)
            ltrb.append(d[None].repeat(n, 1, 1, 1))
            cls = torch.full((n, num_classes, h, w), -10.0)
            flt = torch.full((n, 1, h, w), float(filter_other))
            if level == 0:
                r, c = center_cell
                cls[:, 0, r - 1:r + 2, c - 1:c + 2] = 5.0
                flt[:, 0, r, c] = float(filter_center)
            logits.append(cls)
            filters.append(flt)
        return {"logits": logits, "ltrb": ltrb, "filter": filters}
    return forward


def test_nms_free_inference_keeps_one_detection_per_object_via_the_filter():
    torch.manual_seed(0)
    model = build_model(load_cfg(TINY))
    model.eval()
    image = make_batch(128, 160)[0]["image"]
    box = (40.0, 30.0, 120.0, 100.0)
    # P3 cell (row 8, col 10) is the point (84, 68), inside the box, as are its 8 neighbours.
    model.head.forward = constructed_head(box, (8, 10), filter_center=10.0, filter_other=-10.0)
    with torch.no_grad():
        inst = model([{"image": image}])[0]["instances"]
    # 9 neighbouring locations predict the same box with class score 0.993, but the filter
    # branch multiplies 8 of them by sigmoid(-10) = 4.5e-5 (< SCORE_THRESH_TEST 0.05): one left.
    assert model.test_nms_thresh is None and len(inst) == 1  # NMS-free (MODEL.DENSE.POSTPROCESS "topk")
    assert torch.allclose(inst.pred_boxes.tensor[0], torch.tensor(box))
    expected_score = torch.sigmoid(torch.tensor(5.0)) * torch.sigmoid(torch.tensor(10.0))
    assert inst.scores[0].item() == pytest.approx(expected_score.item(), rel=1e-5)
    # Control: a filter that suppresses nothing -> NMS-free inference keeps all 9 duplicates,
    # and only class-aware NMS (MODEL.DENSE.POSTPROCESS "nms") merges them.
    model.head.forward = constructed_head(box, (8, 10), filter_center=10.0, filter_other=10.0)
    with torch.no_grad():
        assert len(model([{"image": image}])[0]["instances"]) == 9
        model_nms = build_model(load_cfg(TINY, "MODEL.DENSE.POSTPROCESS", "nms"))
        assert model_nms.test_nms_thresh == load_cfg(TINY).MODEL.DENSE.NMS_THRESH_TEST
        model.test_nms_thresh = model_nms.test_nms_thresh
        assert len(model([{"image": image}])[0]["instances"]) == 1


def test_bad_defcn_config_raises():
    with pytest.raises(ValueError, match="MAX_FILTER.TAU"):
        build_model(load_cfg(TINY, "MODEL.MAX_FILTER.TAU", 3))
    with pytest.raises(ValueError, match="SPATIAL_PRIOR"):
        build_model(load_cfg(TINY, "MODEL.POTO.SPATIAL_PRIOR", "box"))


def test_assigners_are_registered():
    cfg = load_cfg(TINY)
    assert isinstance(build_assigner("POTOAssigner", cfg, [8, 16, 32, 64, 128]), POTOAssigner)
    assert isinstance(build_assigner("POTOAuxAssigner", cfg, [8, 16, 32, 64, 128]), POTOAuxAssigner)

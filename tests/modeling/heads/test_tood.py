"""TOOD pieces: the task-aligned assigner (TAL) and the task-aligned head, on hand-computed cases."""
import pytest
import torch

from conftest import make_instances
from detectron2.layers import ShapeSpec

from d2_anchorfree.modeling.assigners.base import BACKGROUND, IGNORE
from d2_anchorfree.modeling.assigners.tal import (
    TaskAlignedAssigner, alignment_metric, topk_mask,
)
from d2_anchorfree.modeling.heads.tood_head import TOODHead, TaskDecomposition, aligned_scores, deform_sample
from d2_anchorfree.modeling.geometry import paired_iou, pairwise_iou


def _assign(points, boxes, classes, scores, preds, crowd=None, **kwargs):
    """Run the assigner on one level of ``points`` (list of (x, y)) with predictions given as lists."""
    gt = make_instances((100, 100), boxes, classes)
    if crowd is not None:
        gt.gt_is_crowd = torch.tensor(crowd, dtype=torch.bool)
    assigner = TaskAlignedAssigner(strides=[8], **kwargs)
    return assigner([torch.tensor(points, dtype=torch.float32)], gt,
                    torch.tensor(scores, dtype=torch.float32), torch.tensor(preds, dtype=torch.float32))


# ---------------------------------------------------------------------------------------------
# Alignment metric


def test_alignment_metric_hand_computed():
    # GT0 [0,0,10,10] class 0, GT1 [10,0,20,10] class 1 (areas 100).
    # Point A predicts [0,0,10,10]: IoU 1 with GT0, 0 with GT1.
    # Point B predicts [5,0,15,10]: intersection 50 with each GT, union 150 -> IoU 1/3 with both.
    gt_boxes = torch.tensor([[0., 0, 10, 10], [10, 0, 20, 10]])
    gt_classes = torch.tensor([0, 1])
    preds = torch.tensor([[0., 0, 10, 10], [5, 0, 15, 10]])
    scores = torch.tensor([[0.8, 0.3], [0.5, 0.9]])
    t, u = alignment_metric(scores, preds, gt_boxes, gt_classes, alpha=1.0, beta=6.0)
    torch.testing.assert_close(u, torch.tensor([[1.0, 0.0], [1 / 3, 1 / 3]]))
    # t = s * u^6: A: 0.8 * 1, 0.3 * 0; B: 0.5 / 729, 0.9 / 729 (3^6 = 729).
    torch.testing.assert_close(t, torch.tensor([[0.8, 0.0], [0.5 / 729, 0.9 / 729]]))
    # alpha 2, beta 1: A: 0.64, 0; B: 0.25 / 3, 0.81 / 3.
    t, _ = alignment_metric(scores, preds, gt_boxes, gt_classes, alpha=2.0, beta=1.0)
    torch.testing.assert_close(t, torch.tensor([[0.64, 0.0], [0.25 / 3, 0.81 / 3]]))
    # A non-integer exponent takes torch.pow: 0.25 ** 0.5 = 0.5.
    t, _ = alignment_metric(torch.tensor([[0.25]]), preds[:1], gt_boxes[:1], gt_classes[:1], 0.5, 1.0)
    torch.testing.assert_close(t, torch.tensor([[0.5]]))


def test_pairwise_iou_matches_paired_iou():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(30, 2, generator=g) * 50
    a = torch.cat([a, a + torch.rand(30, 2, generator=g) * 40], dim=1)
    b = torch.rand(7, 2, generator=g) * 50
    b = torch.cat([b, b + torch.rand(7, 2, generator=g) * 40], dim=1)
    expected = paired_iou(a[:, None].expand(30, 7, 4), b[None].expand(30, 7, 4))
    torch.testing.assert_close(pairwise_iou(a, b), expected)


def test_topk_mask_takes_lowest_index_on_ties():
    t = torch.tensor([[0.5], [0.9], [0.5], [0.5], [0.1]])
    # k = 3: 0.9, then two of the three 0.5 -> rows 0 and 2 (lowest indices), not row 3.
    assert topk_mask(t, 3)[:, 0].tolist() == [True, True, True, False, False]
    assert topk_mask(t, 9).all()


# ---------------------------------------------------------------------------------------------
# Assignment rules

# One GT [0,0,40,10] class 0; every point predicts the GT box itself (IoU 1, so t = score).
_ROW_POINTS = [(5, 5), (15, 5), (25, 5), (35, 5), (45, 5), (39.995, 5)]
#               inside  inside   inside   inside   outside  inside by 0.005 px < 0.01
_ROW_SCORES = [[0.9], [0.2], [0.7], [0.6], [0.95], [0.99]]
_ROW_PREDS = [[0, 0, 40, 10]] * 6


def test_topk_is_taken_before_the_inside_filter():
    # topk 3 by t: 0.99 (edge point, not inside by > 0.01), 0.95 (outside), 0.9 -> one positive;
    # the inside points 25 and 35 (t 0.7, 0.6) are not candidates, so not positive either.
    res = _assign(_ROW_POINTS, [[0, 0, 40, 10]], [0], _ROW_SCORES, _ROW_PREDS, topk=3)
    assert res.matched.tolist() == [0, BACKGROUND, BACKGROUND, BACKGROUND, BACKGROUND, BACKGROUND]
    # topk 5 adds 0.7 and 0.6; 0.2 (point 15) stays out.
    res = _assign(_ROW_POINTS, [[0, 0, 40, 10]], [0], _ROW_SCORES, _ROW_PREDS, topk=5)
    assert res.matched.tolist() == [0, BACKGROUND, 0, 0, BACKGROUND, BACKGROUND]
    # quality = t / (max t + 1e-7) * max IoU = t / 0.9 (IoU 1 everywhere).
    torch.testing.assert_close(res.quality, torch.tensor([1.0, 0, 0.7 / 0.9, 0.6 / 0.9, 0, 0]))


def test_zero_metric_candidates_are_not_positive():
    # Point 15 has score 0 -> t = 0: a candidate with topk 6 (all points) but not positive.
    scores = [list(s) for s in _ROW_SCORES]
    scores[1] = [0.0]
    res = _assign(_ROW_POINTS, [[0, 0, 40, 10]], [0], scores, _ROW_PREDS, topk=6)
    assert res.matched.tolist() == [0, BACKGROUND, 0, 0, BACKGROUND, BACKGROUND]


def test_point_claimed_by_two_gts_takes_the_highest_iou_not_the_highest_metric():
    # GT0 [0,0,20,20] class 0, GT1 [0,0,20,40] class 1; point (10, 10) is inside both and predicts
    # [0,0,20,20]: IoU 1 with GT0, 400 / 800 = 0.5 with GT1. Scores 0.01 (class 0), 0.99 (class 1),
    # alpha = beta = 1: t = 0.01 for GT0, 0.495 for GT1. Highest t -> GT1; highest IoU -> GT0.
    res = _assign([(10, 10)], [[0, 0, 20, 20], [0, 0, 20, 40]], [0, 1], [[0.01, 0.99]],
                  [[0, 0, 20, 20]], topk=1, alpha=1.0, beta=1.0)
    assert res.matched.tolist() == [0]
    # quality: its own t over GT0's max t (itself), times GT0's max IoU 1: 0.01 / (0.01 + 1e-7).
    torch.testing.assert_close(res.quality, torch.tensor([0.01 / (0.01 + 1e-7)]))
    # Equal IoUs (two identical GTs): the lowest GT index, although GT1 has the higher t (0.9).
    res = _assign([(10, 10)], [[0, 0, 20, 20], [0, 0, 20, 20]], [0, 1], [[0.2, 0.9]],
                  [[0, 0, 20, 20]], topk=1)
    assert res.matched.tolist() == [0]


def test_quality_is_normalized_per_gt():
    # GT0 [0,0,20,20] class 0 with three inside points, GT1 [40,0,60,20] class 1 with one.
    # Predictions and IoUs with GT0: P0 [0,0,20,10] -> 200/400 = 0.5; P1 [0,0,10,10] -> 0.25;
    # P2 [0,0,20,20] -> 1 but score 0 (t = 0, not positive). P3 predicts [40,0,60,10]: IoU 0.5
    # with GT1, 0 with GT0 (so t = 0 there).
    # alpha 1, beta 6: t(P0) = 0.9 * 0.5^6 = 0.9 / 64; t(P1) = 1.0 * 0.25^6 = 1 / 4096.
    # GT0: max t = 0.9 / 64 (P0), max IoU over positives = 0.5 (P0; P2 is not positive).
    #   quality(P0) = 0.5; quality(P1) = (1/4096) / (0.9/64) * 0.5 = 1 / 115.2.
    # GT1: a single positive: quality(P3) = t / (t + 1e-7) * 0.5 ~ 0.5, t = 0.3 / 64.
    points = [(5, 5), (15, 5), (5, 15), (50, 10), (30, 10)]
    scores = [[0.9, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 0.3], [0.5, 0.5]]
    preds = [[0, 0, 20, 10], [0, 0, 10, 10], [0, 0, 20, 20], [40, 0, 60, 10], [0, 0, 60, 20]]
    res = _assign(points, [[0, 0, 20, 20], [40, 0, 60, 20]], [0, 1], scores, preds)
    assert res.matched.tolist() == [0, 0, BACKGROUND, 1, BACKGROUND]
    t0, t3 = 0.9 / 64, 0.3 / 64
    t1 = 1 / 4096
    expected = torch.tensor([t0 / (t0 + 1e-7) * 0.5, t1 / (t0 + 1e-7) * 0.5, 0.0, t3 / (t3 + 1e-7) * 0.5, 0.0])
    assert abs(expected[1].item() - 1 / 115.2) < 1e-7
    torch.testing.assert_close(res.quality, expected)


def test_crowd_boxes_ignore_instead_of_positives():
    # GT0 is crowd [0,0,20,20]; GT1 [40,0,60,20] normal; GT2 [10,0,30,20] normal overlapping
    # the crowd box. Every point predicts its GT-sized box with high score.
    points = [(10, 10), (50, 10), (35, 10), (15, 10), (70, 10)]
    #          crowd     GT1       nothing   crowd+GT2 nothing
    preds = [[0, 0, 20, 20], [40, 0, 60, 20], [30, 0, 40, 20], [10, 0, 30, 20], [60, 0, 80, 20]]
    scores = [[0.9]] * 5
    res = _assign(points, [[0, 0, 20, 20], [40, 0, 60, 20], [10, 0, 30, 20]], [0, 0, 0], scores, preds,
                  crowd=[True, False, False])
    # (10,10): best candidate of the crowd GT, never positive, inside the crowd -> IGNORE;
    # (15,10): inside crowd but positive for GT2 (IoU 1) -> stays positive.
    assert res.matched.tolist() == [IGNORE, 1, BACKGROUND, 2, BACKGROUND]
    assert res.quality[0] == 0 and res.quality[2] == 0 and res.quality[4] == 0


def test_empty_gt_is_all_background():
    res = _assign([(5, 5), (15, 5)], [], [], [[0.5], [0.5]], [[0, 0, 10, 10]] * 2)
    assert res.matched.tolist() == [BACKGROUND, BACKGROUND]
    assert res.quality.tolist() == [0.0, 0.0]


def test_argument_and_shape_errors():
    with pytest.raises(ValueError, match="MODEL.TAL.TOPK"):
        TaskAlignedAssigner(strides=[8], topk=0)
    with pytest.raises(ValueError, match="MODEL.TAL.ALPHA"):
        TaskAlignedAssigner(strides=[8], alpha=-1.0)
    with pytest.raises(ValueError, match="MODEL.TAL.BETA"):
        TaskAlignedAssigner(strides=[8], beta=float("nan"))
    gt = make_instances((100, 100), [[0, 0, 10, 10]], [0])
    assigner = TaskAlignedAssigner(strides=[8])
    with pytest.raises(ValueError, match="pred_boxes"):
        assigner([torch.zeros(3, 2)], gt, torch.zeros(3, 2), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="levels"):
        assigner([torch.zeros(3, 2)] * 2, gt, torch.zeros(6, 2), torch.zeros(6, 4))


def _reference_assign(points, boxes, classes, crowd, scores, preds, topk, alpha, beta):
    """Brute-force transcription of the reference steps on full [R, G] matrices (no chunks)."""
    num_points, num_gt = len(points), len(boxes)
    ious = pairwise_iou(preds, boxes)
    metric = scores[:, classes] ** alpha * ious ** beta
    metric[:, crowd] = 0  # crowd GTs produce no positives
    cand = metric.topk(min(topk, num_points), dim=0).indices  # [k, G]
    gt_range = torch.arange(num_gt)
    l_ = points[cand, 0] - boxes[:, 0]
    t_ = points[cand, 1] - boxes[:, 1]
    r_ = boxes[:, 2] - points[cand, 0]
    b_ = boxes[:, 3] - points[cand, 1]
    is_pos = (metric[cand, gt_range] > 0) & (torch.stack([l_, t_, r_, b_]).min(dim=0).values > 0.01)
    overlaps = torch.full((num_points, num_gt), -1e8)
    overlaps[cand[is_pos], gt_range.expand_as(cand)[is_pos]] = ious[cand[is_pos], gt_range.expand_as(cand)[is_pos]]
    best, arg = overlaps.max(dim=1)
    matched = torch.where(best > -1e8, arg, torch.full_like(arg, BACKGROUND))
    quality = torch.zeros(num_points)
    for g in matched[matched >= 0].unique():
        idx = (matched == g).nonzero()[:, 0]
        m = metric[idx, g]
        quality[idx] = m / (m.max() + 1e-7) * ious[idx, g].max()
    return matched, quality


def test_chunked_equals_unchunked_and_the_reference_steps_on_a_crowded_image():
    g = torch.Generator().manual_seed(3)
    strides = [8, 16]
    shifts = []
    for s in strides:
        n = 128 // s
        ys, xs = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        shifts.append(torch.stack([xs.flatten(), ys.flatten()], dim=1).float() * s + s // 2)
    points = torch.cat(shifts)
    num_points, num_gt, num_classes = len(points), 200, 5
    xy = torch.rand(num_gt, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 8 + torch.rand(num_gt, 2, generator=g) * 40], dim=1)
    classes = torch.randint(0, num_classes, (num_gt,), generator=g)
    crowd = torch.rand(num_gt, generator=g) < 0.1
    gt = make_instances((128, 128), boxes.tolist(), classes.tolist())
    gt.gt_is_crowd = crowd
    scores = torch.rand(num_points, num_classes, generator=g)
    size = 8 + torch.rand(num_points, 2, generator=g) * 30
    jitter = (torch.rand(num_points, 2, generator=g) - 0.5) * 10
    preds = torch.cat([points + jitter - size / 2, points + jitter + size / 2], dim=1)

    full = TaskAlignedAssigner(strides=strides, beta=2.0)(shifts, gt, scores, preds)
    chunked = TaskAlignedAssigner(strides=strides, beta=2.0, chunk_elements=num_points * 7)(
        shifts, gt, scores, preds)
    assert torch.equal(full.matched, chunked.matched)
    assert torch.equal(full.quality, chunked.quality)
    # A crowded case: many positives, GTs competing for points, crowd boxes ignoring some.
    pos = full.matched >= 0
    assert pos.sum() > 100 and (full.matched == IGNORE).any()
    assert 0 < full.quality[pos].min() and full.quality.max() <= 1
    assert (full.quality[~pos] == 0).all()

    ref_matched, ref_quality = _reference_assign(points, boxes, classes, crowd, scores, preds, 13, 1.0, 2.0)
    kept = full.matched != IGNORE  # the reference has no crowd rule; compare the rest
    assert torch.equal(full.matched[kept], ref_matched[kept])
    assert (ref_matched[~kept] == BACKGROUND).all()
    torch.testing.assert_close(full.quality, ref_quality)
    # The multi-GT rule was exercised: some positives were top-k candidates of another GT too.
    t, _ = alignment_metric(scores, preds, boxes, classes, 1.0, 2.0)
    cand_count = (topk_mask(t, 13) & (t > 0) & ~crowd[None]).sum(dim=1)
    assert (cand_count[pos] > 1).any()


# ---------------------------------------------------------------------------------------------
# Head


def _head(**kwargs):
    torch.manual_seed(0)
    shapes = [ShapeSpec(channels=32, stride=8), ShapeSpec(channels=32, stride=16)]
    return TOODHead(input_shape=shapes, num_classes=3, **kwargs)


def _features():
    g = torch.Generator().manual_seed(1)
    return [torch.randn(2, 32, 6, 8, generator=g), torch.randn(2, 32, 3, 4, generator=g)]


def test_head_shapes_and_ltrb_equals_distances_times_stride_with_zero_offsets():
    head = _head()
    last = head.reg_offset_module[-1]
    torch.nn.init.zeros_(last.weight)
    torch.nn.init.zeros_(last.bias)
    with torch.no_grad():  # per-level scales that differ, to see them applied per level
        head.scales[0].scale.fill_(1.5)
        head.scales[1].scale.fill_(0.5)
    raw = []
    handle = head.tood_reg.register_forward_hook(lambda m, i, o: raw.append(o))
    out = head(_features())
    handle.remove()
    assert [tuple(x.shape) for x in out["logits"]] == [(2, 3, 6, 8), (2, 3, 3, 4)]
    assert [tuple(x.shape) for x in out["prob"]] == [(2, 1, 6, 8), (2, 1, 3, 4)]
    assert [tuple(x.shape) for x in out["ltrb"]] == [(2, 4, 6, 8), (2, 4, 3, 4)]
    for level, (stride, scale) in enumerate([(8, 1.5), (16, 0.5)]):
        expected = scale * torch.exp(raw[level]) * stride  # d in stride units -> pixels
        torch.testing.assert_close(out["ltrb"][level], expected, rtol=1e-5, atol=1e-4)
    # At init exp(small) ~ 1 stride per side: ltrb within a factor 2 of scale * stride, > 0.
    ratio = out["ltrb"][0] / 12
    assert 0.5 < ratio.min() and ratio.max() < 2


def test_head_samples_each_side_at_its_own_offset():
    # Offsets only through the bias of the last offset conv: the x0 coordinate (channel 0) moves
    # one cell right (dx = +1 on channel 1); the others stay. With the box maps in stride units
    # x0(r, c) = c + 0.5 - d_l(r, c), the sampled x0 at (r, c) is x0(r, c + 1) (0 past the border),
    # so l = (c + 0.5 - x0(r, c + 1)) * s = (d_l(r, c + 1) - 1) * s.
    head = _head()
    last = head.reg_offset_module[-1]
    torch.nn.init.zeros_(last.weight)
    with torch.no_grad():
        last.bias.zero_()
        last.bias[1] = 1.0
    raw = []
    handle = head.tood_reg.register_forward_hook(lambda m, i, o: raw.append(o))
    out = head(_features())
    handle.remove()
    d = torch.exp(raw[0]) * 8  # level 0, stride 8, scale 1: pixels
    ltrb = out["ltrb"][0]
    torch.testing.assert_close(ltrb[:, 0, :, :-1], d[:, 0, :, 1:] - 8, rtol=1e-5, atol=1e-4)
    # Last column samples outside the map: x0 = 0, so l = (W - 1 + 0.5) * 8 = 60.
    torch.testing.assert_close(ltrb[:, 0, :, -1], torch.full_like(ltrb[:, 0, :, -1], 60.0))
    torch.testing.assert_close(ltrb[:, 1:], d[:, 1:], rtol=1e-5, atol=1e-4)


def test_deform_sample_is_a_bilinear_sample():
    maps = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4)
    # channel 0: value 4 r + c; channel 1: 12 + 4 r + c.
    maps[0, 1] = torch.tensor([[1., 2, 4, 8], [0, 0, 0, 0], [3, 5, 7, 9]])
    offsets = torch.zeros(1, 4, 3, 4)
    offsets[0, 0, 0, 0] = 0.5   # channel 0 at (0, 0): dy 0.5
    offsets[0, 1, 0, 0] = 0.25  # dx 0.25 -> sample (0.5, 0.25) of 4 r + c: 2 + 0.25 = 2.25
    offsets[0, 3, 1, 1] = 1.5   # channel 1 at (1, 1): dx 1.5 -> (1, 2.5): 0 (row of zeros)
    offsets[0, 2, 1, 1] = -0.5  # dy -0.5 -> (0.5, 2.5): rows 0 and 1, cols 2 and 3:
    # 0.5 * (0.5 * 4 + 0.5 * 8) + 0.5 * 0 = 3.0
    offsets[0, 3, 2, 3] = 0.5   # channel 1 at (2, 3): dx 0.5 -> (2, 3.5): half of 9 + half of 0 = 4.5
    out = deform_sample(maps, offsets)
    expected = maps.clone()
    expected[0, 0, 0, 0] = 2.25
    expected[0, 1, 1, 1] = 3.0
    expected[0, 1, 2, 3] = 4.5
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError, match="offsets"):
        deform_sample(maps, offsets[:, :2])


def test_task_decomposition_equals_scaling_the_layers_then_a_1x1_conv():
    torch.manual_seed(0)
    module = TaskDecomposition(8, 3, 2, norm="")
    feat = torch.randn(2, 24, 5, 4)
    avg = feat.mean(dim=(2, 3), keepdim=True)
    w = module.layer_attention(avg)  # [2, 3, 1, 1], one weight per layer
    assert w.shape == (2, 3, 1, 1)
    scaled = feat * w.repeat_interleave(8, dim=1)
    expected = torch.relu(module.reduction_conv(scaled))
    torch.testing.assert_close(module(feat, avg), expected, rtol=1e-5, atol=1e-6)
    # Hidden width of the attention: C // la_down_rate = 8 // 2.
    assert module.layer_attention[0].out_channels == 4


def test_head_scores_gradients_and_init():
    head = _head()
    out = head(_features())
    scores = [aligned_scores(lg, pr) for lg, pr in zip(out["logits"], out["prob"])]
    for s, lg, pr in zip(scores, out["logits"], out["prob"]):
        assert s.shape == lg.shape and 0 <= s.min() and s.max() <= 1
        torch.testing.assert_close(s, (lg.sigmoid() * pr.sigmoid()).sqrt())
    # prior 0.01 on both factors: score ~ sqrt(0.01 * 0.01) = 0.01 at init.
    assert (scores[0] - 0.01).abs().max() < 0.005
    # Saturated logits: finite score and gradient (sqrt of an underflowed product would not be).
    a = torch.tensor([-200.0], requires_grad=True)
    aligned_scores(a, torch.tensor([-200.0])).sum().backward()
    assert torch.isfinite(a.grad).all()

    loss = sum(s.sum() for s in scores) + sum(x.sum() for x in out["ltrb"])
    loss.backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_head_argument_errors():
    shapes = [ShapeSpec(channels=32, stride=8)]
    with pytest.raises(ValueError, match="NUM_CONVS"):
        TOODHead(input_shape=shapes, num_classes=3, num_convs=0)
    with pytest.raises(ValueError, match="LA_DOWN_RATE"):
        TOODHead(input_shape=shapes, num_classes=3, la_down_rate=64)
    with pytest.raises(ValueError, match="OFFSET"):
        TOODHead(input_shape=shapes, num_classes=3, point_offset=1.0)
    with pytest.raises(ValueError, match="levels"):
        _head()(_features()[:1])


# ---- the TOOD preset: initial (ATSS) assigner, then TAL, and the soft targets reaching the losses

def _tood_model(initial_iters=2):
    from conftest import load_cfg
    from detectron2.modeling import build_model

    opts = ["MODEL.DENSE.INITIAL_ASSIGNER_ITERS", initial_iters]
    if initial_iters == 0:
        opts += ["MODEL.DENSE.INITIAL_ASSIGNER", "none"]
    cfg = load_cfg("configs/TOOD/TOOD_tiny_R_18_cpu.yaml", *opts)
    torch.manual_seed(0)
    return build_model(cfg)


def test_tood_preset_switches_from_atss_to_tal_at_initial_assigner_iters():
    from conftest import make_batch
    from detectron2.utils.events import EventStorage

    model = _tood_model(initial_iters=2)
    assert type(model.criterion.assigner).__name__ == "TaskAlignedAssigner"
    assert type(model.criterion.initial_assigner).__name__ == "ATSSAssigner"
    used = []
    for name in ("assigner", "initial_assigner"):
        real = getattr(model.criterion, name)
        setattr(model.criterion, name, lambda *a, _real=real, _name=name, **k: (used.append(_name), _real(*a, **k))[1])
    batch = make_batch()
    for it, want in ((0, "initial_assigner"), (1, "initial_assigner"), (2, "assigner"), (5, "assigner")):
        used.clear()
        model.criterion.set_iteration(it)
        with EventStorage(100):  # the phase comes from the criterion's iteration, not the storage's
            losses = model(batch)
        assert set(used) == {want}, (it, used)
        assert all(torch.isfinite(v) for v in losses.values())
    # With 0 warm-up iterations there is no initial assigner at all.
    assert _tood_model(initial_iters=0).criterion.initial_assigner is None


def test_tood_losses_use_the_assigners_soft_targets():
    """QFL's target and the box weights are AssignResult.quality at the positives. With a constant
    quality c at every positive (P of them, P c >= 1): the box loss sum(c l) / sum(c) = mean(l)
    does not depend on c, the QFL (target c at the GT class) does."""
    from conftest import make_batch
    from d2_anchorfree.modeling.assigners import AssignResult

    model = _tood_model(initial_iters=0)
    batch = make_batch()
    real = model.criterion.assigner
    positives = []

    def losses_with(c):
        def constant(*a, **k):
            r = real(*a, **k)
            positives.append(int((r.matched >= 0).sum()))
            return AssignResult(r.matched, torch.where(r.matched >= 0, c, 0.0))
        model.criterion.assigner = constant
        try:
            return model(batch)
        finally:
            model.criterion.assigner = real

    one, half = losses_with(1.0), losses_with(0.5)
    assert sum(positives[:2]) * 0.5 >= 1  # both normalizers above their floor of 1
    assert one["loss_box"].item() == pytest.approx(half["loss_box"].item(), rel=1e-6)
    assert one["loss_cls"].item() != pytest.approx(half["loss_cls"].item(), rel=1e-3)


def test_qfl_with_the_assigners_target_is_divided_by_the_sum_of_the_targets():
    """TOOD's classification loss (reference ``loss_by_feat``: cls_avg_factor = sum of the normalized
    alignment metrics): QFL on P_align with soft targets at the positives, / sum(targets)."""
    from conftest import loss_terms_on
    from d2_anchorfree.modeling.heads.tood_head import aligned_scores as align

    model = _tood_model(initial_iters=0)
    gt = make_instances((64, 64), [[0.0, 0.0, 32.0, 32.0]], [0])
    shifts = [torch.tensor([[4.0, 4.0], [12.0, 4.0], [40.0, 40.0]])] + [torch.zeros(0, 2)] * 4
    logits = torch.tensor([[[0.5], [-1.0], [2.0]]])
    prob = torch.tensor([[[1.0], [0.0], [-0.5]]])
    ltrb = torch.tensor([[[4.0, 4.0, 20.0, 20.0], [8.0, 4.0, 16.0, 24.0], [5.0, 5.0, 5.0, 5.0]]])
    quality = torch.tensor([[0.8, 0.6, 0.0]])
    losses = loss_terms_on(model, shifts, [gt], torch.tensor([[0, 0, -1]]),
                           {"logits": logits, "prob": prob, "ltrb": ltrb}, quality=quality)
    p = align(logits, prob)[0, :, 0]  # sqrt(sigmoid(a) sigmoid(b))
    y = quality[0]
    qfl = -(y * torch.log(p) + (1 - y) * torch.log(1 - p)) * (y - p).abs() ** 2  # GFL Eq. 5
    torch.testing.assert_close(losses["loss_cls"], qfl.sum() / 1.4)  # not / 2 positives


def test_tood_warm_up_uses_focal_loss_and_centerness_weighted_boxes():
    """Reference: ``initial_loss_cls`` (focal loss on probabilities, hard labels) and box weights =
    centerness targets while epoch < initial_epoch."""
    from d2_anchorfree.modeling.losses.terms import BoxLoss, FocalLoss, QualityFocalLoss

    model = _tood_model(initial_iters=3)
    warm = [type(t) for t in model.criterion.initial_loss_terms]
    assert warm == [FocalLoss, BoxLoss] and model.criterion.initial_loss_terms[1].weighting == "centerness"
    assert [type(t) for t in model.criterion.loss_terms] == [QualityFocalLoss, BoxLoss]
    assert model.criterion.loss_terms[1].weighting == "quality" and model.criterion.loss_terms[0].target == "assigner"


def test_focal_loss_on_probabilities_equals_the_logit_form():
    from fvcore.nn import sigmoid_focal_loss

    from d2_anchorfree.modeling.losses import focal_loss_on_probabilities

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 3, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 4, (50,), generator=g)
    valid = torch.rand(50, generator=g) > 0.2
    targets = torch.nn.functional.one_hot(labels, 4)[:, :3].double()
    for alpha, gamma in ((0.25, 2.0), (-1.0, 0.0), (0.5, 1.5)):
        want = sigmoid_focal_loss(logits[valid], targets[valid], alpha=alpha, gamma=gamma, reduction="sum")
        got = focal_loss_on_probabilities(torch.sigmoid(logits), labels, valid, alpha, gamma)
        torch.testing.assert_close(got, want.float(), rtol=1e-4, atol=1e-4)
    # saturated probabilities stay finite (log clamped at -100, as binary_cross_entropy)
    edge = focal_loss_on_probabilities(torch.tensor([[0.0], [1.0]]), torch.tensor([0, 1]),
                                       torch.tensor([True, True]), 0.25, 2.0)
    assert torch.isfinite(edge) and edge.item() == pytest.approx(0.25 * 100 + 0.75 * 100)


def test_inverted_aligned_boxes_fall_back_to_the_unaligned_box():
    # Reference (mmdet TOODHead.forward): an aligned box with x0 > x1 or y0 > y1 is replaced as a
    # whole by the box decoded from the distances alone.
    head = _head()
    conv = head.reg_offset_module[-1]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
    unaligned = [t.detach() for t in head(_features())["ltrb"]]  # zero offsets: d * stride
    with torch.no_grad():
        conv.bias[1] = 3.0  # x0 (coordinate 0) sampled 3 cells to the right: past x1 (d ~ 1 cell)
    out = head(_features())
    for ltrb in out["ltrb"]:  # valid everywhere, borders included
        assert ((ltrb[:, 0] + ltrb[:, 2]) >= 0).all() and ((ltrb[:, 1] + ltrb[:, 3]) >= 0).all()
    # Away from the right border's zero padding (3 of the 8 columns), every box was inverted and
    # is exactly the unaligned one; at the border x0 reads the padding (~0), the box stays aligned.
    torch.testing.assert_close(out["ltrb"][0][..., :4], unaligned[0][..., :4], rtol=0, atol=0)
    assert not torch.equal(out["ltrb"][0][..., -1], unaligned[0][..., -1])
    from d2_anchorfree.modeling.geometry import ltrb_as_boxes
    from d2_anchorfree.modeling.losses import iou_loss

    pred = out["ltrb"][0][0, :, 2, 2].reshape(1, 4)
    target = torch.tensor([[8.0, 8.0, 12.0, 12.0]])
    loss = iou_loss(ltrb_as_boxes(pred), ltrb_as_boxes(target), "giou")
    grad, = torch.autograd.grad(loss, head.tood_reg.bias)  # the fallback box keeps a gradient
    assert grad.abs().sum() > 0


def test_tood_head_refuses_another_shift_generator():
    from conftest import load_cfg
    from detectron2.modeling import build_model

    with pytest.raises(ValueError, match="SHIFT_GENERATOR.NAME"):
        build_model(load_cfg("configs/TOOD/TOOD_tiny_R_18_cpu.yaml", "MODEL.SHIFT_GENERATOR.NAME", "Other"))

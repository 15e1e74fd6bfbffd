"""ATSS assigner (hand-computed toy cases, chunking, crowds, a literal Alg. 1 reference) and the
ATSS / "FCOS + ATSS" detectors built from YAML."""
import pytest
import torch
import torch.utils._pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from d2_anchorfree.modeling.assigners import ASSIGNER_REGISTRY, BACKGROUND, IGNORE, FCOSAssigner, build_assigner
from d2_anchorfree.modeling.assigners.atss import ATSSAssigner, adaptive_iou_threshold, atss_positives
from d2_anchorfree.modeling.geometry import paired_iou

from conftest import load_cfg, slow_unless_tiny, train_step_and_predict


def grid(height, width, stride):
    """Points (x, y) = ((c + 0.5) s, (r + 0.5) s), row-major like ShiftGenerator."""
    ys, xs = torch.meshgrid((torch.arange(height) + 0.5) * stride, (torch.arange(width) + 0.5) * stride,
                            indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=1)


def instances(boxes, crowd=None):
    gt = Instances((64, 64))
    gt.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    gt.gt_classes = torch.zeros(len(gt.gt_boxes), dtype=torch.long)
    if crowd is not None:
        gt.gt_is_crowd = torch.as_tensor(crowd, dtype=torch.bool)
    return gt


# Toy grid: level 0 stride 8, 4x4 points at 4, 12, 20, 28 (index = 4 * row + col);
# level 1 stride 16, 2x2 points at 8, 24 (index = 16 + 2 * row + col). topk 2, anchor_scale 2:
# 16 px anchors on level 0, 32 px anchors on level 1.
TOY_SHIFTS = [grid(4, 4, 8), grid(2, 2, 16)]
TOY_STRIDES = torch.tensor([8.0] * 16 + [16.0] * 4)
TOY_BOXES = [[2, 2, 16, 18], [5, 5, 21, 19], [20, 22, 32, 32]]  # A, B (overlaps A), C


def test_toy_candidates_thresholds_and_winners():
    # GT A [2,2,16,18], area 224, center (9,10). Closest level-0 points: (12,12) d2=13, (4,12)
    # d2=29; level 1: (8,8) d2=5, (8,24) d2=197. IoUs of their anchors with A:
    #   (12,12) [4,4,20,20]:   inter 12*14=168, union 256+224-168=312 -> 7/13  = 0.538462
    #   (4,12)  [-4,4,12,20]:  inter 10*14=140, union 340             -> 7/17  = 0.411765
    #   (8,8)   [-8,-8,24,24]: A inside, 224/1024                     -> 7/32  = 0.218750
    #   (8,24)  [-8,8,24,40]:  inter 14*10=140, union 1024+224-140    -> 35/277 = 0.126354
    #   mean 0.323833; unbiased std sqrt(0.103838 / 3) = 0.186046; threshold 0.509879.
    # GT B [5,5,21,19], area 224, center (13,12): level 0 (12,12) d2=1, (20,12) d2=49; level 1
    # (8,8) d2=41, (24,8) d2=137:
    #   (12,12) [4,4,20,20]:   inter 15*14=210, union 270             -> 7/9   = 0.777778
    #   (20,12) [12,4,28,20]:  inter 9*14=126,  union 354             -> 21/59 = 0.355932
    #   (8,8):  B inside, 224/1024                                    -> 0.218750
    #   (24,8)  [8,-8,40,24]:  inter 13*14=182, union 1066            -> 7/41  = 0.170732
    #   mean 0.380798; std sqrt(0.228599 / 3) = 0.276043; threshold 0.656841.
    # GT C [20,22,32,32], area 120, center (26,27): (28,28) d2=5, (20,28) d2=37; (24,24) d2=13,
    # (8,24) d2=333:
    #   (28,28) [20,20,36,36]: C inside, 120/256                      -> 0.468750
    #   (20,28) [12,20,28,36]: inter 8*10=80, union 296               -> 0.270270
    #   (24,24) [8,8,40,40]:   C inside, 120/1024                     -> 0.117188
    #   (8,24)  [-8,8,24,40]:  inter 4*10=40, union 1104              -> 0.036232
    #   mean 0.223110; std sqrt(0.108706 / 3) = 0.190355; threshold 0.413465.
    # Above threshold and inside its GT: A -> (12,12); B -> (12,12); C -> (28,28).
    boxes = torch.tensor(TOY_BOXES, dtype=torch.float32)
    cand, ious, thresholds, positive = atss_positives(
        TOY_SHIFTS, TOY_STRIDES, boxes, topk=2, anchor_scale=2.0)
    assert cand.tolist() == [[5, 4, 16, 18], [5, 6, 16, 17], [15, 14, 19, 18]]
    expected = [[7 / 13, 7 / 17, 7 / 32, 35 / 277], [7 / 9, 21 / 59, 7 / 32, 7 / 41],
                [120 / 256, 80 / 296, 120 / 1024, 40 / 1104]]
    assert ious.tolist() == [pytest.approx(r, abs=1e-6) for r in expected]
    assert thresholds.tolist() == pytest.approx([0.509879, 0.656841, 0.413465], abs=1e-5)
    assert positive.tolist() == [[True, False, False, False]] * 3
    # Point 5 = (12,12) is positive for A (IoU 0.538) and B (IoU 0.778): B, the higher IoU, wins.
    result = ATSSAssigner(strides=[8, 16], topk=2, anchor_scale=2.0)(TOY_SHIFTS, instances(TOY_BOXES))
    expected = torch.full((20,), BACKGROUND)
    expected[5], expected[15] = 1, 2
    assert result.matched.tolist() == expected.tolist()
    # The soft target: the anchor IoU of each positive with its GT, 0 elsewhere.
    expected_quality = torch.zeros(20)
    expected_quality[5], expected_quality[15] = 7 / 9, 120 / 256
    assert result.quality.tolist() == pytest.approx(expected_quality.tolist(), abs=1e-6)


def test_threshold_is_mean_plus_unbiased_std():
    # IoUs (0.4, 0.4, 0.1, 0.1): mean 0.25; unbiased std sqrt(4 * 0.15^2 / 3) = sqrt(0.03) =
    # 0.173205 -> 0.423205 (the biased std 0.15 would give 0.4). One candidate: std 0.
    ious = torch.tensor([[0.4, 0.4, 0.1, 0.1], [0.5, 0.3, 0.2, 0.2]])
    expected = [0.423205, 0.3 + (0.06 / 3) ** 0.5]  # second row: mean 0.3, std sqrt(0.06 / 3)
    assert adaptive_iou_threshold(ious).tolist() == pytest.approx(expected, abs=1e-6)
    assert adaptive_iou_threshold(torch.tensor([[0.3]])).tolist() == pytest.approx([0.3])


@pytest.mark.parametrize("x0, positives", [(12.0, [18]), (11.995, [18]), (11.98, [17, 18])])
def test_positive_point_must_be_inside_by_more_than_0_01_px(x0, positives):
    # Levels 8 (8x8), 16 (4x4), 32 (2x2); topk 2, anchor_scale 8 (64/128/256 px anchors). GT
    # [x0,10,22,30] (about 10x20 px, center (17,20)): candidates (20,20)=18 and (12,20)=17 on
    # level 0, two points on each other level. Every candidate anchor contains the GT, so the
    # IoUs are a, a, a/4, a/4, a/16, a/16 (a = area/4096): mean 0.4375a, unbiased std
    # sqrt(0.984375 a^2 / 5) = 0.443706a, threshold 0.881206a < a: both level-0 candidates pass
    # the IoU test and the inside rule min(l,t,r,b) > 0.01 decides. Point 17 has l = 12 - x0.
    shifts = [grid(8, 8, 8), grid(4, 4, 16), grid(2, 2, 32)]
    assigner = ATSSAssigner(strides=[8, 16, 32], topk=2, anchor_scale=8.0)
    matched = assigner(shifts, instances([[x0, 10, 22, 30]])).matched
    assert (matched == 0).nonzero().flatten().tolist() == positives
    assert ((matched == 0) | (matched == BACKGROUND)).all()


def test_no_gt_is_all_background():
    result = ATSSAssigner(strides=[8, 16])(TOY_SHIFTS, instances([]))
    matched = result.matched
    assert matched.dtype == torch.long and matched.tolist() == [BACKGROUND] * 20
    assert result.quality.tolist() == [0.0] * 20


def test_crowd_gt_is_never_positive_and_ignores_its_inside():
    # B crowd: A keeps (12,12) = 5 (its own IoU passes its own threshold, see the toy above),
    # C keeps 15; points strictly inside B that are not positive -> IGNORE: (20,12) = 6 and the
    # level-1 point (8,8) = 16 (5 < 8 < 21, 5 < 8 < 19).
    matched = ATSSAssigner(strides=[8, 16], topk=2, anchor_scale=2.0)(
        TOY_SHIFTS, instances(TOY_BOXES, crowd=[False, True, False])).matched
    expected = torch.full((20,), BACKGROUND)
    expected[5], expected[15], expected[6], expected[16] = 0, 2, IGNORE, IGNORE
    assert matched.tolist() == expected.tolist()
    all_crowd = ATSSAssigner(strides=[8, 16], topk=2, anchor_scale=2.0)(
        TOY_SHIFTS, instances(TOY_BOXES, crowd=[True, True, True])).matched
    assert not (all_crowd >= 0).any() and (all_crowd == IGNORE).any()


def reference_atss(shifts, strides, boxes, topk, anchor_scale):
    """Alg. 1 written densely, like the authors' code: [R, G] distances and IoUs."""
    points = torch.cat(shifts)
    point_strides = torch.cat([torch.full((len(s),), float(st)) for s, st in zip(shifts, strides)])
    half = (anchor_scale * point_strides / 2)[:, None]
    anchors = torch.cat([points - half, points + half], dim=1)
    ious = paired_iou(anchors[:, None, :].expand(-1, len(boxes), 4), boxes[None].expand(len(points), -1, 4))
    centers = (boxes[:, :2] + boxes[:, 2:]) / 2
    dist = (points[:, None, :] - centers[None]).pow(2).sum(-1).sqrt()  # [R, G]
    cands, start = [], 0
    for s in shifts:
        cands.append(dist[start:start + len(s)].topk(min(topk, len(s)), dim=0, largest=False).indices + start)
        start += len(s)
    cands = torch.cat(cands)  # [C, G]
    cand_ious = ious.gather(0, cands)
    positive = cand_ious >= cand_ious.mean(0) + cand_ious.std(0)
    cand_points = points[cands]  # [C, G, 2]
    ltrb = torch.cat([cand_points - boxes[None, :, :2], boxes[None, :, 2:] - cand_points], dim=-1)
    positive &= ltrb.min(-1).values > 0.01
    iou_of_pos = torch.full_like(ious, -1.0)
    gt_index = torch.arange(len(boxes))[None].expand_as(cands)
    iou_of_pos[cands[positive], gt_index[positive]] = cand_ious[positive]
    best, idx = iou_of_pos.max(dim=1)
    return torch.where(best >= 0, idx, torch.full_like(idx, BACKGROUND))


def random_boxes(num, height, width, generator, integer=False):
    xy = torch.rand(num, 2, generator=generator) * torch.tensor([width, height])
    wh = 4 + torch.rand(num, 2, generator=generator) * 120
    boxes = torch.cat([xy - wh / 2, xy + wh / 2], dim=1)
    return boxes.round() if integer else boxes


PYRAMID_STRIDES = [8, 16, 32, 64, 128]


def pyramid(height, width):
    return [grid(-(-height // s), -(-width // s), s) for s in PYRAMID_STRIDES]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_dense_reference(seed):
    g = torch.Generator().manual_seed(seed)
    shifts = pyramid(200, 240)
    boxes = random_boxes(40, 200, 240, g)
    expected = reference_atss(shifts, PYRAMID_STRIDES, boxes, topk=9, anchor_scale=8.0)
    matched = ATSSAssigner(strides=PYRAMID_STRIDES)(shifts, instances(boxes)).matched
    assert (expected >= 0).sum() > 40  # several positives per GT on average
    assert torch.equal(matched, expected)


@pytest.mark.parametrize("seed, num_gt, integer",
                         [(0, 1, False), (1, 7, True), (2, 300, False), (3, 300, True)])
def test_chunked_equals_unchunked(seed, num_gt, integer):
    # Integer boxes give GT centers on half-pixels: many equal distances (topk ties) and equal
    # IoUs between GTs; chunking must not change a single label.
    g = torch.Generator().manual_seed(seed)
    shifts = pyramid(160, 224)
    num_points = sum(len(s) for s in shifts)
    boxes = random_boxes(num_gt, 160, 224, g, integer)
    crowd = torch.rand(num_gt, generator=g) < 0.1
    gt = instances(boxes, crowd)
    full = ATSSAssigner(strides=PYRAMID_STRIDES, chunk_elements=num_points * num_gt)(shifts, gt)
    assert (full.matched >= 0).any()
    for chunk in (1, num_points, 7 * num_points + 3):
        chunked = ATSSAssigner(strides=PYRAMID_STRIDES, chunk_elements=chunk)(shifts, gt)
        assert torch.equal(chunked.matched, full.matched) and torch.equal(chunked.quality, full.quality)


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op produces."""

    def __init__(self):
        super().__init__()
        self.numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.numel = max(self.numel, t.numel())
        return out


def test_two_thousand_gts_stay_within_the_chunk_bound():
    g = torch.Generator().manual_seed(0)
    shifts = pyramid(256, 320)
    num_points = sum(len(s) for s in shifts)  # 1280 + 320 + 80 + 20 + 6 = 1706
    gt = instances(random_boxes(2000, 256, 320, g), crowd=torch.rand(2000, generator=g) < 0.05)
    bound = 16 * num_points
    with LargestTensor() as probe:
        matched = ATSSAssigner(strides=PYRAMID_STRIDES, chunk_elements=bound)(shifts, gt).matched
    # Unchunked, the distances alone would be [2000 x 1280] on P3.
    assert 2 * num_points <= probe.numel <= bound
    unchunked = ATSSAssigner(strides=PYRAMID_STRIDES, chunk_elements=2000 * num_points)(shifts, gt).matched
    assert torch.equal(matched, unchunked)
    assert (matched >= 0).sum() > 500 and (matched == IGNORE).any()


def test_registry_config_and_bad_arguments():
    cfg = load_cfg("configs/ATSS/ATSS_tiny_R_18_cpu.yaml", "MODEL.ATSS.TOPK", 5,
                   "MODEL.DENSE.ASSIGN_CHUNK_ELEMENTS", 1000)
    assigner = build_assigner("ATSSAssigner", cfg, [8, 16])
    assert ASSIGNER_REGISTRY.get("ATSSAssigner") is ATSSAssigner
    settings = (assigner.strides, assigner.topk, assigner.anchor_scale, assigner.chunk_elements)
    assert settings == ([8, 16], 5, 8.0, 1000)
    for kwargs, match in [({"topk": 0}, "TOPK"), ({"anchor_scale": 0.0}, "ANCHOR_SCALE"),
                          ({"chunk_elements": 0}, "ASSIGN_CHUNK_ELEMENTS")]:
        with pytest.raises(ValueError, match=match):
            ATSSAssigner(strides=[8, 16], **kwargs)
    with pytest.raises(ValueError, match="levels"):
        ATSSAssigner(strides=[8, 16, 32])(TOY_SHIFTS, instances(TOY_BOXES))


@pytest.mark.parametrize("config_file",
                         slow_unless_tiny(["configs/ATSS/ATSS_tiny_R_18_cpu.yaml", "configs/ATSS/ATSS_R_50_FPN_1x.yaml"]))
def test_atss_configs_train_one_step_and_predict(config_file):
    model, losses = train_step_and_predict(load_cfg(config_file, "MODEL.DENSE.SCORE_THRESH_TEST", 0.0), 1)
    assert type(model).__name__ == "ATSS" and isinstance(model.criterion.assigner, ATSSAssigner)
    assert set(losses) == {"loss_cls", "loss_box", "loss_ctr"}
    assert losses["loss_box"] > 0  # the two objects got ATSS positives


def test_fcos_with_atss_assigner_from_yaml():
    # The paper's "FCOS + ATSS" setting: META_ARCHITECTURE FCOS, MODEL.DENSE.ASSIGNER ATSSAssigner.
    cfg = load_cfg("configs/compositions/FCOS_ATSS_tiny_R_18_cpu.yaml", "MODEL.DENSE.SCORE_THRESH_TEST", 0.0)
    model, _ = train_step_and_predict(cfg, 1)
    assert type(model).__name__ == "FCOS" and isinstance(model.criterion.assigner, ATSSAssigner)
    # On the FCOS config itself, the FCOS assigner's regress ranges and center-sampling radius
    # would be silently ignored by ATSS: the build names them instead.
    with pytest.raises(ValueError, match=r"SIZES_OF_INTEREST.*CENTER_SAMPLING_RADIUS"):
        build_model(load_cfg("configs/FCOS/FCOS_tiny_R_18_cpu.yaml", "MODEL.DENSE.ASSIGNER", "ATSSAssigner"))


def test_atss_preset_composes_with_another_assigner():
    # Replaces "the ATSS meta-arch rejects another assigner": ATSS is now a preset of the composed
    # detector, so another registered assigner is a valid composition (here POTO's one-to-one
    # labels with the ATSS head and losses) ...
    atss_tiny = "configs/ATSS/ATSS_tiny_R_18_cpu.yaml"
    # (the YAML's MODEL.ATSS keys hold their defaults, so they are accepted unread).
    cfg = load_cfg(atss_tiny, "MODEL.DENSE.ASSIGNER", "POTOAssigner", "MODEL.DENSE.CENTER_SAMPLING_RADIUS", 1.5,
                   "MODEL.DENSE.SCORE_THRESH_TEST", 0.0)
    model, losses = train_step_and_predict(cfg, 1)
    assert type(model).__name__ == "ATSS" and type(model.criterion.assigner).__name__ == "POTOAssigner"
    assert set(losses) == {"loss_cls", "loss_box", "loss_ctr"}
    # ... while an unknown assigner fails naming it, and ATSS keys that the chosen assigner does not
    # read fail naming the key instead of being silently ignored.
    with pytest.raises(KeyError, match="NoSuchAssigner"):
        build_model(load_cfg(atss_tiny, "MODEL.DENSE.ASSIGNER", "NoSuchAssigner"))
    with pytest.raises(ValueError, match=r"MODEL\.ATSS\.TOPK"):
        build_model(load_cfg(atss_tiny, "MODEL.DENSE.ASSIGNER", "FCOSAssigner", "MODEL.ATSS.TOPK", 5))
    assert isinstance(build_model(load_cfg(atss_tiny, "MODEL.DENSE.ASSIGNER", "FCOSAssigner")).criterion.assigner,
                      FCOSAssigner)

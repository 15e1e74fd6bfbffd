"""FCOS shift generator, target assignment and centerness targets on hand-computed cases."""
import math

import pytest
import torch

from d2_anchorfree.modeling.assigners import BACKGROUND, IGNORE, FCOSAssigner, centerness_targets
from d2_anchorfree.modeling.shift_generator import ShiftGenerator

from conftest import make_instances


def assign(shifts, boxes, classes=None, crowd=None, radius=0.0, sizes=(64,), strides=(8, 16), chunk=1 << 20):
    gt = make_instances((256, 256), boxes, classes or [0] * len(boxes))
    if crowd is not None:
        gt.gt_is_crowd = torch.tensor(crowd, dtype=torch.bool)
    assigner = FCOSAssigner(strides=list(strides), sizes_of_interest=list(sizes),
                            center_sampling_radius=radius, chunk_elements=chunk)
    result = assigner([torch.tensor(s, dtype=torch.float32).reshape(-1, 2) for s in shifts], gt)
    assert result.quality is None  # FCOS assignment has no soft target
    return result.matched.tolist()


def test_shift_generator_points_and_cache():
    gen = ShiftGenerator(strides=[8, 16], offset=0.5)
    f = [torch.zeros(1, 1, 2, 3), torch.zeros(1, 1, 1, 2)]
    p0, p1 = gen(f)
    # (c + 0.5) * 8 for c = 0..2 on rows r = 0..1: x inner, y outer.
    assert p0.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    assert p1.tolist() == [[8, 8], [24, 8]]
    assert gen(f)[0] is p0  # cached per size/device
    assert ShiftGenerator(strides=[8], offset=0.0)([f[0]])[0][1].tolist() == [8, 0]
    with pytest.raises(ValueError, match="OFFSET"):
        ShiftGenerator(strides=[8], offset=1.0)


def test_shift_generator_cache_is_bounded_lru():
    """Multi-scale training sees many input sizes: the cache keeps the CACHE_SIZE most recently
    used (size, stride, device, dtype) keys instead of growing without bound."""
    gen = ShiftGenerator(strides=[8], offset=0.5)
    size = ShiftGenerator.CACHE_SIZE
    first = gen.grid_shifts(1, 1, 8, "cpu")
    for w in range(2, size + 1):  # fill the cache: sizes 1..size
        gen.grid_shifts(1, w, 8, "cpu")
    assert gen.grid_shifts(1, 1, 8, "cpu") is first  # a hit makes size 1 the most recent
    gen.grid_shifts(1, size + 1, 8, "cpu")  # one more key evicts the least recent: width 2
    assert len(gen._cache) == size
    assert gen.grid_shifts(1, 1, 8, "cpu") is first
    assert (1, 2, 8, "cpu", torch.float32) not in gen._cache
    assert gen.grid_shifts(1, 2, 8, "cpu").tolist() == [[4.0, 4.0], [12.0, 4.0]]  # recomputed


def test_point_inside_two_gts_same_level_takes_min_area():
    # A = [0,0,40,40] (area 1600), B = [8,8,30,30] (area 484), all points on level 0 (stride 8).
    # (20,20): in A (max ltrb 20) and in B (ltrb 12,12,10,10) -> smaller B (index 1).
    # (4,4): only in A. (36,36): only in A (B ends at 30). (50,50): in neither.
    got = assign([[[20, 20], [4, 4], [36, 36], [50, 50]], []], [[0, 0, 40, 40], [8, 8, 30, 30]])
    assert got == [1, 0, 0, BACKGROUND]


def test_equal_areas_tie_breaks_to_lowest_index():
    got = assign([[[20, 20]], []], [[0, 0, 40, 40], [10, 10, 50, 50]])
    assert got == [0]


def test_scale_range_boundaries_are_inclusive():
    # GT [0,0,128,128]; ranges: level 0 [0, 64], level 1 [64, inf].
    # (64,64): max(l,t,r,b) = 64 -> positive on both levels (64 is in both closed ranges).
    # (63.5,64): r = 64.5 -> too large for level 0, fine for level 1.
    # (100,64) level 1: l = 100 >= 64 -> positive; level 0 at (100,64): 100 > 64 -> background.
    lvl0 = [[64, 64], [63.5, 64], [100, 64]]
    lvl1 = [[64, 64], [63.5, 64], [100, 64]]
    assert assign([lvl0, lvl1], [[0, 0, 128, 128]]) == [0, BACKGROUND, BACKGROUND, 0, 0, 0]
    # A small object (max 20) is only learnt on level 0, even if level-1 points are inside it.
    assert assign([[[20, 20]], [[20, 20]]], [[0, 0, 40, 40]]) == [0, BACKGROUND]


def test_center_sampling_on_and_off():
    # GT [0,0,100,100], center (50,50). radius 1.5 at stride 8 -> region [38, 62]^2.
    # (60,60): inside the region. (64,50): inside the box (max ltrb 64, level 0 ok) but outside
    # the region. The level-1 point (50,50) has max ltrb 50 < 64: wrong level either way.
    shifts = [[[60, 60], [64, 50]], [[50, 50]]]
    assert assign(shifts, [[0, 0, 100, 100]], radius=0.0) == [0, 0, BACKGROUND]
    assert assign(shifts, [[0, 0, 100, 100]], radius=1.5) == [0, BACKGROUND, BACKGROUND]
    # The center region is clipped to the box: a thin box [45,0,55,100], radius 1.5 -> x in (45,55).
    assert assign([[[46, 50], [56, 50]], []], [[45, 0, 55, 100]], radius=1.5) == [0, BACKGROUND]


def test_image_without_gt_is_all_background():
    assert assign([[[4, 4], [12, 4]], [[8, 8]]], []) == [BACKGROUND] * 3


def test_crowd_boxes_are_ignored_not_positive():
    # crowd [0,0,50,50], normal [60,60,100,100]
    got = assign([[[20, 20], [80, 80], [55, 55]], []], [[0, 0, 50, 50], [60, 60, 100, 100]],
                 crowd=[True, False])
    assert got == [IGNORE, 1, BACKGROUND]


@pytest.mark.slow  # 5 random cases of 300 GT boxes, chunked and whole
def test_chunked_assignment_equals_unchunked():
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        xy = torch.rand(300, 2, generator=g) * 200
        wh = torch.rand(300, 2, generator=g) * 120 + 2
        boxes = torch.cat([xy, xy + wh], 1).tolist()
        pts = [[[(c + 0.5) * s, (r + 0.5) * s] for r in range(256 // s) for c in range(256 // s)]
               for s in (8, 16, 32)]
        kw = dict(strides=(8, 16, 32), sizes=(32, 64), radius=1.5)
        full = assign(pts, boxes, **kw, chunk=1 << 30)
        chunked = assign(pts, boxes, **kw, chunk=1500)  # ~1 GT per chunk
        assert full == chunked
        assert sum(i >= 0 for i in full) > 50


def test_centerness_targets_by_hand():
    ltrb = torch.tensor([[10.0, 20.0, 30.0, 40.0], [5.0, 5.0, 5.0, 5.0]])
    # sqrt(min(10,30)/max(10,30) * min(20,40)/max(20,40)) = sqrt(1/3 * 1/2); center -> 1.
    assert centerness_targets(ltrb).tolist() == pytest.approx([math.sqrt(1 / 6), 1.0])
    # Points outside their box (POTO's out-of-prior positives): 2 px left of it (l = -2) -> 0;
    # beyond two sides (l = t = -2): 0, not sqrt((2 / 10) * (2 / 10)) = 0.2.
    outside = torch.tensor([[-2.0, 5.0, 10.0, 5.0], [-2.0, -2.0, 10.0, 10.0]])
    assert centerness_targets(outside).tolist() == [0.0, 0.0]


def test_bad_sizes_of_interest_raise():
    with pytest.raises(ValueError, match="SIZES_OF_INTEREST"):
        FCOSAssigner(strides=[8, 16, 32], sizes_of_interest=[64])
    with pytest.raises(ValueError, match="CENTER_SAMPLING_RADIUS"):
        FCOSAssigner(strides=[8, 16], sizes_of_interest=[64], center_sampling_radius=-1)

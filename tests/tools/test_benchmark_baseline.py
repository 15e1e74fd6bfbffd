"""The dense FCOS assignment baseline of the detectors benchmark (benchmarks/dense_fcos_baseline.py) labels
points exactly like the library's chunked FCOSAssigner: on a hand-worked case and on random
cases (crowd boxes, duplicated boxes, boxes on the point grid so that "strictly inside" and the
inclusive range ends are hit exactly, tiny chunks so that the GTs are split)."""
import pytest
import torch

from detectron2.structures import Boxes, Instances

from d2_anchorfree.modeling.assigners import FCOSAssigner

from benchmarks import dense_fcos_baseline as baseline


def grid(height, width, stride):
    """FCOS points of one level: ((c + 0.5) s, (r + 0.5) s), row-major, [h * w, 2]."""
    ys = (torch.arange(-(-height // stride)) + 0.5) * stride
    xs = (torch.arange(-(-width // stride)) + 0.5) * stride
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def instances(boxes, crowd=None):
    gt = Instances((1, 1))
    gt.gt_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    gt.gt_classes = torch.zeros(len(gt.gt_boxes), dtype=torch.long)
    if crowd is not None:
        gt.gt_is_crowd = torch.as_tensor(crowd, dtype=torch.bool)
    return gt


def test_hand_worked_case():
    # 32x32 image, strides [8, 16], ranges [0, 32] and [32, inf], no center sampling.
    # Level 0 points x, y in {4, 12, 20, 28}; level 1 points in {8, 24}.
    # A = [2, 2, 18, 18] (area 256), B = [0, 0, 40, 40] (area 1600), C = [22, 0, 32, 10] crowd.
    # (4, 4):   A: ltrb (2, 2, 14, 14), max 14 in [0, 32] -> A;  B: max 36 > 32 (wrong level).
    # (12, 12): A: max 10 ok; B: (12, 12, 28, 28) max 28 ok -> both; smaller area A -> 0.
    # (20, 4):  outside A (r = -2); B: max 36 -> BACKGROUND.
    # (28, 4):  B: max 36 -> not positive, strictly inside crowd C -> IGNORE.
    # (20, 12): B: (20, 12, 20, 28) max 28 -> B.   (4, 20): B: r = 36 -> BACKGROUND.
    # Level 1: (8, 8): A max 10 < 32 (wrong level); B: (8, 8, 32, 32) max 32, inclusive end -> B.
    # (24, 8): B: (24, 8, 16, 32) max 32 -> B (it is inside crowd C too, but positive wins).
    # (24, 24): B: max 24 < 32 -> BACKGROUND.
    shifts = [grid(32, 32, 8), grid(32, 32, 16)]
    gt = instances([[2, 2, 18, 18], [0, 0, 40, 40], [22, 0, 32, 10]], crowd=[False, False, True])
    expected = torch.tensor([0, 0, -1, -2,
                             0, 0, 1, 1,
                             -1, 1, 1, 1,
                             -1, 1, 1, 1,
                             1, 1, 1, -1])
    dense = baseline.dense_fcos_assign(shifts, gt.gt_boxes.tensor, [8, 16], [32], 0.0, gt.gt_is_crowd)
    assert dense.tolist() == expected.tolist()
    chunked = FCOSAssigner(strides=[8, 16], sizes_of_interest=[32], chunk_elements=1)(shifts, gt).matched
    assert chunked.tolist() == expected.tolist()


def random_case(seed):
    g = torch.Generator().manual_seed(seed)
    height, width = [int(v) for v in torch.randint(64, 257, (2,), generator=g)]
    strides = [8, 16, 32, 64, 128]
    shifts = [grid(height, width, s) for s in strides]
    num_gt = int(torch.randint(0, 40, (1,), generator=g))
    x0 = torch.rand(num_gt, generator=g) * width
    y0 = torch.rand(num_gt, generator=g) * height
    w = torch.exp(torch.rand(num_gt, generator=g) * 5.0) + 1  # 2 .. 150 px
    h = w * torch.exp((torch.rand(num_gt, generator=g) - 0.5) * 1.4)
    boxes = torch.stack([x0, y0, x0 + w, y0 + h], dim=1)
    if seed % 2 == 0 and num_gt > 0:
        # On the 4-px lattice: corners can coincide with points, distances with range ends.
        boxes = (boxes / 4).round() * 4
        boxes[:, 2:] = torch.max(boxes[:, 2:], boxes[:, :2] + 4)
    if num_gt > 3:
        boxes[1] = boxes[0]  # duplicate: equal areas, the lower index must win
        boxes[3] = boxes[2][[1, 0, 3, 2]]  # transposed: same area, other place
    crowd = torch.rand(num_gt, generator=g) < 0.15
    radius = [0.0, 1.5, 2.5][seed % 3]
    sizes = [16, 32, 64, 128] if seed % 4 < 2 else [64, 128, 256, 512]
    return shifts, strides, sizes, radius, boxes, crowd


@pytest.mark.parametrize("seed", range(24))
def test_random_cases_identical(seed):
    shifts, strides, sizes, radius, boxes, crowd = random_case(seed)
    gt = instances(boxes, crowd)
    dense = baseline.dense_fcos_assign(shifts, boxes, strides, sizes, radius, crowd)
    for chunk in (1 << 20, 1000, 1):  # 1: one GT per chunk
        chunked = FCOSAssigner(strides=strides, sizes_of_interest=sizes, center_sampling_radius=radius,
                               chunk_elements=chunk)(shifts, gt).matched
        assert torch.equal(dense, chunked), (seed, chunk)


def test_random_cases_cover_the_rules():
    """The random cases are not vacuous: they have positives, IGNORE points, and points where
    the duplicated box 1 ties with box 0 (box 0 must win, so box 1 never appears)."""
    positives = ignored = duplicate_cases = 0
    for seed in range(24):
        shifts, strides, sizes, radius, boxes, crowd = random_case(seed)
        dense = baseline.dense_fcos_assign(shifts, boxes, strides, sizes, radius, crowd)
        positives += int((dense >= 0).sum())
        ignored += int((dense == -2).sum())
        if len(boxes) > 3 and not crowd[0] and (dense == 0).any():
            duplicate_cases += 1
            assert not (dense == 1).any()
    assert positives > 200 and ignored > 0 and duplicate_cases >= 3, (positives, ignored, duplicate_cases)


def test_no_gt_and_bad_levels():
    shifts = [grid(64, 64, 8), grid(64, 64, 16)]
    out = baseline.dense_fcos_assign(shifts, torch.zeros(0, 4), [8, 16], [32])
    assert out.tolist() == [-1] * (64 + 16)
    with pytest.raises(ValueError, match="levels"):
        baseline.dense_fcos_assign(shifts, torch.zeros(0, 4), [8], [32])

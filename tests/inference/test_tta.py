"""Test-time augmentation for dense detectors (issue 15): flip exactness, identity TTA equals plain
inference on real tiny detectors (NMS and NMS-free, through the predictor too), the merges (NMS
across augmentations only, weighted boxes fusion), bad keys, and TTA in evaluation."""
import numpy as np
import pytest
import torch

from detectron2.modeling import build_model

from d2_anchorfree.engine import build_predictor
from d2_anchorfree.inference import build_inference_model
from d2_anchorfree.inference.tta import DenseTTA, augmented_inputs, hflip_boxes, merge_augmentations

from conftest import load_cfg
from test_slicing import BrightBoxModel, instances, toy_eval_cfg


def test_hflip_boxes_hand_computed_and_its_own_inverse():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 100.0, 5.5], [33.25, 1.0, 34.75, 2.0]])
    assert hflip_boxes(boxes, 100).tolist() == [[70, 20, 90, 40], [0, 0, 100, 5.5], [65.25, 1, 66.75, 2]]
    assert torch.equal(hflip_boxes(hflip_boxes(boxes, 100), 100), boxes)


@pytest.mark.parametrize("min_sizes", [(60,), (120,), (30, 60, 120)])
def test_flipped_image_boxes_flip_back_exactly(min_sizes):
    """The stub finds the bright rectangle in the flipped input; flipped back it is exactly the
    box of the unflipped input of the same size (at scales 1 and 2, the rectangle itself; at 0.5
    bilinear blur may widen it by a pixel, in both the same way)."""
    image = torch.zeros((3, 60, 100), dtype=torch.uint8)
    image[:, 12:30, 7:41] = 255  # asymmetric: x in [7, 41], y in [12, 30]
    tta = DenseTTA(BrightBoxModel(), min_sizes=min_sizes, max_size=1000, flip=True, merge="nms",
                   merge_iou=0.6, max_detections=10)
    per_aug = tta.run_augmentations(image, 60, 100)
    assert len(per_aug) == 2 * len(min_sizes)
    for size, plain, flipped in zip(min_sizes, per_aug[0::2], per_aug[1::2]):
        assert flipped.pred_boxes.tensor.tolist() == plain.pred_boxes.tensor.tolist()
        if size >= 60:
            assert plain.pred_boxes.tensor.tolist() == [[7, 12, 41, 30]]
    if min_sizes == (60,):
        assert tta.predict(image, 60, 100).pred_boxes.tensor.tolist() == [[7, 12, 41, 30]]  # copies merged


def test_augmented_inputs_sizes_and_flips():
    image = torch.randint(0, 256, (3, 60, 100), dtype=torch.uint8)
    inputs, flipped = augmented_inputs(image, 60, 100, [30, 120], 150, flip=True)
    assert [tuple(x["image"].shape[1:]) for x in inputs] == [(30, 50), (30, 50), (90, 150), (90, 150)]
    assert flipped == [False, True, False, True]
    assert all((x["height"], x["width"]) == (60, 100) for x in inputs)
    assert torch.equal(inputs[1]["image"], inputs[0]["image"].flip(dims=[2]))


@pytest.mark.parametrize("config", ["configs/FCOS/FCOS_tiny_R_18_cpu.yaml",
                                    "configs/DeFCN/DeFCN_tiny_R_18_cpu.yaml",
                                    "configs/GFL/GFL_tiny_R_18_cpu.yaml"])
def test_identity_tta_equals_plain_inference(config):
    """Only the identity transform (the test size, no flip): TTA's output is the predictor's,
    bit for bit, through build_predictor with TEST.AUG.ENABLED."""
    opts = ["MODEL.DENSE.SCORE_THRESH_TEST", 0.0, "TEST.DETECTIONS_PER_IMAGE", 40,
            "INPUT.MIN_SIZE_TEST", 96, "INPUT.MAX_SIZE_TEST", 160, "DATASETS.TEST", ()]
    torch.manual_seed(0)
    plain = build_predictor(load_cfg(config, *opts), allow_untrained=True)
    tta = build_predictor(load_cfg(config, *opts, "TEST.AUG.ENABLED", True, "TEST.AUG.MIN_SIZES", (96,),
                                   "TEST.AUG.MAX_SIZE", 160, "TEST.AUG.FLIP", False), allow_untrained=True)
    tta.model.load_state_dict(plain.model.state_dict())
    assert isinstance(tta.inference_model, DenseTTA)
    image = np.random.default_rng(3).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    a, b = plain(image)["instances"], tta(image)["instances"]
    assert len(a) >= 5 and a.image_size == b.image_size == (120, 200)
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
    assert torch.equal(a.scores, b.scores) and torch.equal(a.pred_classes, b.pred_classes)


def test_multi_scale_flip_tta_on_a_real_detector():
    cfg = load_cfg("configs/FCOS/FCOS_tiny_R_18_cpu.yaml", "MODEL.DENSE.SCORE_THRESH_TEST", 0.0,
                   "TEST.DETECTIONS_PER_IMAGE", 30, "TEST.AUG.ENABLED", True, "TEST.AUG.MIN_SIZES", (64, 96),
                   "TEST.AUG.MAX_SIZE", 200, "TEST.AUG.FLIP", True)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    tta = build_inference_model(cfg, model)
    image = torch.randint(0, 256, (3, 80, 120), dtype=torch.uint8, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        per_aug = tta.run_augmentations(image, 80, 120)
        out = tta([{"image": image, "height": 80, "width": 120}])[0]["instances"]
    assert len(per_aug) == 4 and all(len(x) == 30 for x in per_aug)
    assert out.image_size == (80, 120) and len(out) == 30  # capped at TEST.DETECTIONS_PER_IMAGE
    assert (out.scores[:-1] >= out.scores[1:]).all()
    boxes = out.pred_boxes.tensor
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 120).all()


def test_nms_merge_removes_copies_across_augmentations_only():
    # NMS-free output: the two overlapping boxes of one augmentation are two objects (kept);
    # their copies in the flipped augmentation are duplicates (merged away).
    a, b = [10, 10, 30, 30], [12, 11, 31, 31]
    aug0 = instances((50, 50), [a, b], [0.9, 0.5])
    aug1 = instances((50, 50), [a, b], [0.7, 0.6])
    out = merge_augmentations([aug0, aug1], (50, 50), "nms", 0.6, 100)
    # greedy: a (0.9) takes both copies of aug1 (IoU(a, b) = 342 / 438 = 0.78 >= 0.6); b of aug0
    # is not taken (same augmentation) and stays
    assert out.pred_boxes.tensor.tolist() == [a, b] and out.scores.tolist() == pytest.approx([0.9, 0.5])
    # a single augmentation comes back unchanged, whatever the merge
    alone = merge_augmentations([aug0], (50, 50), "nms", 0.6, 100)
    assert alone.pred_boxes.tensor.tolist() == [a, b]
    # other classes never merge
    aug2 = instances((50, 50), [a], [0.8], [1])
    assert len(merge_augmentations([aug0, aug2], (50, 50), "nms", 0.6, 100)) == 3


def test_wbf_merge_hand_computed():
    pytest.importorskip("ensemble_boxes")
    aug0 = instances((100, 100), [[10, 10, 20, 20]], [0.9])
    aug1 = instances((100, 100), [[10, 10, 22, 20]], [0.5])
    out = merge_augmentations([aug0, aug1], (100, 100), "wbf", 0.55, 100)
    # score-weighted coordinates: x1 = (0.9 * 20 + 0.5 * 22) / 1.4; score = mean(0.9, 0.5)
    assert out.pred_boxes.tensor.tolist()[0] == pytest.approx([10, 10, (0.9 * 20 + 0.5 * 22) / 1.4, 20], abs=1e-4)
    assert out.scores.tolist() == pytest.approx([0.7])
    # found by one of two augmentations: half its score (conf_type "avg")
    lone = merge_augmentations([aug0, instances((100, 100), [], [])], (100, 100), "wbf", 0.55, 100)
    assert lone.scores.tolist() == pytest.approx([0.45])


@pytest.mark.parametrize("opts,message", [
    (["TEST.AUG.MERGE", "soft"], r"TEST.AUG.MERGE must be one of \('nms', 'wbf'\), got 'soft'"),
    (["TEST.AUG.MERGE_IOU", 1.5], r"TEST.AUG.MERGE_IOU must be in \(0, 1\], got 1.5"),
    (["TEST.AUG.MIN_SIZES", ()], r"TEST.AUG.MIN_SIZES must be a non-empty list"),
    (["TEST.AUG.MAX_SIZE", 0], r"TEST.AUG.MAX_SIZE must be >= 1, got 0"),
])
def test_bad_tta_values_name_the_key(opts, message):
    cfg = load_cfg("configs/FCOS/FCOS_tiny_R_18_cpu.yaml", "TEST.AUG.ENABLED", True, *opts)
    with pytest.raises(ValueError, match=message):
        build_inference_model(cfg, torch.nn.Identity())


def test_sliced_tta_runs_tta_per_window():
    image = torch.zeros((3, 300, 500), dtype=torch.uint8)
    image[:, 100:140, 180:260] = 255
    cfg = load_cfg("configs/FCOS/FCOS_tiny_R_18_cpu.yaml", "TEST.SLICE.ENABLED", True, "TEST.SLICE.SIZE", 200,
                   "TEST.SLICE.OVERLAP", 50, "TEST.AUG.ENABLED", True, "TEST.AUG.MIN_SIZES", (100, 200),
                   "TEST.AUG.MAX_SIZE", 1000, "TEST.AUG.FLIP", True)
    stub = BrightBoxModel()
    sliced = build_inference_model(cfg, stub)
    assert sliced.min_size_test == 0  # the TTA resizes each window itself
    inst = sliced([{"image": image}])[0]["instances"]
    assert inst.pred_boxes.tensor.tolist() == [[180, 100, 260, 140]]
    assert sum(stub.batches) == 6 * 4  # 6 windows x (2 sizes x flip)


def test_evaluation_with_tta(tmp_path):
    from d2_anchorfree.engine import AnchorFreeTrainer

    cfg, _ = toy_eval_cfg(tmp_path, "TEST.AUG.ENABLED", True, "TEST.AUG.MIN_SIZES", (64, 96), "TEST.AUG.MAX_SIZE", 200)
    torch.manual_seed(0)
    results = AnchorFreeTrainer.test(cfg, build_model(cfg))
    assert "AP" in results["bbox"]

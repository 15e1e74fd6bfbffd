"""Sliced inference (issue 15): window geometry, mapping back to the image, the cross-window merge
(cut boxes, NMS-free duplicates), SlicedDetector end to end with a stub and with real tiny
detectors, evaluation and predict.py with TEST.SLICE, and the whole-image val data."""
import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from d2_anchorfree.inference import build_inference_model, slicing
from d2_anchorfree.inference.slicing import (SlicedDetector, merge_windows, resize_shortest_edge, slice_windows,
                                             window_origins, windows_to_image)

from conftest import REPO, load_cfg, make_toy_data


def instances(size, boxes, scores, classes=None):
    inst = Instances(size)
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes if classes is not None else [0] * len(scores), dtype=torch.long)
    return inst


# ---------------------------------------------------------------- geometry

def test_window_origins_hand_computed():
    assert window_origins(1035, 400, 100) == [0, 211, 423, 635]  # n = ceil(635 / 300) + 1 = 4
    assert window_origins(1000, 400, 100) == [0, 300, 600]
    assert window_origins(2472, 400, 100) == [0, 296, 592, 888, 1184, 1480, 1776, 2072]
    assert window_origins(400, 400, 100) == [0]
    assert window_origins(250, 400, 100) == [0]  # smaller than a window: one window of its size
    assert window_origins(401, 400, 0) == [0, 1]


def test_slice_windows_hand_computed():
    assert slice_windows(700, 500, 400, 100).tolist() == [
        [0, 0, 400, 400], [100, 0, 500, 400], [0, 300, 400, 700], [100, 300, 500, 700]]
    assert slice_windows(300, 250, 400, 100).tolist() == [[0, 0, 250, 300]]


@pytest.mark.parametrize("height,width,size,overlap", [
    (700, 500, 400, 100), (2472, 400, 400, 100), (1035, 1249, 400, 100), (37, 1001, 64, 63),
    (400, 400, 400, 0), (401, 799, 400, 0), (6000, 6000, 512, 64)])
def test_windows_cover_the_image_exactly(height, width, size, overlap):
    windows = slice_windows(height, width, size, overlap)
    count = np.zeros((height, width), dtype=np.int32)
    for x0, y0, x1, y1 in windows.tolist():
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
        assert (x1 - x0, y1 - y0) == (min(size, width), min(size, height))
        count[y0:y1, x0:x1] += 1
    assert count.min() >= 1  # every pixel, edges and corners included
    for axis, length in ((0, width), (1, height)):
        starts = sorted({w[axis] for w in windows.tolist()})
        ends = sorted({w[axis + 2] for w in windows.tolist()})
        assert starts[0] == 0 and ends[-1] == length
        for s_next, e_prev in zip(starts[1:], ends[:-1]):
            assert e_prev - s_next >= overlap  # neighbours overlap by at least OVERLAP pixels


@pytest.mark.parametrize("kwargs,message", [
    (dict(size=100, overlap=100), r"TEST.SLICE.SIZE \(100\) must be larger than TEST.SLICE.OVERLAP \(100\)"),
    (dict(size=100, overlap=150), r"TEST.SLICE.SIZE \(100\) must be larger"),
    (dict(size=100, overlap=-1), r"TEST.SLICE.OVERLAP must be >= 0 pixels, got -1"),
    (dict(size=0, overlap=0), r"TEST.SLICE.SIZE must be >= 1 pixel, got 0"),
    (dict(size=100, overlap=10, batch_size=0), r"TEST.SLICE.BATCH_SIZE must be >= 1, got 0"),
    (dict(size=100, overlap=10, merge="wbf"), r"TEST.SLICE.MERGE must be one of \('nms', 'nmm'\), got 'wbf'"),
    (dict(size=100, overlap=10, merge_iou=0.0), r"TEST.SLICE.MERGE_IOU must be in \(0, 1\], got 0.0"),
])
def test_bad_slice_values_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=message):
        slicing.check_slice_config(**kwargs)


def test_bad_slice_config_fails_when_the_wrapper_is_built():
    cfg = load_cfg("configs/FCOS/FCOS_tiny_R_18_cpu.yaml", "TEST.SLICE.ENABLED", True,
                   "TEST.SLICE.SIZE", 64, "TEST.SLICE.OVERLAP", 64)
    with pytest.raises(ValueError, match="TEST.SLICE.SIZE"):
        build_inference_model(cfg, nn.Identity())
    cfg.merge_from_list(["TEST.SLICE.OVERLAP", 0, "TEST.SLICE.DETECTIONS_PER_IMAGE", -1])
    with pytest.raises(ValueError, match="TEST.SLICE.DETECTIONS_PER_IMAGE must be >= 0"):
        build_inference_model(cfg, nn.Identity())


# ---------------------------------------------------------------- mapping back and merging

def test_boxes_map_back_to_image_coordinates():
    windows = torch.tensor([[0, 0, 400, 400], [100, 300, 500, 700]])
    per_window = [instances((400, 400), [[1, 2, 3, 4]], [0.5]),
                  instances((400, 400), [[10, 20, 30, 40], [0, 0, 400, 400]], [0.9, 0.2], [1, 0])]
    boxes, scores, classes, ids = windows_to_image(per_window, windows)
    assert boxes.tolist() == [[1, 2, 3, 4], [110, 320, 130, 340], [100, 300, 500, 700]]
    assert scores.tolist() == pytest.approx([0.5, 0.9, 0.2])
    assert classes.tolist() == [0, 1, 0] and ids.tolist() == [0, 1, 1]


# Two windows of a 180 x 100 image overlapping on x in [80, 100].
WINDOWS = torch.tensor([[0, 0, 100, 100], [80, 0, 180, 100]])
SIZE = (100, 180)


def merged(boxes, scores, ids, method="nmm", classes=None, iou=0.5):
    b = torch.tensor(boxes, dtype=torch.float32)
    c = torch.tensor(classes if classes is not None else [0] * len(boxes))
    return merge_windows(b, torch.tensor(scores), c, torch.tensor(ids), WINDOWS, SIZE, method, iou)


def test_box_cut_by_a_window_edge_is_merged_with_its_other_half():
    # A crown at x in [60, 140]: window 0 sees [60, 100] (cut by its right edge x = 100), window 1
    # sees [80, 140] (cut by its left edge x = 80). Plain IoU 0.25; inside the common region
    # [80, 100] both are [80, 100] x [10, 50]: IoU 1.
    out = merged([[60, 10, 100, 50], [80, 10, 140, 50]], [0.8, 0.6], [0, 1])
    assert out.pred_boxes.tensor.tolist() == [[60, 10, 140, 50]]
    assert out.scores.tolist() == pytest.approx([0.8])
    nms = merged([[60, 10, 100, 50], [80, 10, 140, 50]], [0.8, 0.6], [0, 1], method="nms")
    assert nms.pred_boxes.tensor.tolist() == [[60, 10, 100, 50]]  # NMS keeps the cut half


def test_cut_box_takes_the_side_of_the_whole_box_of_the_other_window():
    # Window 0 cuts [90, 120] at x = 100 and scores it higher; window 1 sees it whole.
    out = merged([[90, 60, 100, 80], [90.5, 60.5, 120, 80.5]], [0.9, 0.6], [0, 1])
    assert out.pred_boxes.tensor.tolist() == [[90, 60, 120, 80]]  # x1 from the uncut box only
    assert out.scores.tolist() == pytest.approx([0.9])


def test_different_classes_and_distant_boxes_are_not_merged():
    out = merged([[60, 10, 100, 50], [80, 10, 140, 50], [85, 70, 95, 90]], [0.8, 0.6, 0.5], [0, 1, 1],
                 classes=[0, 1, 0])
    assert len(out) == 3


def test_nms_free_duplicates_within_a_window_are_kept_across_windows_merged():
    # The NMS-free detector's one-to-one output: two heavily overlapping boxes in one window are
    # two objects (its decision); the copies of the other window are duplicates of slicing.
    a, b = [82, 10, 98, 30], [83, 12, 99, 31]
    out = merged([a, b, a, b], [0.9, 0.8, 0.7, 0.6], [0, 0, 1, 1])
    assert sorted(out.pred_boxes.tensor.tolist()) == sorted([a, b])
    assert out.scores.tolist() == pytest.approx([0.9, 0.8])


def test_merge_keeps_at_most_max_detections_in_score_order():
    boxes = torch.tensor([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]], dtype=torch.float32)
    out = merge_windows(boxes, torch.tensor([0.1, 0.9, 0.5]), torch.zeros(3, dtype=torch.long),
                        torch.zeros(3, dtype=torch.long), WINDOWS, SIZE, "nmm", 0.5, max_detections=2)
    assert out.scores.tolist() == pytest.approx([0.9, 0.5])


# ---------------------------------------------------------------- SlicedDetector with a stub model

class BrightBoxModel(nn.Module):
    """Stub detector: one detection, the bounding box of the pixels > 127 of each input, scaled to
    the requested output size; records the batch sizes it is called with."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, batched_inputs):
        self.batches.append(len(batched_inputs))
        out = []
        for x in batched_inputs:
            img = x["image"]
            h, w = img.shape[1:]
            oh, ow = x.get("height", h), x.get("width", w)
            inst = Instances((oh, ow))
            ys, xs = torch.nonzero(img[0] > 127, as_tuple=True)
            if len(xs):
                box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
                inst.pred_boxes = Boxes(box * torch.tensor([ow / w, oh / h, ow / w, oh / h]))
                inst.scores = torch.tensor([float(len(xs)) / (h * w)])
                inst.pred_classes = torch.zeros(1, dtype=torch.long)
            else:
                inst.pred_boxes = Boxes(torch.zeros((0, 4)))
                inst.scores = torch.zeros(0)
                inst.pred_classes = torch.zeros(0, dtype=torch.long)
            out.append({"instances": inst})
        return out


@pytest.mark.parametrize("batch_size", [1, 4])
def test_sliced_detector_finds_an_object_cut_by_windows_whole(batch_size):
    image = torch.zeros((3, 300, 500), dtype=torch.uint8)
    image[:, 100:140, 180:260] = 255  # x in [180, 260]: cut by the windows x in [0, 200] and [150, 350]
    stub = BrightBoxModel()
    sliced = SlicedDetector(stub, size=200, overlap=50, batch_size=batch_size, merge="nmm", merge_iou=0.5,
                            max_detections=10)
    assert slice_windows(300, 500, 200, 50)[:, 0].unique().tolist() == [0, 150, 300]
    (out,) = sliced([{"image": image, "height": 300, "width": 500}])
    inst = out["instances"]
    assert inst.image_size == (300, 500)
    assert inst.pred_boxes.tensor.tolist() == [[180, 100, 260, 140]]
    assert max(stub.batches) <= batch_size and sum(stub.batches) == 6  # 3 x 2 windows, in batches
    # an output size other than the image's: boxes scaled
    (half,) = sliced([{"image": image, "height": 150, "width": 250}])
    assert half["instances"].pred_boxes.tensor.tolist() == [[90, 50, 130, 70]]


def test_windows_get_the_test_resize():
    image = torch.zeros((3, 300, 500), dtype=torch.uint8)
    image[:, 100:140, 180:260] = 255
    sliced = SlicedDetector(BrightBoxModel(), size=200, overlap=50, batch_size=2, max_detections=10,
                            min_size_test=400, max_size_test=800)
    win = sliced.window_input(image, torch.tensor([150, 100, 350, 300]))
    assert tuple(win["image"].shape) == (3, 400, 400) and (win["height"], win["width"]) == (200, 200)
    (out,) = sliced([{"image": image}])
    assert out["instances"].pred_boxes.tensor.tolist() == [[180, 100, 260, 140]]
    assert resize_shortest_edge(image, 300, 1000) is image  # no resize when the size is right


# ---------------------------------------------------------------- real tiny detectors

@pytest.mark.parametrize("config", ["configs/FCOS/FCOS_tiny_R_18_cpu.yaml",
                                    "configs/DeFCN/DeFCN_tiny_R_18_cpu.yaml"])
def test_one_window_equals_plain_inference(config):
    """A window as large as the image: sliced inference is plain inference (NMS and NMS-free)."""
    cfg = load_cfg(config, "MODEL.DENSE.SCORE_THRESH_TEST", 0.0, "TEST.DETECTIONS_PER_IMAGE", 50,
                   "INPUT.MIN_SIZE_TEST", 96, "INPUT.MAX_SIZE_TEST", 160,
                   "TEST.SLICE.ENABLED", True, "TEST.SLICE.SIZE", 256)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, 120, 200), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    sliced = build_inference_model(cfg, model)
    assert isinstance(sliced, SlicedDetector)
    with torch.no_grad():
        plain = model([{"image": resize_shortest_edge(image, 96, 160), "height": 120, "width": 200}])[0]["instances"]
        out = sliced([{"image": image, "height": 120, "width": 200}])[0]["instances"]
    assert len(plain) == 50
    assert torch.equal(out.pred_boxes.tensor, plain.pred_boxes.tensor)
    assert torch.equal(out.scores, plain.scores) and torch.equal(out.pred_classes, plain.pred_classes)


def test_many_windows_on_a_real_detector_give_boxes_inside_the_image():
    cfg = load_cfg("configs/DeFCN/DeFCN_tiny_R_18_cpu.yaml", "MODEL.DENSE.SCORE_THRESH_TEST", 0.0,
                   "TEST.DETECTIONS_PER_IMAGE", 20, "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 64,
                   "TEST.SLICE.ENABLED", True, "TEST.SLICE.SIZE", 64, "TEST.SLICE.OVERLAP", 16,
                   "TEST.SLICE.BATCH_SIZE", 3, "TEST.SLICE.DETECTIONS_PER_IMAGE", 1000)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, 100, 150), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        inst = build_inference_model(cfg, model)([{"image": image}])[0]["instances"]
    boxes = inst.pred_boxes.tensor
    assert 20 < len(inst) <= 6 * 20  # 2 x 3 windows of 20 detections, cross-window copies merged
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 150).all() and (boxes[:, 3] <= 100).all()
    assert (inst.scores[:-1] >= inst.scores[1:]).all()


# ---------------------------------------------------------------- evaluation and predict.py

def toy_eval_cfg(tmp_path, *opts):
    """A config evaluating the tiny toy FCOS on 2 synthetic val images registered under a unique
    name (returned), with ``opts``."""
    from d2_anchorfree.data import register_datasets_from_config

    toy = make_toy_data(tmp_path / "toy", train=1, val=2)
    name = f"toy_val_{os.path.basename(str(tmp_path))}"
    cfg = load_cfg("projects/CustomData/fcos_tiny_toy.yaml",
                   "DATASETS.REGISTER_COCO", (f"{name},{toy}/val.json,{toy}/images",), "DATASETS.TRAIN", (),
                   "DATASETS.TEST", (name,), "DATALOADER.NUM_WORKERS", 0, "OUTPUT_DIR", str(tmp_path / "out"),
                   *opts)
    register_datasets_from_config(cfg)
    return cfg, name


def test_evaluation_with_slicing_sees_full_resolution_images(tmp_path):
    from d2_anchorfree.engine import AnchorFreeTrainer

    cfg, name = toy_eval_cfg(tmp_path, "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 64,
                             "TEST.SLICE.ENABLED", True, "TEST.SLICE.SIZE", 128, "TEST.SLICE.OVERLAP", 32)
    loader = AnchorFreeTrainer.build_test_loader(cfg, name)
    first = next(iter(loader))[0]
    assert tuple(first["image"].shape[1:]) == (first["height"], first["width"])  # no test resize
    plain_cfg = cfg.clone()
    plain_cfg.TEST.SLICE.ENABLED = False
    plain = next(iter(AnchorFreeTrainer.build_test_loader(plain_cfg, name)))[0]
    assert max(plain["image"].shape[1:]) == 64 < max(plain["height"], plain["width"])  # resized
    torch.manual_seed(0)
    model = build_model(cfg)
    results = AnchorFreeTrainer.test(cfg, model)
    assert "bbox" in results and "AP" in results["bbox"]


def test_predict_tool_slice_flags(tmp_path):
    import cv2

    from d2_anchorfree.cli import predict
    path = tmp_path / "big.png"
    assert cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8))
    rc = predict.main(["--config-file", os.path.join(REPO, "configs/FCOS/FCOS_tiny_R_18_cpu.yaml"),
                       "--input", str(path), "--output", str(tmp_path / "out"), "--allow-untrained",
                       "--slice", "--slice-size", "64", "--slice-overlap", "16", "--slice-batch", "2",
                       "DATASETS.REGISTER_COCO", "()", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
                       "MODEL.DENSE.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", "5",
                       "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64"])
    assert rc == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(results) == 5  # TEST.DETECTIONS_PER_IMAGE after the merge of the 2 x 3 windows
    for r in results:
        x, y, w, h = r["bbox"]
        assert 0 <= x and x + w <= 130 + 1e-3 and 0 <= y and y + h <= 90 + 1e-3


# ---------------------------------------------------------------- whole-image val data

def test_val_whole_holds_the_val_regions_untiled(tmp_path):
    from PIL import Image

    from d2_anchorfree.data import trees
    rng = np.random.default_rng(0)
    big = Image.fromarray(rng.integers(0, 256, (500, 1000, 3), dtype=np.uint8))
    voc = trees.VocAnnotation("big.png", 1000, 500, np.array([[20, 30, 60, 80], [560, 50, 660, 100],
                                                              [700, 420, 760, 480], [650, 10, 690, 30]], float),
                              ["Tree", "Dead", "Alive", "Tree"])
    small = Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8))
    voc_small = trees.VocAnnotation("s.png", 300, 200, np.array([[10, 10, 50, 70]], float), ["Tree"])
    items = [trees.TreeImage("big", big, voc), trees.TreeImage("small", small, voc_small)]
    assert trees.val_regions(1000, 500, 400, 400) == [(600, 0, 400, 500)]
    assert trees.val_regions(300, 200, 400, 400) == []  # too small: all train
    assert trees.val_regions(300, 200, 400, 400, "val") == [(0, 0, 300, 200)]
    summary = trees.build_trees_dataset(items, str(tmp_path), tile_size=400, stride=300, val_width=400)
    whole = json.loads((tmp_path / "val_whole.json").read_text())
    assert whole["images"] == [{"id": 1, "file_name": "big_val_x0600.png", "width": 400, "height": 500}]
    boxes = sorted(a["bbox"] for a in whole["annotations"])
    # the crossing box keeps its 60% on the right ([600, 660] -> [0, 60]); the others shift by 600
    assert boxes == [[0, 50, 60, 50], [50, 10, 40, 20], [100, 420, 60, 60]]
    assert summary["val_whole"]["source_boxes"] == summary["val"]["source_boxes"] == 3
    pixels = np.asarray(Image.open(tmp_path / "images" / "big_val_x0600.png"))
    assert np.array_equal(pixels, np.asarray(big)[:, 600:1000])
    # An output of the version before val_whole.json is incomplete, so prepare_trees rebuilds it.
    for name in ("LICENSE", "NOTICE", "manifest.json"):
        (tmp_path / name).write_text("{}")
    assert trees.dataset_is_complete(str(tmp_path))
    os.remove(tmp_path / "val_whole.json")
    assert not trees.dataset_is_complete(str(tmp_path))

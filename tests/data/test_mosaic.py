"""The mosaic augmentation (INPUT.MOSAIC): hand-computed placement, clipping and MIN_VISIBLE on
small synthetic images (data.mosaic.mosaic4), the mapper (the sampled image top left, the ordinary
augmentations afterwards, crowd and empty annotations), the config errors, exact resume of the
training loader, and short training runs of the tiny GFL on the bundled tree tiles.

The placement cases: S = 8, a 16 x 16 canvas, centre (xc, yc) = (6, 10). Image i (h x w) has its
top-left corner at (xc - w or xc, yc - h or yc) and shows where it overlaps its quadrant:

    TL 4 x 8 at (-2, 6):  canvas rows 6-9,   columns 0-5   = its rows 0-3, columns 2-7
    TR 8 x 5 at (6, 2):   canvas rows 2-9,   columns 6-10  = all of it
    BL 8 x 8 at (-2, 10): canvas rows 10-15, columns 0-5   = its rows 0-5, columns 2-7
    BR 3 x 8 at (6, 10):  canvas rows 10-12, columns 6-13  = all of it

"crop" is canvas rows and columns 4-11 (S//2 to S//2 + S), "full" the whole canvas.
"""
import argparse
import itertools
import json
import math
import os

import cv2
import numpy as np
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

import d2_anchorfree
from d2_anchorfree.data import mapper as mapper_module
from d2_anchorfree.data.mapper import CheckedDatasetMapper, MosaicDatasetMapper, build_train_mapper
from d2_anchorfree.data.mosaic import (check_mosaic_config, crop_side, mosaic4, mosaic_close_iter,
                                       resize_longer_side, sample_mosaic_center, sample_mosaic_scale)
from d2_anchorfree.engine import AnchorFreeTrainer, setup_cfg

from conftest import REPO, trees_dir

S = 8
CENTER = (6, 10)
SHAPES = [(4, 8), (8, 5), (8, 8), (3, 8)]  # (h, w) of TL, TR, BL, BR


def quadrant_images():
    """Image i: pixel (r, c) = 64 * i + 8 * r + c (every pixel of the four tells where it came from)."""
    return [(64 * i + 8 * np.arange(h)[:, None] + np.arange(w)[None, :]).astype(np.uint8)[:, :, None]
            for i, (h, w) in enumerate(SHAPES)]


def expected_canvas():
    """The 16 x 16 canvas of the module docstring, written slice by slice."""
    tl, tr, bl, br = quadrant_images()
    canvas = np.full((16, 16, 1), 114, np.uint8)
    canvas[6:10, 0:6] = tl[0:4, 2:8]
    canvas[2:10, 6:11] = tr
    canvas[10:16, 0:6] = bl[0:6, 2:8]
    canvas[10:13, 6:14] = br
    return canvas


# XYXY boxes in each image's own pixels; placed = + (ox, oy):
#   TL (1, 1, 5, 3)   -> (-1, 7, 3, 9):   visible in "full" (0, 7, 3, 9), 6 of 8 px^2 (0.75); not in "crop"
#   TR (0, 0, 5, 8)   -> (6, 2, 11, 10):  whole in "full"; "crop" (6, 4, 11, 10), 30 of 40 (0.75)
#   BL (2, 5, 6, 8)   -> (0, 15, 4, 18):  (0, 15, 4, 16) in "full": 1 px high, dropped (4 of 12 visible)
#   BR (0, 0, 2, 3)   -> (6, 10, 8, 13):  whole in "full"; "crop" (6, 10, 8, 12), 4 of 6 (0.67)
#   BR (4, 0, 8, 3)   -> (10, 10, 14, 13): whole in "full"; "crop" (10, 10, 12, 12), 4 of 12 (0.33)
BOXES = [np.array([[1, 1, 5, 3]], float), np.array([[0, 0, 5, 8]], float), np.array([[2, 5, 6, 8]], float),
         np.array([[0, 0, 2, 3], [4, 0, 8, 3]], float)]


def test_placement_full_canvas_hand_computed():
    result = mosaic4(quadrant_images(), [np.zeros((0, 4))] * 4, CENTER, S, "full")
    assert result.image.shape == (16, 16, 1) and result.image.dtype == np.uint8
    np.testing.assert_array_equal(result.image, expected_canvas())
    assert len(result.boxes) == len(result.image_index) == len(result.box_index) == 0


def test_crop_is_the_middle_of_the_canvas():
    result = mosaic4(quadrant_images(), [np.zeros((0, 4))] * 4, CENTER, S, "crop")
    assert result.image.shape == (8, 8, 1)
    np.testing.assert_array_equal(result.image, expected_canvas()[4:12, 4:12])
    assert result.image[0:2, 0:2].tolist() == [[[114]] * 2] * 2  # above TL, left of TR: no image


@pytest.mark.parametrize("output,min_visible,want", [
    ("full", 0.25, [((0, 7, 3, 9), 0, 0), ((6, 2, 11, 10), 1, 0), ((6, 10, 8, 13), 3, 0), ((10, 10, 14, 13), 3, 1)]),
    ("full", 0.8, [((6, 2, 11, 10), 1, 0), ((6, 10, 8, 13), 3, 0), ((10, 10, 14, 13), 3, 1)]),  # TL: 0.75
    ("full", 0.0, [((0, 7, 3, 9), 0, 0), ((6, 2, 11, 10), 1, 0), ((6, 10, 8, 13), 3, 0), ((10, 10, 14, 13), 3, 1)]),
    ("crop", 0.25, [((2, 0, 7, 6), 1, 0), ((2, 6, 4, 8), 3, 0), ((6, 6, 8, 8), 3, 1)]),  # minus (4, 4)
    ("crop", 0.5, [((2, 0, 7, 6), 1, 0), ((2, 6, 4, 8), 3, 0)]),  # the second BR box: 0.33
    ("crop", 1.0, []),
])
def test_boxes_move_clip_and_drop_hand_computed(output, min_visible, want):
    """The table above BOXES; BL's box stays dropped at MIN_VISIBLE 0 (1 px high)."""
    result = mosaic4(quadrant_images(), BOXES, CENTER, S, output, min_visible)
    got = [(tuple(b), i, j) for b, i, j in zip(result.boxes.tolist(), result.image_index.tolist(),
                                               result.box_index.tolist())]
    assert got == [(tuple(float(v) for v in b), i, j) for b, i, j in want]


def test_fully_visible_boxes_survive_min_visible_one():
    result = mosaic4(quadrant_images(), BOXES, CENTER, S, "full", min_visible=1.0)
    assert result.boxes.tolist() == [[6, 2, 11, 10], [6, 10, 8, 13], [10, 10, 14, 13]]


def test_crop_window_of_any_side_is_centred_on_the_canvas():
    """crop_size W: rows and columns [(16 - W)//2, (16 - W)//2 + W); W = 16 is the "full" result,
    W = S the default crop, W = 6 rows/columns 5-10 with the TR box (6, 2, 11, 10) cut to
    (6, 5, 11, 10) - 5 = (1, 0, 6, 5) (25 of 40 px^2, kept at 0.25)."""
    images = quadrant_images()
    full, whole = mosaic4(images, BOXES, CENTER, S, "full"), mosaic4(images, BOXES, CENTER, S, "crop", crop_size=16)
    np.testing.assert_array_equal(whole.image, full.image)
    np.testing.assert_array_equal(whole.boxes, full.boxes)
    default, same = mosaic4(images, BOXES, CENTER, S, "crop"), mosaic4(images, BOXES, CENTER, S, "crop", crop_size=S)
    np.testing.assert_array_equal(same.image, default.image)
    np.testing.assert_array_equal(same.boxes, default.boxes)
    small = mosaic4(images, BOXES, CENTER, S, "crop", crop_size=6)
    np.testing.assert_array_equal(small.image, expected_canvas()[5:11, 5:11])
    assert small.boxes.tolist()[0] == [1, 0, 6, 5] and small.image_index.tolist()[0] == 1
    for bad, output in ((0, "crop"), (17, "crop"), (8, "full")):
        with pytest.raises(ValueError, match=f"crop_size = {bad} with output '{output}'"):
            mosaic4(images, BOXES, CENTER, S, output, crop_size=bad)


def test_scale_one_draws_nothing_and_a_range_draws_uniformly():
    np.random.seed(3)
    before = np.random.get_state()[1].copy()
    assert sample_mosaic_scale(1.0, 1.0) == 1.0 and sample_mosaic_scale(0.7, 0.7) == 0.7
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # runs without the range draw as before
    draws = [sample_mosaic_scale(0.5, 1.5) for _ in range(400)]
    assert 0.5 <= min(draws) < 0.6 and 1.4 < max(draws) <= 1.5 and abs(np.mean(draws) - 1.0) < 0.05
    assert [crop_side(400, s) for s in (0.5, 1.0, 1.5, 0.3)] == [800, 400, 267, 800]


def test_mosaic4_refuses_bad_inputs():
    images, boxes = quadrant_images(), [np.zeros((0, 4))] * 4
    with pytest.raises(ValueError, match="4 images and 4 box arrays, got 3 and 4"):
        mosaic4(images[:3], boxes, CENTER, S)
    with pytest.raises(ValueError, match="same C and dtype"):
        mosaic4(images[:3] + [np.zeros((3, 8, 3), np.uint8)], boxes, CENTER, S)
    with pytest.raises(ValueError, match=r"center \(17, 3\) lies outside the 16 x 16 canvas"):
        mosaic4(images, boxes, (17, 3), S)
    with pytest.raises(ValueError, match="output = 'middle'"):
        mosaic4(images, boxes, CENTER, S, "middle")


def test_resize_longer_side():
    """300 x 400 -> 312 x 416 (factor 1.04 both ways); 100 x 50 -> 32 x 16; one channel stays [H, W, 1]."""
    image, scale = resize_longer_side(np.zeros((300, 400, 3), np.uint8), 416)
    assert image.shape == (312, 416, 3) and scale == pytest.approx((1.04, 1.04))
    image, scale = resize_longer_side(np.zeros((100, 50, 1), np.uint8), 32)
    assert image.shape == (32, 16, 1) and scale == (16 / 50, 32 / 100)
    same = np.arange(32 * 20, dtype=np.uint8).reshape(20, 32, 1)
    image, scale = resize_longer_side(same, 32)
    assert image is same and scale == (1.0, 1.0)


def test_center_is_uniform_over_the_middle_half():
    """S = 32: xc, yc whole pixels in [16, 48], both ends drawn, about uniform."""
    np.random.seed(0)
    draws = np.array([sample_mosaic_center(32) for _ in range(4000)])
    assert draws.min() == 16 and draws.max() == 48
    assert abs(draws.mean() - 32) < 0.5 and len(np.unique(draws[:, 0])) == 33


# ------------------------------------------------------------------------------------- mapper
# Image "a": 20 x 40 (h x w), grey 50, an object at XYWH (4, 2, 8, 6) and a crowd box; resized to
# S = 32: factor 0.8, 16 x 32, the object at XYXY (3.2, 1.6, 9.6, 6.4). Centre (32, 32) of the
# 64 x 64 canvas: TL at (0, 16), TR (32, 16), BL (0, 32), BR (32, 32).
A_FULL = [[3.2, 17.6, 9.6, 22.4], [35.2, 17.6, 41.6, 22.4], [3.2, 33.6, 9.6, 38.4], [35.2, 33.6, 41.6, 38.4]]
A_CROP = [[19.2, 1.6, 25.6, 6.4], [19.2, 17.6, 25.6, 22.4]]  # TR and BR minus (16, 16); TL, BL out of the crop


def write_image(path, h, w, value):
    assert cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))
    return str(path)


@pytest.fixture
def images(tmp_path):
    object_ = {"bbox": [4, 2, 8, 6], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0,
               "segmentation": [[4, 2, 12, 2, 12, 8]]}
    crowd = {"bbox": [20, 10, 30, 18], "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "iscrowd": 1}
    a = {"file_name": write_image(tmp_path / "a.png", 20, 40, 50), "height": 20, "width": 40, "image_id": 1,
         "annotations": [object_, crowd]}
    b = {"file_name": write_image(tmp_path / "b.png", 40, 20, 200), "height": 40, "width": 20, "image_id": 2,
         "annotations": []}
    return {"a": a, "b": b}


def mosaic_mapper(dicts, output="full", augmentations=(), mosaic_size=32, **kwargs):
    return MosaicDatasetMapper(is_train=True, augmentations=list(augmentations), image_format="BGR",
                               dataset_dicts=dicts, mosaic_size=mosaic_size, mosaic_output=output, **kwargs)


@pytest.fixture
def centre(monkeypatch):
    """The mosaic centre forced to (32, 32), the middle of the 64 x 64 canvas."""
    monkeypatch.setattr(mapper_module, "sample_mosaic_center", lambda size: (32, 32))


def boxes_of(out):
    return out["instances"].gt_boxes.tensor.numpy()


def test_mapper_full_mosaic_of_one_image_hand_computed(images, centre):
    """Four copies of "a": 4 objects where the table says, crowd boxes dropped as for a plain image;
    the canvas grey where no image lies (rows 0-15 and 48-63)."""
    out = mosaic_mapper([images["a"]])(images["a"])
    assert tuple(out["image"].shape) == (3, 64, 64) and (out["height"], out["width"]) == (64, 64)
    np.testing.assert_allclose(boxes_of(out), A_FULL, atol=1e-5)
    assert out["instances"].gt_classes.tolist() == [0] * 4 and not out["instances"].has("gt_masks")
    image = out["image"].numpy()
    assert (image[:, :16] == 114).all() and (image[:, 48:] == 114).all() and (image[:, 16:48] == 50).all()


def test_mapper_crop_and_the_sampled_image_is_top_left(images, centre):
    """The sampled dict ("b", 200) fills the top-left quadrant, the others come from the dataset
    ("a", 50); "crop" is S x S = 32 x 32, with "a"'s TR and BR objects only."""
    out = mosaic_mapper([images["a"]], "crop")(images["b"])
    image = out["image"].numpy()
    assert image.shape == (3, 32, 32)
    # b (40 x 20) -> 32 x 16 at (16, 0): columns 16-31, rows 0-31 of the canvas; crop columns 0-15 rows 0-15
    assert (image[:, :16, :16] == 200).all() and (image[:, :16, 16:] == 50).all()
    np.testing.assert_allclose(boxes_of(out), A_CROP, atol=1e-5)


def test_augmentations_apply_after_the_mosaic(images, centre):
    """ResizeShortestEdge to 32 halves the 64 x 64 "full" mosaic and its boxes; a flip mirrors them."""
    resize = [T.ResizeShortestEdge((32, 32), 1000)]
    out = mosaic_mapper([images["a"]], augmentations=resize)(images["a"])
    assert tuple(out["image"].shape) == (3, 32, 32)
    np.testing.assert_allclose(boxes_of(out), np.array(A_FULL) / 2, atol=1e-5)
    flip = [T.RandomFlip(prob=1.0, horizontal=True)]
    out = mosaic_mapper([images["a"]], augmentations=flip)(images["a"])
    want = [[64 - x1, y0, 64 - x0, y1] for x0, y0, x1, y1 in A_FULL]
    np.testing.assert_allclose(boxes_of(out), want, atol=1e-5)


@pytest.mark.parametrize("scale,want", [
    # s = 2: the 16 x 16 middle (canvas 24-40) of the 64 x 64 canvas, only BR's object, cut to
    # (35.2, 33.6, 40, 38.4) (0.75 visible) -> minus 24 -> x 2 to 32 x 32
    (2.0, [[22.4, 19.2, 32.0, 28.8]]),
    # s = 0.5: the whole canvas, halved
    (0.5, (np.array(A_FULL) / 2).tolist()),
])
def test_mapper_scaled_crop_hand_computed(images, centre, scale, want):
    out = mosaic_mapper([images["a"]], "crop", mosaic_scale=(scale, scale))(images["a"])
    assert tuple(out["image"].shape) == (3, 32, 32) and (out["height"], out["width"]) == (32, 32)
    np.testing.assert_allclose(boxes_of(out), want, atol=1e-4)


def test_images_without_objects_give_empty_instances(images):
    out = mosaic_mapper([images["b"]])(images["b"])
    assert tuple(out["image"].shape) == (3, 64, 64) and len(out["instances"]) == 0
    assert tuple(out["instances"].gt_boxes.tensor.shape) == (0, 4)


def test_prob_zero_and_test_time_map_the_plain_image(images):
    out = mosaic_mapper([images["a"]], mosaic_prob=0.0)(images["a"])
    assert tuple(out["image"].shape) == (3, 20, 40)
    np.testing.assert_allclose(boxes_of(out), [[4, 2, 12, 8]])
    test_time = MosaicDatasetMapper(is_train=False, augmentations=[], image_format="BGR", dataset_dicts=[images["a"]])
    out = test_time(images["a"])
    assert tuple(out["image"].shape) == (3, 20, 40) and "instances" not in out


def test_prob_picks_about_that_fraction(images):
    np.random.seed(0)
    mapper = mosaic_mapper([images["a"]], mosaic_prob=0.3)
    mosaics = sum(mapper(images["a"])["image"].shape[1] == 64 for _ in range(200))
    assert 40 <= mosaics <= 80


def test_shared_dataset_dicts_are_not_modified(images):
    a = images["a"]
    del a["height"], a["width"]  # check_image_size would fill them in
    before = json.dumps(a, sort_keys=True)
    np.random.seed(0)
    mosaic_mapper([a])(dict(images["b"]))
    assert json.dumps(a, sort_keys=True) == before


# ------------------------------------------------------------------------------------- errors
def mosaic_cfg(*opts):
    cfg = get_cfg()
    d2_anchorfree.add_anchorfree_config(cfg)
    cfg.merge_from_list(["INPUT.MOSAIC.ENABLED", True, *opts])
    return cfg


@pytest.mark.parametrize("opts,message", [
    (["INPUT.MOSAIC.PROB", 1.5], r"INPUT.MOSAIC.PROB = 1.5: must be a number in \[0, 1\]"),
    (["INPUT.MOSAIC.PROB", -0.1], r"INPUT.MOSAIC.PROB = -0.1"),
    (["INPUT.MOSAIC.SIZE", 16], r"INPUT.MOSAIC.SIZE = 16: must be a whole number of pixels >= 32"),
    (["INPUT.MOSAIC.OUTPUT", "center"], r"INPUT.MOSAIC.OUTPUT = 'center': use one of \['crop', 'full'\]"),
    (["INPUT.MOSAIC.MIN_VISIBLE", 1.5], r"INPUT.MOSAIC.MIN_VISIBLE = 1.5: must be a number in \[0, 1\]"),
    (["INPUT.MOSAIC.MIN_VISIBLE", float("nan")], r"INPUT.MOSAIC.MIN_VISIBLE = nan"),
    (["INPUT.MOSAIC.MIN_SCALE", 0.4], r"INPUT.MOSAIC.MIN_SCALE = 0.4: must be a number >= 0.5"),
    (["INPUT.MOSAIC.MIN_SCALE", 1.2], r"INPUT.MOSAIC.MAX_SCALE = 1.0: must be a finite number >= MIN_SCALE = 1.2"),
    (["INPUT.MOSAIC.MAX_SCALE", float("inf")], r"INPUT.MOSAIC.MAX_SCALE = inf"),
    (["INPUT.MOSAIC.OUTPUT", "full", "INPUT.MOSAIC.MAX_SCALE", 1.5], r"with OUTPUT 'full' leave them at 1.0"),
    (["INPUT.MOSAIC.CLOSE_ITERS", -1], r"INPUT.MOSAIC.CLOSE_ITERS = -1: must be a whole number >= 0"),
    (["INPUT.MOSAIC.CLOSE_ITERS", 100, "SOLVER.MAX_ITER", 100],
     r"INPUT.MOSAIC.CLOSE_ITERS = 100 is not below SOLVER.MAX_ITER = 100, so no iteration would use the mosaic"),
])
def test_bad_mosaic_settings_fail_before_training(opts, message):
    cfg = mosaic_cfg(*opts)
    with pytest.raises(ValueError, match=message):
        AnchorFreeTrainer(cfg)  # checked before the model and the datasets
    cfg.INPUT.MOSAIC.ENABLED = False
    check_mosaic_config(cfg)  # not checked when off


def test_mapper_refuses_what_the_mosaic_cannot_move(images):
    with pytest.raises(ValueError, match="the training dataset, which has no images"):
        build_train_mapper(mosaic_cfg(), [])
    with pytest.raises(ValueError, match="no images"):
        build_train_mapper(mosaic_cfg(), None)
    with pytest.raises(ValueError, match=r"boxes only; it cannot be combined with MODEL.MASK_ON"):
        build_train_mapper(mosaic_cfg("MODEL.MASK_ON", True), [images["a"]])
    with pytest.raises(ValueError, match="MODEL.KEYPOINT_ON"):
        mosaic_mapper([images["a"]], use_keypoint=True)
    with pytest.raises(ValueError, match="semantic segmentation"):
        build_train_mapper(mosaic_cfg(), [{**images["a"], "sem_seg_file_name": "x.png"}])
    with pytest.raises(ValueError, match="INPUT.MOSAIC.SIZE = 8"):
        mosaic_mapper([images["a"]], mosaic_size=8)  # explicit arguments are checked too
    assert type(build_train_mapper(mosaic_cfg("INPUT.MOSAIC.ENABLED", False))) is CheckedDatasetMapper


# ------------------------------------------------------------------------------------- resume
@pytest.fixture
def toy_dataset(tmp_path, names):
    """6 registered images of 48 x 64 px, random pixels, 1 to 3 boxes each; returns the name."""
    rng = np.random.default_rng(0)
    dicts = []
    for i in range(6):
        path = tmp_path / f"t{i}.png"
        assert cv2.imwrite(str(path), rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
        annos = [{"bbox": [float(x), float(y), 12.0, 10.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0,
                  "iscrowd": 0} for x, y in rng.integers(0, 36, (1 + i % 3, 2))]
        dicts.append({"file_name": str(path), "image_id": i, "height": 48, "width": 64, "annotations": annos})
    name = names("mosaic_toy")
    DatasetCatalog.register(name, lambda: dicts)
    MetadataCatalog.get(name).thing_classes = ["thing"]
    return name


def _samples(loader, batches):
    return [(d["image_id"], d["image"], d["instances"].gt_boxes.tensor)
            for batch in itertools.islice(loader, batches) for d in batch]


def test_loader_with_mosaic_resumes_exactly(toy_dataset):
    """The trainer's loader with "full" mosaics (PROB 0.7, so plain images too), the resize and a flip: a loader
    started at iteration 3 gives the very images and boxes of the uninterrupted one from there on."""
    cfg = mosaic_cfg("DATASETS.TRAIN", (toy_dataset,), "INPUT.MOSAIC.SIZE", 32, "INPUT.MOSAIC.PROB", 0.7,
                     "INPUT.MOSAIC.OUTPUT", "full",
                     "INPUT.MIN_SIZE_TRAIN", (32, 48), "INPUT.MAX_SIZE_TRAIN", 100, "INPUT.RANDOM_FLIP", "horizontal",
                     "DATALOADER.NUM_WORKERS", 0, "DATALOADER.ASPECT_RATIO_GROUPING", False,
                     "SOLVER.IMS_PER_BATCH", 2, "SEED", 7)
    straight = _samples(AnchorFreeTrainer.build_train_loader(cfg), 10)
    resumed = _samples(AnchorFreeTrainer.build_train_loader(cfg, start_iter=3), 7)
    assert len(resumed) == len(straight[6:]) == 14
    for (id_a, image_a, boxes_a), (id_b, image_b, boxes_b) in zip(straight[6:], resumed):
        assert id_a == id_b and torch.equal(image_a, image_b) and torch.equal(boxes_a, boxes_b)
    square = sum(image.shape[1] == image.shape[2] for _, image, _ in straight)  # 64 x 64 mosaics, resized
    assert 0 < square < len(straight)  # mosaics and plain 48 x 64 images
    boxes = [len(b) for _, image, b in straight if image.shape[1] == image.shape[2]]
    assert max(boxes) > 3  # more objects than any single image holds


def test_loader_with_scaled_mosaic_crops_resumes_exactly(toy_dataset):
    """The same with "crop" mosaics at scales 0.5-2 and the scale jitter after them: the scale is drawn
    from the generator the loader seeds per sample, so the resumed loader gives the same images."""
    cfg = mosaic_cfg("DATASETS.TRAIN", (toy_dataset,), "INPUT.MOSAIC.SIZE", 32, "INPUT.MOSAIC.MIN_SCALE", 0.5,
                     "INPUT.MOSAIC.MAX_SCALE", 2.0, "INPUT.SCALE_JITTER.ENABLED", True, "INPUT.SCALE_JITTER.SIZE", 40,
                     "DATALOADER.NUM_WORKERS", 0, "DATALOADER.ASPECT_RATIO_GROUPING", False,
                     "SOLVER.IMS_PER_BATCH", 2, "SEED", 7)
    straight = _samples(AnchorFreeTrainer.build_train_loader(cfg), 6)
    resumed = _samples(AnchorFreeTrainer.build_train_loader(cfg, start_iter=2), 4)
    for (id_a, image_a, boxes_a), (id_b, image_b, boxes_b) in zip(straight[4:], resumed):
        assert id_a == id_b and torch.equal(image_a, image_b) and torch.equal(boxes_a, boxes_b)
    assert all(tuple(image.shape[1:]) == (40, 40) for _, image, _ in straight)
    assert len({len(b) for _, _, b in straight}) > 1  # the scales differ, so do the boxes kept


def test_loader_from_the_close_point_maps_plain_images(toy_dataset):
    """INPUT.MOSAIC.CLOSE_ITERS 3 of MAX_ITER 5: the loader the trainer builds for iteration 2 still
    makes mosaics; the one for iteration 2 = 5 - 3 and later gives exactly the plain loader's images
    (same stream positions, same per-sample augmentations), and the config is not modified."""
    opts = ("DATASETS.TRAIN", (toy_dataset,), "INPUT.MOSAIC.SIZE", 32, "INPUT.MOSAIC.OUTPUT", "full",
            "INPUT.MIN_SIZE_TRAIN", (32, 48), "INPUT.MAX_SIZE_TRAIN", 100, "INPUT.RANDOM_FLIP", "horizontal",
            "DATALOADER.NUM_WORKERS", 0, "DATALOADER.ASPECT_RATIO_GROUPING", False,
            "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 5, "SEED", 7)
    cfg = mosaic_cfg(*opts, "INPUT.MOSAIC.CLOSE_ITERS", 3)
    plain = mosaic_cfg(*opts, "INPUT.MOSAIC.ENABLED", False)
    assert mosaic_close_iter(cfg) == 2 and mosaic_close_iter(plain) is None
    assert mosaic_close_iter(mosaic_cfg(*opts)) is None  # CLOSE_ITERS 0: mosaic to the end
    before = _samples(AnchorFreeTrainer.build_train_loader(cfg, start_iter=1), 1)
    assert all(image.shape[1] == image.shape[2] for _, image, _ in before)  # 64 x 64 mosaics, resized
    for start in (2, 4):
        closed = _samples(AnchorFreeTrainer.build_train_loader(cfg, start_iter=start), 3)
        want = _samples(AnchorFreeTrainer.build_train_loader(plain, start_iter=start), 3)
        assert [i for i, _, _ in closed] == [i for i, _, _ in want]
        for (_, image_a, boxes_a), (_, image_b, boxes_b) in zip(closed, want):
            assert torch.equal(image_a, image_b) and torch.equal(boxes_a, boxes_b)
        assert all(image.shape[1] != image.shape[2] for _, image, _ in closed)  # 48 x 64 images, resized
    assert cfg.INPUT.MOSAIC.ENABLED


# ------------------------------------------------------------------------------------- training
@pytest.mark.slow  # 5 training iterations of the tiny GFL on 2 cores
@pytest.mark.parametrize("output,close,mosaics", [("crop", 2, 6), ("full", 0, 10)])
def test_tiny_gfl_trains_on_mosaics(tmp_path, names, monkeypatch, output, close, mosaics):
    """5 iterations of 2 images, every sample a mosaic until the last ``close`` iterations
    (INPUT.MOSAIC.CLOSE_ITERS): 6 mosaics with 2 closed, 10 with none."""
    trees = trees_dir()
    train = names("trees_mosaic")
    opts = ["DATASETS.REGISTER_COCO", f"('{train},{trees}/train.json,{trees}/images',)",
            "DATASETS.TRAIN", f"('{train}',)", "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "5",
            "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(tmp_path / "out"),
            "INPUT.MOSAIC.ENABLED", "True", "INPUT.MOSAIC.OUTPUT", output, "INPUT.MOSAIC.CLOSE_ITERS", str(close)]
    cfg = setup_cfg(argparse.Namespace(config_file=os.path.join(REPO, "configs/GFL/GFL_tiny_R_18_cpu.yaml"),
                                       opts=opts), default_setup_logging=False)
    made = []
    monkeypatch.setattr(mapper_module, "mosaic4", lambda *a, **k: made.append(mosaic4(*a, **k)) or made[-1])
    torch.manual_seed(0)
    trainer = AnchorFreeTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert len(made) == mosaics and made[0].image.shape == ((416, 416, 3) if output == "crop" else (832, 832, 3))
    metrics = [json.loads(line) for line in open(tmp_path / "out" / "metrics.json")]
    losses = [m for m in metrics if "total_loss" in m]
    assert losses and losses[-1]["iteration"] == 4
    assert all(math.isfinite(v) for m in losses for k, v in m.items() if k.startswith("loss"))

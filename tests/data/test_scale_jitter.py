"""Scale jitter (INPUT.SCALE_JITTER, data.augmentation): the augmentation list of a config (detectron2's
own when off), hand-computed resize-and-pad and resize-and-crop of a painted object, square outputs
at every drawn scale, after the mosaic, and the config errors. The HSV augmentation (INPUT.HSV):
hand-computed gains, per-image draws, boxes unmoved, config errors.

The painted image: 20 x 40 (h x w), grey 50, the object XYXY (4, 2, 12, 8) painted 255.
"""
import cv2
import numpy as np
import pytest

from detectron2.config import get_cfg
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

import d2_anchorfree
from d2_anchorfree.data import build_train_augmentations, check_hsv_config, check_scale_jitter_config
from d2_anchorfree.data.augmentation import RandomHSV, hsv_gain
from d2_anchorfree.data import mapper as mapper_module
from d2_anchorfree.data.mapper import CheckedDatasetMapper, MosaicDatasetMapper, build_train_mapper
from d2_anchorfree.engine import AnchorFreeTrainer

BOX = [4, 2, 12, 8]


def jitter_cfg(*opts, enabled=True):
    cfg = get_cfg()
    d2_anchorfree.add_anchorfree_config(cfg)
    cfg.merge_from_list(["INPUT.SCALE_JITTER.ENABLED", enabled, "INPUT.RANDOM_FLIP", "none", *opts])
    return cfg


@pytest.fixture
def painted(tmp_path):
    image = np.full((20, 40, 3), 50, np.uint8)
    image[2:8, 4:12] = 255
    path = tmp_path / "a.png"
    assert cv2.imwrite(str(path), image)
    annotation = {"bbox": BOX, "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0, "iscrowd": 0}
    return {"file_name": str(path), "height": 20, "width": 40, "image_id": 1, "annotations": [annotation]}


def boxes_of(out):
    return out["instances"].gt_boxes.tensor.numpy()


def test_off_is_detectron2s_list_and_on_replaces_the_resize():
    for crop in (False, True):
        cfg = jitter_cfg("INPUT.CROP.ENABLED", crop, "INPUT.RANDOM_FLIP", "horizontal", enabled=False)
        ours = build_train_augmentations(cfg)
        theirs = DatasetMapper.from_config(cfg, is_train=True)["augmentations"]
        assert [repr(a) for a in ours] == [repr(a) for a in theirs]
    cfg = jitter_cfg("INPUT.SCALE_JITTER.SIZE", 64, "INPUT.RANDOM_FLIP", "horizontal", "INPUT.CROP.ENABLED", True)
    kinds = [type(a) for a in build_train_augmentations(cfg)]
    assert kinds == [T.RandomCrop, T.ResizeScale, T.FixedSizeCrop, T.RandomFlip]
    assert not any(isinstance(a, T.ResizeShortestEdge) for a in build_train_augmentations(cfg))
    # the mapper built from the config uses them; test time keeps the config's test resize
    assert [type(a) for a in CheckedDatasetMapper(cfg, is_train=True).augmentations.augs] == kinds
    assert [type(a) for a in CheckedDatasetMapper(cfg, is_train=False).augmentations.augs] == [T.ResizeShortestEdge]


def test_small_scale_pads_bottom_right_hand_computed(painted):
    """SIZE 32 at scale 0.5: the image must fit 16 x 16, factor min(16/20, 16/40) = 0.4, so 8 x 16,
    the box x 0.4 = (1.6, 0.8, 4.8, 3.2), grey 114 below and right of it up to 32 x 32."""
    cfg = jitter_cfg("INPUT.SCALE_JITTER.SIZE", 32, "INPUT.SCALE_JITTER.MIN_SCALE", 0.5,
                     "INPUT.SCALE_JITTER.MAX_SCALE", 0.5)
    out = CheckedDatasetMapper(cfg, is_train=True)(painted)
    image = out["image"].numpy()
    assert image.shape == (3, 32, 32)
    np.testing.assert_allclose(boxes_of(out), [[1.6, 0.8, 4.8, 3.2]], atol=1e-5)
    assert (image[:, 8:] == 114).all() and (image[:, :, 16:] == 114).all()
    assert (image[:, 4:8, 6:16] == 50).all() and (image[:, 1, 2:4] > 200).all()  # bilinear: not quite 255


def test_large_scale_crops_and_boxes_follow_the_pixels(painted):
    """SIZE 32 at scale 2: fit 64 x 64, factor min(64/20, 64/40) = 1.6, so 32 x 64, the box
    (6.4, 3.2, 19.2, 12.8); the 32 x 32 crop starts at a random column c in [0, 32], the box moves by
    -c and is clipped to the crop, or dropped when it lies outside it; the painted pixels stay
    inside the box."""
    cfg = jitter_cfg("INPUT.SCALE_JITTER.SIZE", 32, "INPUT.SCALE_JITTER.MIN_SCALE", 2.0,
                     "INPUT.SCALE_JITTER.MAX_SCALE", 2.0)
    mapper = CheckedDatasetMapper(cfg, is_train=True)
    np.random.seed(0)
    seen = set()
    for _ in range(40):
        out = mapper(painted)
        image = out["image"].numpy()
        assert image.shape == (3, 32, 32)
        bright = np.flatnonzero((image[0] > 200).any(axis=0))  # columns showing the object
        if len(out["instances"]) == 0:
            assert len(bright) == 0
            seen.add("dropped")
            continue
        (x0, y0, x1, y1), = boxes_of(out)
        np.testing.assert_allclose([y0, y1], [3.2, 12.8], atol=1e-5)
        if x0 > 0:  # the left edge visible: the box moved by whole pixels, right edge by as much
            shift = 6.4 - x0
            assert abs(shift - round(shift)) < 1e-4
            np.testing.assert_allclose(x1, min(19.2 - shift, 32), atol=1e-4)
            seen.add("moved")
        else:
            assert x1 < 19.2 - 1e-4
            seen.add("clipped")
        if len(bright):  # (a sliver left of the crop edge may show no pixel above 200)
            assert bright.min() >= np.floor(x0) and bright.max() <= np.ceil(x1)
    assert seen == {"moved", "clipped", "dropped"}


def test_every_scale_gives_size_x_size_and_empty_images_train(painted):
    cfg = jitter_cfg("INPUT.SCALE_JITTER.SIZE", 48, "INPUT.SCALE_JITTER.MIN_SCALE", 0.3,
                     "INPUT.SCALE_JITTER.MAX_SCALE", 3.0, "INPUT.RANDOM_FLIP", "horizontal")
    mapper = CheckedDatasetMapper(cfg, is_train=True)
    empty = dict(painted, annotations=[])
    np.random.seed(1)
    for _ in range(20):
        assert tuple(mapper(painted)["image"].shape) == (3, 48, 48)
        out = mapper(empty)
        assert tuple(out["image"].shape) == (3, 48, 48) and tuple(out["instances"].gt_boxes.tensor.shape) == (0, 4)


def test_jitter_applies_after_the_mosaic(painted, monkeypatch):
    """The "full" mosaic of four copies of the image, S = 32, centre (32, 32) (64 x 64, the objects
    at ``A_FULL``, as in test_mosaic.py), at scale 0.5 of SIZE 40: 20 x 20, the boxes x 20/64,
    padded to 40 x 40."""
    monkeypatch.setattr(mapper_module, "sample_mosaic_center", lambda size: (32, 32))
    cfg = jitter_cfg("INPUT.MOSAIC.ENABLED", True, "INPUT.MOSAIC.SIZE", 32, "INPUT.MOSAIC.OUTPUT", "full",
                     "INPUT.SCALE_JITTER.SIZE", 40, "INPUT.SCALE_JITTER.MIN_SCALE", 0.5,
                     "INPUT.SCALE_JITTER.MAX_SCALE", 0.5)
    mapper = build_train_mapper(cfg, [painted])
    assert isinstance(mapper, MosaicDatasetMapper)
    out = mapper(painted)
    assert tuple(out["image"].shape) == (3, 40, 40) and (out["height"], out["width"]) == (64, 64)
    a_full = np.array([[3.2, 17.6, 9.6, 22.4], [35.2, 17.6, 41.6, 22.4], [3.2, 33.6, 9.6, 38.4],
                       [35.2, 33.6, 41.6, 38.4]])
    np.testing.assert_allclose(boxes_of(out), a_full * 20 / 64, atol=1e-4)
    assert (out["image"].numpy()[:, 20:] == 114).all() and (out["image"].numpy()[:, :, 20:] == 114).all()


@pytest.mark.parametrize("opts,message", [
    (["INPUT.SCALE_JITTER.MIN_SCALE", 0.0], r"INPUT.SCALE_JITTER.MIN_SCALE = 0.0: must be a positive number"),
    (["INPUT.SCALE_JITTER.MAX_SCALE", float("inf")], r"INPUT.SCALE_JITTER.MAX_SCALE = inf"),
    (["INPUT.SCALE_JITTER.MIN_SCALE", 2.0], r"MIN_SCALE = 2.0 is above MAX_SCALE = 1.5"),
    (["INPUT.SCALE_JITTER.SIZE", 16], r"INPUT.SCALE_JITTER.SIZE = 16: must be a whole number of pixels >= 32"),
])
def test_bad_scale_jitter_settings_fail_before_training(opts, message):
    cfg = jitter_cfg(*opts)
    with pytest.raises(ValueError, match=message):
        AnchorFreeTrainer(cfg)  # checked before the model and the datasets
    with pytest.raises(ValueError, match=message):
        build_train_augmentations(cfg)
    cfg.INPUT.SCALE_JITTER.ENABLED = False
    check_scale_jitter_config(cfg)  # not checked when off


# ------------------------------------------------------------------------------------------- HSV
def test_hsv_gain_hand_computed():
    """OpenCV's 8-bit HSV: pure green has hue 60, x 2 is 120, pure blue; saturation x 0 gives grey at
    the value (the largest channel); value x 0.5 halves a saturated colour; gains of 1 keep the image."""
    green_bgr = np.array([[[0, 255, 0], [0, 200, 0]]], np.uint8)
    assert hsv_gain(green_bgr, (2.0, 1.0, 1.0)).tolist() == [[[255, 0, 0], [200, 0, 0]]]
    green_rgb = green_bgr  # green is the middle channel in both orders; blue is first in BGR, last in RGB
    assert hsv_gain(green_rgb, (2.0, 1.0, 1.0), "RGB").tolist() == [[[0, 0, 255], [0, 0, 200]]]
    red = np.array([[[0, 0, 200]]], np.uint8)
    assert hsv_gain(red, (1.0, 1.0, 0.5)).tolist() == [[[0, 0, 100]]]
    mixed = np.array([[[30, 90, 150]]], np.uint8)
    assert hsv_gain(mixed, (1.0, 0.0, 1.0)).tolist() == [[[150, 150, 150]]]
    tile = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    assert hsv_gain(tile, (1.0, 1.0, 1.0)) is tile
    assert np.abs(hsv_gain(tile, (1.0, 1.0, 1.001)).astype(int) - tile).max() <= 4  # OpenCV's HSV round trip
    with pytest.raises(ValueError, match="image_format = 'L'"):
        hsv_gain(tile, (1, 1, 1), "L")
    with pytest.raises(ValueError, match=r"\[H, W, 3\] uint8"):
        hsv_gain(tile[:, :, :1], (1, 1, 1))


def test_random_hsv_draws_per_image_and_keeps_boxes(painted):
    cfg = jitter_cfg("INPUT.HSV.ENABLED", True, "INPUT.HSV.HUE", 0.0, "INPUT.HSV.SATURATION", 0.0,
                     "INPUT.HSV.VALUE", 0.5, enabled=False)
    augmentations = build_train_augmentations(cfg)
    assert isinstance(augmentations[-1], RandomHSV) and augmentations[-1].amplitudes == (0.0, 0.0, 0.5)
    mapper = CheckedDatasetMapper(cfg, is_train=True, augmentations=[augmentations[-1]])
    np.random.seed(0)
    outs = [mapper(painted) for _ in range(20)]
    background = [int(out["image"][0, 15, 30]) for out in outs]  # grey 50: saturation 0, only the value moves
    assert 25 <= min(background) < 40 and 60 < max(background) <= 75
    for out in outs:
        np.testing.assert_allclose(boxes_of(out), [BOX], atol=1e-6)
    off = CheckedDatasetMapper(jitter_cfg(enabled=False), is_train=True, augmentations=[])
    assert int(off(painted)["image"][0, 15, 30]) == 50


@pytest.mark.parametrize("opts,message", [
    (["INPUT.HSV.SATURATION", 1.5], r"INPUT.HSV.SATURATION = 1.5: must be a number in \[0, 1\]"),
    (["INPUT.HSV.HUE", -0.1], r"INPUT.HSV.HUE = -0.1"),
    (["INPUT.FORMAT", "L"], r"INPUT.HSV.ENABLED with INPUT.FORMAT = 'L': the HSV augmentation needs colour"),
])
def test_bad_hsv_settings_fail_before_training(opts, message):
    cfg = jitter_cfg("INPUT.HSV.ENABLED", True, *opts, enabled=False)
    with pytest.raises(ValueError, match=message):
        AnchorFreeTrainer(cfg)
    cfg.INPUT.HSV.ENABLED = False
    check_hsv_config(cfg)  # not checked when off

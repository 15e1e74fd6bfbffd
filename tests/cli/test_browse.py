"""d2af browse: the drawn ground truth is the training mapper's, and follows the augmentations.

A toy COCO dataset of four identical 64x48 grey images (value 100) with a white 4x4 marker in the
top-left corner (it shows whether an image was flipped) and one box [8, 6, 16, 12] (XYWH), i.e.
XYXY (8, 6, 24, 18). Hand-computed: a horizontal flip moves it to (64 - 24, 6, 64 - 8, 18) =
(40, 6, 56, 18); a 2x resize (INPUT.MIN_SIZE_TRAIN 96 for a 48 px high image) to (16, 12, 48, 36),
flipped (128 - 48, 12, 128 - 16, 36) = (80, 12, 112, 36).
"""
import json
import os
import uuid

import numpy as np
import pytest
from PIL import Image

from detectron2.data import transforms as T

from conftest import REPO
from d2_anchorfree.cli import browse
from d2_anchorfree.data.mapper import CheckedDatasetMapper

BOX_XYXY = (8, 6, 24, 18)
CONFIG = os.path.join(REPO, "configs", "tiny", "Base-Tiny.yaml")


def make_toy_dataset(root, n=4):
    """The dataset of the module docstring; returns (json path, image root)."""
    images = root / "images"
    images.mkdir(parents=True)
    pixels = np.full((48, 64, 3), 100, np.uint8)
    pixels[:4, :4] = 255
    coco = {"images": [], "annotations": [], "categories": [{"id": 5, "name": "dog"}]}
    for i in range(n):
        Image.fromarray(pixels).save(images / f"img{i}.png")
        coco["images"].append({"id": i + 1, "file_name": f"img{i}.png", "width": 64, "height": 48})
        coco["annotations"].append({"id": i + 1, "image_id": i + 1, "category_id": 5, "bbox": [8, 6, 16, 12],
                                    "area": 192.0, "iscrowd": 0})
    (root / "toy.json").write_text(json.dumps(coco))
    return root / "toy.json", images


def toy_opts(json_file, images, *extra):
    name = f"toy_{uuid.uuid4().hex[:8]}"
    return name, ["DATASETS.REGISTER_COCO", f"('{name},{json_file},{images}',)", *extra]


def outline_extent(drawn, grey=100, skip_rows=10):
    """(x0, y0, x1, y1) of the pixels that differ from the grey background below the marker rows."""
    diff = np.abs(drawn.astype(int) - grey).max(axis=2)
    diff[:skip_rows] = 0
    ys, xs = np.nonzero(diff > 20)
    return xs.min(), ys.min(), xs.max(), ys.max()


def test_views_follow_a_horizontal_flip(tmp_path):
    json_file, images = make_toy_dataset(tmp_path, n=1)
    record = {"file_name": str(images / "img0.png"), "height": 48, "width": 64, "image_id": 1,
              "annotations": [{"bbox": [8, 6, 16, 12], "bbox_mode": 1, "category_id": 0, "iscrowd": 0}]}
    flip = CheckedDatasetMapper(is_train=True, augmentations=[T.RandomFlip(prob=1.0, horizontal=True)],
                                image_format="BGR")
    (view,) = browse.ground_truth_views([record], flip, "BGR")
    np.testing.assert_allclose(view.boxes, [[40, 6, 56, 18]])
    assert view.classes.tolist() == [0] and view.image.shape == (48, 64, 3)
    assert view.image[:4, -4:].min() == 255 and view.image[:4, :4].max() == 100  # the marker moved right
    drawn = browse.draw_ground_truth(view, ["dog"], line_width=1.0, labels=False)
    x0, y0, x1, y1 = outline_extent(drawn, skip_rows=5)
    assert abs(x0 - 40) <= 1 and abs(x1 - 56) <= 1 and abs(y0 - 6) <= 1 and abs(y1 - 18) <= 1


def test_browse_draws_the_augmented_boxes_where_the_image_went(tmp_path, capsys):
    json_file, images = make_toy_dataset(tmp_path)
    name, opts = toy_opts(json_file, images, "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "1000",
                          "INPUT.RANDOM_FLIP", "horizontal")
    out = tmp_path / "out"
    code = browse.main(["--dataset", name, "--config-file", CONFIG, "--augment",
                        "--out", str(out), "--num", "4", "--no-labels", "--seed", "1", *opts])
    assert code == 0, capsys.readouterr().err
    assert "wrote 4 images with 4 boxes (after the training augmentations)" in capsys.readouterr().out
    flipped = []
    for i in range(4):
        drawn = np.asarray(Image.open(out / f"img{i}.png"))
        assert drawn.shape == (96, 128, 3)  # resized 2x
        flipped.append(drawn[2:6, -6:-2].min() > 200)  # the marker is top-right: the image was flipped
        assert (drawn[2:6, 2:6].min() > 200) != flipped[-1]  # ... else it is top-left
        expected = (80, 12, 112, 36) if flipped[-1] else (16, 12, 48, 36)
        assert np.abs(np.array(outline_extent(drawn)) - expected).max() <= 1, (i, flipped[-1])
    assert 0 < sum(flipped) < 4, flipped  # seed 1 flips some images and not others


def test_browse_without_augment_draws_the_stored_boxes(tmp_path, capsys):
    json_file, images = make_toy_dataset(tmp_path)
    name, opts = toy_opts(json_file, images, "INPUT.MIN_SIZE_TRAIN", "(96,)")
    out = tmp_path / "out"
    assert browse.main(["--dataset", name, "--config-file", CONFIG, "--out", str(out),
                        "--num", "2", "--no-labels", *opts]) == 0
    written = sorted(os.listdir(out))
    assert len(written) == 2 and set(written) <= {f"img{i}.png" for i in range(4)}
    drawn = np.asarray(Image.open(out / written[0]))
    assert drawn.shape == (48, 64, 3)
    assert np.abs(np.array(outline_extent(drawn, skip_rows=5)) - BOX_XYXY).max() <= 1


def test_browse_names_the_registered_datasets_for_an_unknown_one(tmp_path, capsys):
    code = browse.main(["--dataset", "nope", "--config-file", CONFIG, "--out", str(tmp_path)])
    assert code == 1
    assert (f"dataset 'nope' is not registered; {CONFIG} registers ['trees_train', 'trees_val', "
            "'trees_val_whole']") in capsys.readouterr().err


def test_browse_augment_draws_the_mosaics(tmp_path, capsys):
    """INPUT.MOSAIC "full" with SIZE 64: each drawing is a 128 x 128 canvas (the toy images keep
    their 64 px longer side), with the grey 114 where no image lies (the centre's row is in
    [32, 96], so the four images, 48 px high, never cover all 128 rows). The bottom-right image is
    placed at the centre, so its box, at most (96 + 24, 96 + 18), is always whole: at least one box
    per mosaic."""
    json_file, images = make_toy_dataset(tmp_path)
    name, opts = toy_opts(json_file, images, "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "1000",
                          "INPUT.MOSAIC.ENABLED", "True", "INPUT.MOSAIC.SIZE", "64", "INPUT.MOSAIC.OUTPUT", "full")
    out = tmp_path / "out"
    assert browse.main(["--dataset", name, "--config-file", CONFIG, "--augment", "--out", str(out),
                        "--num", "4", "--no-labels", *opts]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "(after the training augmentations, mosaics with probability 1)" in printed
    assert int(printed.split(" with ")[1].split()[0]) >= 4
    for i in range(4):
        drawn = np.asarray(Image.open(out / f"img{i}.png"))
        assert drawn.shape == (128, 128, 3)
        assert (drawn == 114).all(axis=2).any(axis=1).sum() >= 16  # grey rows of the canvas

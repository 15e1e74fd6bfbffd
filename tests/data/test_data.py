"""Data layer: tree-crown converter (VOC parsing, class mapping, tiling, region split), COCO
registration from the config, annotation validation errors, and the checked dataset mapper."""
import io
import json
import os
import re
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog

from d2_anchorfree import add_anchorfree_config
from d2_anchorfree.data import (
    CheckedDatasetMapper,
    parse_register_entry,
    register_datasets_from_config,
    validate_coco_json,
)
from d2_anchorfree.data import trees  # download + tiling of the bundled data


# ----------------------------------------------------------------------------------------------
# helpers


def voc_xml(filename, width, height, objects):
    """A Pascal VOC document; objects = [(name, xmin, ymin, xmax, ymax)]."""
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
        for n, a, b, c, d in objects
    )
    return (f"<annotation><folder>data</folder><filename>{filename}</filename>"
            f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
            f"<segmented>0</segmented>{objs}</annotation>")


def write_png(path, width, height, mode="RGB", seed=0):
    channels = {"RGB": 3, "RGBA": 4}[mode]
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    Image.fromarray(pixels, mode).save(path)
    return pixels


def overlap(a, b):
    """Positive-area intersection of two (x0, y0, w, h) windows."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


@pytest.fixture
def coco_dir(tmp_path):
    """A 3-image COCO dataset: images 64x48 (w x h); categories 3 'cat' and 7 'dog' (not
    contiguous); a.png has 2 boxes, b.png 1 crowd box + 1 box, c.png none."""
    root = tmp_path / "images"
    root.mkdir()
    for i, name in enumerate(["a.png", "b.png", "c.png"]):
        write_png(root / name, 64, 48, seed=i)
    data = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 64, "height": 48},
            {"id": 2, "file_name": "b.png", "width": 64, "height": 48},
            {"id": 5, "file_name": "c.png", "width": 64, "height": 48},
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "bbox": [4, 6, 20, 10], "area": 200, "iscrowd": 0},
            {"id": 11, "image_id": 1, "category_id": 7, "bbox": [30, 20, 34, 28], "area": 952, "iscrowd": 0},
            {"id": 12, "image_id": 2, "category_id": 7, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 1},
            {"id": 13, "image_id": 2, "category_id": 3, "bbox": [8, 8, 16, 16], "area": 256, "iscrowd": 0},
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    }
    json_file = tmp_path / "ann.json"
    json_file.write_text(json.dumps(data))
    return {"json": str(json_file), "root": str(root), "data": data, "tmp": tmp_path}


def write_json(coco_dir, data, name="bad.json"):
    path = coco_dir["tmp"] / name
    path.write_text(json.dumps(data))
    return str(path)



def data_cfg(*entries, validate=True):
    cfg = get_cfg()
    add_anchorfree_config(cfg)
    cfg.DATASETS.REGISTER_COCO = list(entries)
    cfg.DATASETS.VALIDATE_ANNOTATIONS = validate
    return cfg


# ----------------------------------------------------------------------------------------------
# trees converter


def test_parse_voc_boxes_and_names():
    voc = trees.parse_voc(voc_xml("x.png", 200, 120, [("Tree", 1, 2, 30, 40), ("Dead", 50, 60, 70, 90)]))
    assert (voc.filename, voc.width, voc.height) == ("x.png", 200, 120)
    assert voc.names == ["Tree", "Dead"]
    np.testing.assert_array_equal(voc.boxes, [[1, 2, 30, 40], [50, 60, 70, 90]])
    assert voc.boxes.dtype == np.float64
    empty = trees.parse_voc(voc_xml("e.png", 10, 10, []))
    assert empty.boxes.shape == (0, 4) and empty.names == []


def test_parse_voc_rejects_empty_box_and_missing_size():
    with pytest.raises(ValueError, match=r"\[30\.0, 2\.0, 30\.0, 40\.0\]"):
        trees.parse_voc(voc_xml("x.png", 200, 120, [("Tree", 30, 2, 30, 40)]), source="f.xml")
    with pytest.raises(ValueError, match="<size>"):
        trees.parse_voc("<annotation><filename>x</filename></annotation>")
    with pytest.raises(ValueError, match="bad coordinate"):
        trees.parse_voc(voc_xml("x.png", 200, 120, [("Tree", "a", 2, 30, 40)]))


def test_map_class_names_single_class_and_keep_names():
    per_image = [["Tree", "Tree"], ["Dead", "Alive", "Dead"]]
    cats, labels = trees.map_class_names(per_image)
    assert cats == ["tree"]
    assert [lab.tolist() for lab in labels] == [[0, 0], [0, 0, 0]]
    cats, labels = trees.map_class_names(per_image, keep_class_names=True)
    assert cats == ["Alive", "Dead", "Tree"]  # sorted; COCO ids 1, 2, 3
    assert [lab.tolist() for lab in labels] == [[2, 2], [1, 0, 1]]
    with pytest.raises(ValueError, match="Shrub"):
        trees.map_class_names([["Tree", "Shrub"]])


def test_tile_origins_hand_computed():
    # length 1035, tile 400, stride 300: n = ceil(635 / 300) + 1 = 4; origins i * 635 // 3
    assert trees.tile_origins(1035, 400, 300) == [0, 211, 423, 635]
    # length 1000: n = ceil(600 / 300) + 1 = 3 -> spacing exactly 300
    assert trees.tile_origins(1000, 400, 300) == [0, 300, 600]
    assert trees.tile_origins(400, 400, 300) == [0]
    assert trees.tile_origins(250, 400, 300) == [0]
    with pytest.raises(ValueError, match="stride=500"):
        trees.tile_origins(1000, 400, 500)


def test_clip_boxes_to_window_drops_remnants():
    window = (100, 0, 100, 100)  # x in [100, 200], y in [0, 100]
    boxes = np.array([
        [110, 10, 150, 30],  # inside -> [10, 10, 50, 30]
        [170, 10, 210, 30],  # w 40, clipped to [170, 200]: 30 * 20 = 600 / 800 = 75% -> kept [70, 10, 100, 30]
        [190, 10, 230, 30],  # clipped 10 * 20 = 200 / 800 = 25% -> dropped
        [196, 50, 203, 60],  # w 7, clipped w 4 (>= 4), 40 / 70 = 57% -> kept [96, 50, 100, 60]
        [197, 50, 202, 60],  # w 5, clipped w 3 (< 4 px) although 60% visible -> dropped
        [300, 10, 330, 30],  # outside -> dropped
        [120, 90, 140, 130],  # clipped h 10 of 40 -> 25% -> dropped
    ], dtype=np.float64)
    clipped, keep = trees.clip_boxes_to_window(boxes, window, min_visible=0.5, min_side=4)
    assert keep.tolist() == [0, 1, 3]
    np.testing.assert_array_equal(clipped, [[10, 10, 50, 30], [70, 10, 100, 30], [96, 50, 100, 60]])
    # a stricter visibility threshold drops the 57% remnant too
    _, keep = trees.clip_boxes_to_window(boxes, window, min_visible=0.6, min_side=4)
    assert keep.tolist() == [0, 1]


def test_plan_tiles_region_split_has_no_overlap():
    # 1000 x 500, tile 400, stride 300, val strip 400: train region x in [0, 600] -> x origins
    # tile_origins(600) = [0, 200]; val region x in [600, 1000] -> x = 600; y origins
    # tile_origins(500) = [0, 100].
    plan = trees.plan_tiles(1000, 500, 400, 300, 400)
    assert plan == [
        ("train", (0, 0, 400, 400)), ("train", (200, 0, 400, 400)),
        ("train", (0, 100, 400, 400)), ("train", (200, 100, 400, 400)),
        ("val", (600, 0, 400, 400)), ("val", (600, 100, 400, 400)),
    ]
    big = trees.plan_tiles(2299, 2472, 400, 300, 400)
    train = [w for s, w in big if s == "train"]
    val = [w for s, w in big if s == "val"]
    assert len(train) == 6 * 8 and len(val) == 8
    assert not any(overlap(a, b) for a in train for b in val)
    assert all(w[0] + w[2] <= 2299 - 400 for w in train) and all(w[0] >= 2299 - 400 for w in val)
    assert all(w[1] + w[3] <= 2472 for w in train + val)
    # images no larger than a tile stay whole; too narrow for two regions -> tiled, one split
    assert trees.plan_tiles(400, 300, 400, 300, 400, "val") == [("val", (0, 0, 400, 300))]
    narrow = trees.plan_tiles(700, 300, 400, 300, 400)
    assert narrow == [("train", (0, 0, 400, 300)), ("train", (300, 0, 400, 300))]
    with pytest.raises(ValueError, match="val_width=300"):
        trees.plan_tiles(1000, 500, 400, 300, 300)


def make_fake_items(tmp_path):
    """A 1000x500 RGBA image with 3 boxes and a 300x200 RGB image with 1 box, via files."""
    big_png, small_png = tmp_path / "big.png", tmp_path / "small.png"
    big_pixels = write_png(big_png, 1000, 500, mode="RGBA", seed=1)
    write_png(small_png, 300, 200, seed=2)
    big_xml = voc_xml("big.png", 1000, 500, [
        ("Tree", 20, 30, 60, 80),     # only in train tile (0, 0): bbox [20, 30, 40, 50]
        ("Dead", 560, 50, 660, 100),  # crosses the border x = 600: 40% left (dropped), 60% right
        ("Alive", 700, 420, 760, 480),  # val tile (600, 100): [100, 320, 60, 60]
    ])
    small_xml = voc_xml("small.png", 300, 200, [("Tree", 10, 10, 50, 70)])
    items = []
    for stem, png, xml in (("big", big_png, big_xml), ("small", small_png, small_xml)):
        voc = trees.parse_voc(xml, source=stem)
        image = Image.open(png)
        assert image.size == (voc.width, voc.height)
        items.append(trees.TreeImage(stem=stem, image=image.convert("RGB"), voc=voc))
    return items, big_pixels


def test_build_trees_dataset_tiles_clips_and_splits(tmp_path):
    items, big_pixels = make_fake_items(tmp_path)
    out = tmp_path / "out"
    summary = trees.build_trees_dataset(items, str(out), tile_size=400, stride=300, val_width=400)
    train = json.loads((out / "train.json").read_text())
    val = json.loads((out / "val.json").read_text())
    assert train["categories"] == val["categories"] == [{"id": 1, "name": "tree", "supercategory": "tree"}]
    assert [im["file_name"] for im in train["images"]] == [
        "big_x0000_y0000.png", "big_x0200_y0000.png", "big_x0000_y0100.png", "big_x0200_y0100.png", "small.png"]
    assert [im["file_name"] for im in val["images"]] == ["big_x0600_y0000.png", "big_x0600_y0100.png"]

    def boxes(coco):
        names = {im["id"]: im["file_name"] for im in coco["images"]}
        return sorted((names[a["image_id"]], a["bbox"], a["area"], a["category_id"], a["iscrowd"])
                      for a in coco["annotations"])

    assert boxes(train) == [
        ("big_x0000_y0000.png", [20, 30, 40, 50], 2000, 1, 0),
        ("small.png", [10, 10, 40, 60], 2400, 1, 0),
    ]
    # the border box: val tile (600, 0) keeps x [600, 660] -> [0, 50, 60, 50]; val tile (600, 100)
    # sees y [100, 100] -> nothing. The Alive box lies in tile (600, 100) only: [100, 320, 60, 60].
    assert boxes(val) == [
        ("big_x0600_y0000.png", [0, 50, 60, 50], 3000, 1, 0),
        ("big_x0600_y0100.png", [100, 320, 60, 60], 3600, 1, 0),
    ]
    assert [a["id"] for a in val["annotations"]] == [1, 2]
    assert summary["train"] == {"images": 5, "boxes": 2, "source_boxes": 2, "empty_images": 3}
    assert summary["val"] == {"images": 2, "boxes": 2, "source_boxes": 2, "empty_images": 0}
    # tiles are RGB crops of the source (alpha dropped)
    tile = Image.open(out / "images" / "big_x0600_y0100.png")
    assert tile.mode == "RGB" and tile.size == (400, 400)
    np.testing.assert_array_equal(np.asarray(tile), big_pixels[100:500, 600:1000, :3])
    # the output is a valid COCO dataset for our validator
    assert validate_coco_json(str(out / "train.json"), str(out / "images"))["annotations"] == 2
    # keep_class_names: Alive=1, Dead=2, Tree=3
    out2 = tmp_path / "out2"
    trees.build_trees_dataset(items, str(out2), keep_class_names=True)
    val2 = json.loads((out2 / "val.json").read_text())
    assert [c["name"] for c in val2["categories"]] == ["Alive", "Dead", "Tree"]
    assert sorted(a["category_id"] for a in val2["annotations"]) == [1, 2]


def test_read_wheel_images_checks_size_and_converts_rgba(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((30, 40, 4), np.uint8), "RGBA").save(buf, format="PNG")
    wheel = tmp_path / "fake.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("deepforest/data/good.png", buf.getvalue())
        z.writestr("deepforest/data/good.xml", voc_xml("good.png", 40, 30, [("Tree", 1, 1, 10, 10)]))
        z.writestr("deepforest/data/bad.png", buf.getvalue())
        z.writestr("deepforest/data/bad.xml", voc_xml("bad.png", 41, 30, []))
    (item,) = trees.read_wheel_images(str(wheel), stems=["good"])
    assert item.image.mode == "RGB" and item.image.size == (40, 30) and len(item.voc.boxes) == 1
    with pytest.raises(ValueError, match=r"40x30 pixels but its xml says 41x30"):
        trees.read_wheel_images(str(wheel), stems=["bad"])


def test_dataset_is_complete_detects_missing_files_and_changed_options(tmp_path):
    items, _ = make_fake_items(tmp_path)
    out = tmp_path / "out"
    trees.build_trees_dataset(items, str(out))
    options = {"tile_size": 400}
    assert not trees.dataset_is_complete(str(out), options)  # no manifest yet
    (out / "LICENSE").write_text("MIT")
    (out / "NOTICE").write_text("from deepforest")
    (out / "manifest.json").write_text(json.dumps({"options": options}))
    assert trees.dataset_is_complete(str(out), options)
    assert not trees.dataset_is_complete(str(out), {"tile_size": 512})
    os.remove(out / "images" / "small.png")
    assert not trees.dataset_is_complete(str(out), options)


# ----------------------------------------------------------------------------------------------
# registration from the config


def test_register_round_trip_from_config(coco_dir, names):
    name = names()
    cfg = data_cfg(f"{name},{coco_dir['json']},{coco_dir['root']}")
    assert register_datasets_from_config(cfg) == [name]
    assert register_datasets_from_config(cfg) == []  # same paths: skipped
    meta = MetadataCatalog.get(name)
    assert meta.evaluator_type == "coco"
    assert meta.json_file == os.path.abspath(coco_dir["json"])
    dicts = DatasetCatalog.get(name)
    assert meta.thing_classes == ["cat", "dog"]
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1}
    by_file = {os.path.basename(d["file_name"]): d for d in dicts}
    assert sorted(by_file) == ["a.png", "b.png", "c.png"]
    a = by_file["a.png"]
    assert (a["height"], a["width"]) == (48, 64)
    assert [(o["bbox"], o["category_id"]) for o in a["annotations"]] == [([4, 6, 20, 10], 0), ([30, 20, 34, 28], 1)]
    assert by_file["c.png"]["annotations"] == []  # an image without annotations loads fine


def test_register_from_command_line_opts(coco_dir, names):
    name = names()
    cfg = data_cfg()
    cfg.merge_from_list([
        "DATASETS.REGISTER_COCO", f"('{name},{coco_dir['json']},{coco_dir['root']}',)",
        "DATASETS.TRAIN", f"('{name}',)",
    ])
    assert register_datasets_from_config(cfg) == [name]
    assert len(DatasetCatalog.get(cfg.DATASETS.TRAIN[0])) == 3


@pytest.mark.parametrize("entry", ["just_a_name", "a,b", "a,,c", "a,b,c,d"])
def test_register_bad_entry_names_it(entry):
    with pytest.raises(ValueError, match=entry):
        register_datasets_from_config(data_cfg(entry))


def test_parse_register_entry_strips_spaces():
    assert parse_register_entry(" n , x/a.json , imgs ") == ("n", "x/a.json", "imgs")


def test_missing_paths_raise_when_loaded_not_when_registered(coco_dir, names, tmp_path):
    """A config naming datasets absent from this machine registers them (prediction and export
    need no training files); loading one names the missing path, as before."""
    missing_json, missing_root = names(), names()
    absent = str(tmp_path / "nope.json")
    assert register_datasets_from_config(data_cfg(f"{missing_json},{absent},{coco_dir['root']}")) == [missing_json]
    assert register_datasets_from_config(
        data_cfg(f"{missing_root},{coco_dir['json']},{tmp_path / 'no_images'}")) == [missing_root]
    assert MetadataCatalog.get(missing_json).json_file == absent  # metadata without reading anything
    with pytest.raises(FileNotFoundError, match=r"annotation file .*nope\.json of dataset '%s' does not exist"
                       % missing_json):
        DatasetCatalog.get(missing_json)
    with pytest.raises(FileNotFoundError, match=r"image root .*no_images of dataset '%s' is not a directory"
                       % missing_root):
        DatasetCatalog.get(missing_root)


def test_register_name_clash(coco_dir, names):
    name = names()
    register_datasets_from_config(data_cfg(f"{name},{coco_dir['json']},{coco_dir['root']}"))
    other = write_json(coco_dir, coco_dir["data"], "other.json")
    with pytest.raises(ValueError, match="already registered"):
        register_datasets_from_config(data_cfg(f"{name},{other},{coco_dir['root']}"))


# ----------------------------------------------------------------------------------------------
# annotation validation (lazy, at DatasetCatalog.get)


def bad_variant(data, kind):
    data = json.loads(json.dumps(data))
    if kind == "missing_image":
        data["images"][1]["file_name"] = "gone.png"
    elif kind == "outside":
        data["annotations"][0]["bbox"] = [50, 6, 20, 10]  # x1 = 70 > 64 + 1
    elif kind == "zero_width":
        data["annotations"][1]["bbox"] = [30, 20, 0, 28]
    elif kind == "negative_height":
        data["annotations"][1]["bbox"] = [30, 20, 5, -2]
    elif kind == "unknown_category":
        data["annotations"][3]["category_id"] = 5
    elif kind == "unknown_image":
        data["annotations"][3]["image_id"] = 99
    return data


@pytest.mark.parametrize(
    "kind, error, pattern",
    [
        ("missing_image", FileNotFoundError, r"images[/\\]gone\.png"),
        ("outside", ValueError, r"annotation id 10 of image 'a\.png' has bbox \[50, 6, 20, 10\].*x1=70.*64x48"),
        ("zero_width", ValueError, r"annotation id 11 of image 'a\.png' has bbox \[30, 20, 0, 28\]"),
        ("negative_height", ValueError, r"annotation id 11 .*\[30, 20, 5, -2\].*height -2"),
        ("unknown_category", ValueError, r"annotation id 13 .*category_id 5.*\[3, 7\]"),
        ("unknown_image", ValueError, r"annotation id 13 refers to image_id 99"),
    ],
)
def test_validation_errors_name_the_offending_value(coco_dir, names, kind, error, pattern):
    bad = write_json(coco_dir, bad_variant(coco_dir["data"], kind))
    name = names()
    # registration itself does not read the json (lazy validation) ...
    assert register_datasets_from_config(data_cfg(f"{name},{bad},{coco_dir['root']}")) == [name]
    # ... loading does
    with pytest.raises(error, match=pattern):
        DatasetCatalog.get(name)


def test_validation_tolerance_and_switch(coco_dir, names):
    data = json.loads(json.dumps(coco_dir["data"]))
    data["annotations"][0]["bbox"] = [-0.5, 0, 64.5, 48.5]  # within 1 px of the 64x48 image
    ok = write_json(coco_dir, data, "ok.json")
    assert validate_coco_json(ok, coco_dir["root"]) == {"images": 3, "annotations": 4, "categories": 2}
    data["annotations"][0]["bbox"] = [0, 0, 65.5, 48]  # 1.5 px outside
    with pytest.raises(ValueError, match="x1=65.5"):
        validate_coco_json(write_json(coco_dir, data, "out.json"), coco_dir["root"])
    # VALIDATE_ANNOTATIONS False: detectron2's loader alone, the outside box goes through
    bad = write_json(coco_dir, bad_variant(coco_dir["data"], "outside"))
    name = names()
    register_datasets_from_config(data_cfg(f"{name},{bad},{coco_dir['root']}", validate=False))
    assert len(DatasetCatalog.get(name)) == 3


# ----------------------------------------------------------------------------------------------
# mapper


def plain_mapper(is_train):
    return CheckedDatasetMapper(is_train=is_train, augmentations=[], image_format="BGR")


def test_mapper_maps_boxes_drops_crowd_and_handles_empty(coco_dir, names):
    name = names()
    register_datasets_from_config(data_cfg(f"{name},{coco_dir['json']},{coco_dir['root']}"))
    by_file = {os.path.basename(d["file_name"]): d for d in DatasetCatalog.get(name)}
    mapper = plain_mapper(True)
    a = mapper(by_file["a.png"])
    assert a["image"].shape == (3, 48, 64) and a["image"].dtype == torch.uint8
    # BGR: channel 0 is the PNG's blue channel
    rgb = np.asarray(Image.open(os.path.join(coco_dir["root"], "a.png")))
    assert torch.equal(a["image"][0], torch.from_numpy(rgb[:, :, 2].copy()))
    # XYWH [4, 6, 20, 10] -> XYXY [4, 6, 24, 16]; [30, 20, 34, 28] -> [30, 20, 64, 48]
    assert a["instances"].gt_boxes.tensor.tolist() == [[4, 6, 24, 16], [30, 20, 64, 48]]
    assert a["instances"].gt_classes.tolist() == [0, 1]
    b = mapper(by_file["b.png"])  # the iscrowd box is dropped, the other kept
    assert b["instances"].gt_boxes.tensor.tolist() == [[8, 8, 24, 24]]
    c = mapper(by_file["c.png"])  # no annotations
    assert len(c["instances"]) == 0 and c["image"].shape == (3, 48, 64)
    test = plain_mapper(False)(by_file["a.png"])
    assert "annotations" not in test and "instances" not in test


def test_mapper_from_config():
    cfg = get_cfg()
    add_anchorfree_config(cfg)
    mapper = CheckedDatasetMapper(cfg, is_train=True)
    assert isinstance(mapper, CheckedDatasetMapper) and mapper.is_train and mapper.image_format == "BGR"


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_mapper_corrupt_image_names_the_file(tmp_path, damage):
    good = tmp_path / "good.png"
    write_png(good, 64, 48)
    path = tmp_path / f"{damage}.png"
    raw = good.read_bytes()
    path.write_bytes(b"this is not an image" if damage == "garbage" else raw[: len(raw) // 2])
    record = {"file_name": str(path), "height": 48, "width": 64, "image_id": 1, "annotations": []}
    with pytest.raises(ValueError, match=re.escape(f"cannot read image {path}: ")):
        plain_mapper(True)(record)
    record["file_name"] = str(tmp_path / "missing.png")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        plain_mapper(False)(record)

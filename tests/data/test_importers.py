"""d2af import: YOLO / Pascal VOC / CVAT / LabelMe labels -> COCO json (globox), with hand-computed boxes.

Every format describes the same three images (a.png 64x48, b.png 40x30, c.png 32x32 without
objects; w x h) and the same boxes, in COCO [x, y, w, h] pixels:

    a.png: dog [8, 6, 16, 12], cat [40, 24, 24, 24] (touching the right and bottom edges)
    b.png: cat [0, 0, 10, 15] (touching the top-left corner)

written in each format's own convention (YOLO: normalized centre and size; VOC: 1-based first and
last pixel; CVAT and LabelMe: continuous corner coordinates, the LabelMe cat as a polygon).
"""
import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("globox")

from d2_anchorfree.cli import import_data  # noqa: E402
from d2_anchorfree.data import importers  # noqa: E402
from d2_anchorfree.data.importers import LabelFileError, import_dataset, save_checked_coco  # noqa: E402

SIZES = {"a.png": (64, 48), "b.png": (40, 30), "c.png": (32, 32)}
EXPECTED = {("a.png", "dog", (8.0, 6.0, 16.0, 12.0)), ("a.png", "cat", (40.0, 24.0, 24.0, 24.0)),
            ("b.png", "cat", (0.0, 0.0, 10.0, 15.0))}
YOLO = {"a.txt": "1 0.25 0.25 0.25 0.25\n0 0.8125 0.75 0.375 0.5\n", "b.txt": "0 0.125 0.25 0.25 0.5\n"}


def write_images(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name, (w, h) in SIZES.items():
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(folder / name)
    return folder


def make_yolo(root, files=YOLO):
    write_images(root / "images")
    (root / "labels").mkdir()
    for name, text in files.items():
        (root / "labels" / name).write_text(text)
    (root / "classes.txt").write_text("cat\ndog\n")
    return root / "labels"


def voc_xml(filename, size, objects):
    objs = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin>"
                   f"<xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>" for n, a, b, c, d in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size>{objs}</annotation>")


def make_voc(root, a_objects=(("dog", 9, 7, 24, 18), ("cat", 41, 25, 64, 48))):
    write_images(root / "JPEGImages")
    (root / "Annotations").mkdir()
    (root / "Annotations" / "a.xml").write_text(voc_xml("a.png", SIZES["a.png"], a_objects))
    (root / "Annotations" / "b.xml").write_text(voc_xml("b.png", SIZES["b.png"], [("cat", 1, 1, 10, 15)]))
    (root / "Annotations" / "c.xml").write_text(voc_xml("c.png", SIZES["c.png"], []))
    return root / "Annotations"


def make_cvat(root):
    write_images(root / "images")
    box = '<box label="{}" occluded="0" xtl="{}" ytl="{}" xbr="{}" ybr="{}" z_order="0"></box>'
    (root / "annotations.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?><annotations><version>1.1</version>'
        '<image id="0" name="a.png" width="64" height="48">' + box.format("dog", 8, 6, 24, 18)
        + box.format("cat", 40, 24, 64, 48)
        + '<polygon label="cat" occluded="0" points="1,1;5,1;5,5" z_order="0"></polygon></image>'
        '<image id="1" name="b.png" width="40" height="30">' + box.format("cat", 0, 0, 10, 15) + '</image>'
        '<image id="2" name="c.png" width="32" height="32"></image></annotations>')
    return root / "annotations.xml"


def labelme_json(image, size, shapes):
    return json.dumps({"version": "5.0.1", "flags": {}, "shapes": [
        {"label": label, "points": points, "group_id": None, "shape_type": kind, "flags": {}}
        for label, kind, points in shapes], "imagePath": image, "imageData": None,
        "imageWidth": size[0], "imageHeight": size[1]})


def make_labelme(root):
    images = write_images(root / "images")
    (root / "labels").mkdir()
    (root / "labels" / "a.json").write_text(labelme_json("../images/a.png", SIZES["a.png"], [
        ("dog", "rectangle", [[24, 18], [8, 6]]),
        ("cat", "polygon", [[40, 24], [64, 30], [50, 48], [45, 40]]),
        ("cat", "point", [[3, 3]])]))
    (root / "labels" / "b.json").write_text(labelme_json("../images/b.png", SIZES["b.png"],
                                                         [("cat", "rectangle", [[0, 0], [10, 15]])]))
    (root / "labels" / "c.json").write_text(labelme_json("../images/c.png", SIZES["c.png"], []))
    return root / "labels", images


def boxes_by_image(coco):
    files = {img["id"]: img["file_name"] for img in coco["images"]}
    names = {c["id"]: c["name"] for c in coco["categories"]}
    return {(files[a["image_id"]], names[a["category_id"]], tuple(a["bbox"])) for a in coco["annotations"]}


def check_coco(coco):
    assert boxes_by_image(coco) == EXPECTED
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "cat"), (2, "dog")]
    assert [(img["id"], img["file_name"], img["width"], img["height"]) for img in coco["images"]] == [
        (1, "a.png", 64, 48), (2, "b.png", 40, 30), (3, "c.png", 32, 32)]
    # ids from 1: COCOeval treats a matched annotation id 0 as "unmatched"
    assert [a["id"] for a in coco["annotations"]] == [1, 2, 3]
    assert all(a["area"] == a["bbox"][2] * a["bbox"][3] and a["iscrowd"] == 0 for a in coco["annotations"])


@pytest.mark.parametrize("fmt", importers.FORMATS)
def test_each_format_gives_the_hand_computed_coco_boxes(tmp_path, fmt):
    images = None
    if fmt == "yolo":
        labels = make_yolo(tmp_path)  # images/ next to labels/, classes.txt in the parent
    elif fmt == "voc":
        labels = make_voc(tmp_path)   # JPEGImages/ next to Annotations/
    elif fmt == "cvat":
        labels = make_cvat(tmp_path)  # images/ next to annotations.xml
    else:
        labels, images = make_labelme(tmp_path)
    dataset = import_dataset(fmt, str(labels), images=str(images) if images else None)
    check_coco(dataset.coco)
    assert os.path.samefile(dataset.image_root, tmp_path / {"voc": "JPEGImages"}.get(fmt, "images"))
    skipped = {"cvat": {"polygon": 1}, "labelme": {"point": 1}}.get(fmt, {})
    assert dict(dataset.skipped_shapes) == skipped
    # the written json passes the checks training runs (image files, boxes inside, areas, sizes)
    save_checked_coco(dataset, str(tmp_path / "out.json"), validate_images_mode="always")
    with open(tmp_path / "out.json") as f:
        check_coco(json.load(f))


def test_class_file_sets_the_category_ids_and_keeps_unused_classes(tmp_path):
    labels = make_voc(tmp_path)
    coco = import_dataset("voc", str(labels), classes=["dog", "bird", "cat"]).coco
    assert [(c["id"], c["name"]) for c in coco["categories"]] == [(1, "dog"), (2, "bird"), (3, "cat")]
    assert boxes_by_image(coco) == EXPECTED
    with pytest.raises(LabelFileError, match=r"a\.xml: label 'dog' of image 'a.png' is not one of the classes \['cat'\]"):
        import_dataset("voc", str(labels), classes=["cat"])


@pytest.mark.parametrize("line, message", [
    ("1 0.25 0.25 0.25", r"line 2: 4 fields '1 0.25 0.25 0.25'; expected 5"),
    ("2 0.25 0.25 0.25 0.25", r"line 2: class index 2 is beyond the 2 class names \(indices 0 to 1\)"),
    ("1 0.25 abc 0.25 0.25", r"line 2: cy 'abc' is not a number"),
    ("cat 0.25 0.25 0.25 0.25", r"line 2: class index 'cat' is not an integer"),
    ("1 0.25 0.25 1.5 0.25", r"line 2: w 1.5 is outside \[0, 1\]"),
])
def test_yolo_errors_name_the_file_and_the_line(tmp_path, line, message):
    labels = make_yolo(tmp_path, {"a.txt": "1 0.25 0.25 0.25 0.25\n" + line + "\n", "b.txt": ""})
    with pytest.raises(LabelFileError, match=r"labels/a\.txt, " + message) as info:
        import_dataset("yolo", str(labels))
    assert (os.path.basename(info.value.path), info.value.line) == ("a.txt", 2)


def test_yolo_label_without_image_and_missing_class_names(tmp_path):
    labels = make_yolo(tmp_path, {"a.txt": "", "zz.txt": "0 0.5 0.5 0.1 0.1\n"})
    with pytest.raises(LabelFileError, match=r"zz\.txt: no image zz\.\* .* in .*images"):
        import_dataset("yolo", str(labels))
    os.remove(tmp_path / "classes.txt")
    os.remove(labels / "zz.txt")
    with pytest.raises(ValueError, match="YOLO labels hold class indices: give --classes"):
        import_dataset("yolo", str(labels))


def test_garbled_voc_cvat_labelme_files_are_named(tmp_path):
    labels = make_voc(tmp_path / "voc")
    (labels / "b.xml").write_text("<annotation><filename>b.png</filename></annotation>")
    with pytest.raises(LabelFileError, match=r"b\.xml: not a Pascal VOC annotation"):
        import_dataset("voc", str(labels))
    cvat = make_cvat(tmp_path / "cvat")
    cvat.write_text('<annotations>\n<image id="0" name="a.png" width="64" height="48">\n<box label="x"</annotations>')
    with pytest.raises(LabelFileError, match=r"annotations\.xml, line 3: not valid xml") as info:
        import_dataset("cvat", str(cvat))
    assert info.value.line == 3
    labels, images = make_labelme(tmp_path / "labelme")
    (labels / "b.json").write_text('{"shapes": [],\n "imagePath": "b.png",\n oops}')
    with pytest.raises(LabelFileError, match=r"b\.json, line 3: not valid json"):
        import_dataset("labelme", str(labels), images=str(images))


def test_unknown_format_and_missing_image_folder(tmp_path):
    with pytest.raises(ValueError, match="unknown label format 'coco'; the known formats are: yolo, voc, cvat, labelme"):
        import_dataset("coco", str(tmp_path))
    labels = make_voc(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"image folder .*nowhere does not exist"):
        import_dataset("voc", str(labels), images=str(tmp_path / "nowhere"))


def test_box_outside_its_image_is_refused_naming_the_label_file(tmp_path):
    # xmax 70 > width 64: the data layer's check (validate_coco_json) refuses it, nothing is written
    labels = make_voc(tmp_path, a_objects=[("dog", 9, 7, 70, 18)])
    dataset = import_dataset("voc", str(labels))
    out = tmp_path / "out.json"
    with pytest.raises(ValueError, match=r"(?s)outside the 64x48 image.*label file\(s\): .*a\.xml \(image 'a.png'\)"):
        save_checked_coco(dataset, str(out))
    assert not out.exists() and not any(n.startswith(".tmp_") for n in os.listdir(tmp_path))


def test_cli_writes_the_json_and_prints_the_summary(tmp_path, capsys):
    labels = make_yolo(tmp_path)
    out = tmp_path / "train.json"
    assert import_data.main(["--format", "yolo", "--in", str(labels), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "3 images, 3 boxes\n  cat    2\n  dog    1\n1 images without boxes (c.png)" in printed
    assert f"'mine_train,{out},{tmp_path / 'images'}'" in printed
    with open(out) as f:
        check_coco(json.load(f))
    code = import_data.main(["--format", "yolo", "--in", str(labels), "--images", str(tmp_path / "no"),
                             "--out", str(out)])
    assert code == 1 and "error: image folder" in capsys.readouterr().err


def test_missing_globox_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "globox", None)
    from d2_anchorfree.cli.main import resolve

    assert resolve("import") is import_data.main  # the command module itself does not import globox
    with pytest.raises(ImportError, match=r"pip install 'd2_anchorfree\[import\]'"):
        import_dataset("voc", str(tmp_path))


def test_yolo_uses_the_image_size_after_exif_orientation(tmp_path):
    # stored 64x48 with EXIF orientation 6 (turn 90 degrees): training reads it as 48x64, so the
    # normalized YOLO box is scaled by 48 (x) and 64 (y)
    from d2_anchorfree.data.image_io import image_size, read_image

    (tmp_path / "images").mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(tmp_path / "images" / "r.jpg", exif=exif)
    assert image_size(str(tmp_path / "images" / "r.jpg")) == (48, 64)
    assert read_image(str(tmp_path / "images" / "r.jpg")).shape[:2] == (64, 48)
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "r.txt").write_text("0 0.5 0.5 0.25 0.5\n")
    coco = import_dataset("yolo", str(tmp_path / "labels"), classes=["x"]).coco
    assert coco["images"][0]["width"] == 48 and coco["images"][0]["height"] == 64
    assert coco["annotations"][0]["bbox"] == [18.0, 16.0, 12.0, 32.0]

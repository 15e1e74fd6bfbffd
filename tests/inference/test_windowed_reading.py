"""Windowed reading (d2_anchorfree.data.raster) for sliced inference, and detections in map
coordinates (d2_anchorfree.data.geo): windowed results equal in-memory sliced inference, nodata
windows are skipped, band choice and bad input give the documented errors, and box polygons land
at the map coordinates the raster's transform gives (computed by hand)."""
import json
import os

import numpy as np
import pytest
import torch

rasterio = pytest.importorskip("rasterio", reason="windowed reading needs rasterio (requirements-extra.txt)")
from affine import Affine  # noqa: E402  (rasterio's dependency)
from rasterio.transform import from_origin  # noqa: E402

from detectron2.modeling import build_model  # noqa: E402

from d2_anchorfree.checkpoint import AnchorFreeCheckpointer
from d2_anchorfree.cli import predict as predict_cli
from d2_anchorfree.data.geo import box_polygons, detections_feature_collection, require_georeference
from d2_anchorfree.data.raster import RasterWindows, needs_windowed_reading, parse_bands
from d2_anchorfree.engine import build_predictor

from conftest import REPO, load_cfg

CONFIG = os.path.join(REPO, "configs", "FCOS", "FCOS_tiny_R_18_cpu.yaml")
# 96 px windows, 32 px overlap, 2 per forward; score threshold 0: an untrained model detects.
OPTS = ["DATASETS.REGISTER_COCO", "()", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
        "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96", "MODEL.DENSE.SCORE_THRESH_TEST", "0.0",
        "TEST.DETECTIONS_PER_IMAGE", "20", "TEST.SLICE.ENABLED", "True", "TEST.SLICE.SIZE", "96",
        "TEST.SLICE.OVERLAP", "32", "TEST.SLICE.BATCH_SIZE", "2", "MODEL.DEVICE", "cpu"]
# EPSG:32612 (UTM 12N), 0.1 m pixels, top-left corner of the top-left pixel at (528000, 4978000).
TRANSFORM = from_origin(528000.0, 4978000.0, 0.1, 0.1)


def pixels(height, width, seed=0):
    """[H, W, 3] uint8 with structure (blocks) and noise, so that the model fires unevenly."""
    rng = np.random.default_rng(seed)
    blocks = np.kron(rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3)), np.ones((16, 16, 1)))
    noise = rng.integers(0, 40, (height, width, 3))
    return np.clip(blocks[:height, :width] + noise, 0, 255).astype(np.uint8)


def write_tif(path, rgb_or_bands, crs="EPSG:32612", transform=TRANSFORM, **profile):
    """A tiled, deflate-compressed GeoTIFF of [H, W, C] pixels (bands in C order)."""
    data = np.asarray(rgb_or_bands)
    h, w, c = data.shape
    kwargs = dict(driver="GTiff", width=w, height=h, count=c, dtype=data.dtype, tiled=True, blockxsize=64,
                  blockysize=64, compress="deflate")
    if crs is not None:
        kwargs.update(crs=crs, transform=transform)
    kwargs.update(profile)
    with rasterio.open(path, "w", **kwargs) as dst:
        dst.write(data.transpose(2, 0, 1))
    return str(path)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    out = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    model = build_model(load_cfg("configs/FCOS/FCOS_tiny_R_18_cpu.yaml", *OPTS))
    AnchorFreeCheckpointer(model, str(out), classes={"thing_classes": ["tree"], "category_ids": [1]}).save("m")
    return str(out / "m.pth")


@pytest.fixture(scope="module")
def predictor(weights):
    return build_predictor(load_cfg("configs/FCOS/FCOS_tiny_R_18_cpu.yaml", *OPTS, "MODEL.WEIGHTS", weights))


def fields(inst):
    return inst.pred_boxes.tensor, inst.scores, inst.pred_classes


def test_windowed_reading_equals_in_memory_sliced_inference(predictor, tmp_path):
    rgb = pixels(200, 260)  # 3 x 4 windows of 96 px
    path = write_tif(tmp_path / "ortho.tif", rgb)
    in_memory = predictor(np.ascontiguousarray(rgb[:, :, ::-1]))["instances"]  # BGR, whole image
    with RasterWindows(path) as raster:
        assert (raster.height, raster.width, raster.bands) == (200, 260, (1, 2, 3))
        windowed = predictor.predict_windows(raster)["instances"]
    assert len(in_memory) > 0 and windowed.image_size == (200, 260)
    for a, b in zip(fields(in_memory), fields(windowed)):
        assert torch.equal(a, b)


def test_windows_without_valid_pixels_are_skipped(predictor, tmp_path):
    """Nodata 0 over the left 96 columns of a 96 x 192 raster: its windows are x 0-96, 48-144,
    96-192 (n = ceil((192 - 96) / (96 - 32)) + 1 = 3, origins i * 96 // 2); the first has no
    valid pixel and is neither read nor run."""
    rgb = pixels(96, 192)
    rgb[:, :96] = 0
    rgb[:, 96:] = np.maximum(rgb[:, 96:], 1)  # no accidental nodata on the right
    path = write_tif(tmp_path / "half.tif", rgb, nodata=0)
    read = []
    with RasterWindows(path) as raster:
        assert not raster.all_valid
        original = raster.read
        raster.read = lambda window: read.append(tuple(window)) or original(window)
        inst = predictor.predict_windows(raster)["instances"]
    assert read == [(48, 0, 144, 96), (96, 0, 192, 96)]
    assert len(inst) > 0 and bool((inst.pred_boxes.tensor[:, 2] > 48).all())


def test_all_nodata_raster_gives_no_detection(predictor, tmp_path):
    path = write_tif(tmp_path / "empty.tif", np.zeros((64, 64, 3), np.uint8), nodata=0)
    with RasterWindows(path) as raster:
        inst = predictor.predict_windows(raster)["instances"]
    assert len(inst) == 0 and inst.image_size == (64, 64)


def test_band_choice_and_refusals(tmp_path):
    five = np.stack([np.full((8, 10), 10 * (b + 1), np.uint8) for b in range(5)], axis=2)  # band b = 10 b
    path = write_tif(tmp_path / "five.tif", five)
    with pytest.raises(ValueError, match=r"five\.tif has 5 band\(s\) .* choose the bands .* --bands"):
        RasterWindows(path)
    with RasterWindows(path, bands=(4, 3, 2)) as raster:
        assert raster.read((0, 0, 10, 8))[0, 0].tolist() == [40, 30, 20]
    with pytest.raises(ValueError, match=r"band 6 is out of range: the raster has 5 band\(s\), numbered 1 to 5"):
        RasterWindows(path, bands=(6, 2, 1))
    gray = write_tif(tmp_path / "gray.tif", five[:, :, :1])
    with pytest.raises(ValueError, match=r"gray\.tif has 1 band\(s\)"):
        RasterWindows(gray)
    with RasterWindows(gray, bands=(1, 1, 1)) as raster:
        assert raster.read((2, 3, 4, 5)).shape == (2, 2, 3)
    deep = write_tif(tmp_path / "deep.tif", np.full((8, 10, 3), 4000, np.uint16))
    with pytest.raises(ValueError, match=r"deep\.tif: bands \[1, 2, 3\] are \['uint16'\], more than 8 bits"):
        RasterWindows(deep)
    with pytest.raises(ValueError, match=r"expected three band numbers"):
        parse_bands("1,2")
    assert parse_bands("4, 3,2") == (4, 3, 2) and parse_bands(None) is None


def test_colour_interpretation_picks_rgb_and_alpha_masks(tmp_path):
    """A B,G,R,alpha raster tagged so: read as R,G,B by the tags; alpha 0 is not valid."""
    from rasterio.enums import ColorInterp

    bgra = np.zeros((8, 8, 4), np.uint8)
    bgra[..., 0], bgra[..., 1], bgra[..., 2], bgra[..., 3] = 3, 2, 1, 255
    bgra[:, :4, 3] = 0
    path = write_tif(tmp_path / "bgra.tif", bgra)
    with rasterio.open(path, "r+") as ds:
        ds.colorinterp = [ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.alpha]
    with RasterWindows(path) as raster:
        assert raster.bands == (3, 2, 1)
        assert raster.read((0, 0, 8, 8))[0, 0].tolist() == [1, 2, 3]
        assert not raster.all_valid
        assert raster.valid((0, 0, 8, 8))[0].tolist() == [False] * 4 + [True] * 4


def test_window_outside_the_image_and_overview_level_are_refused(tmp_path):
    path = write_tif(tmp_path / "small.tif", pixels(50, 60))
    with RasterWindows(path) as raster:
        with pytest.raises(ValueError, match=r"window \(x0=0, y0=0, x1=96, y1=96\) .* not inside the 60 x 50 image"):
            raster.read((0, 0, 96, 96))
    with pytest.raises(ValueError, match=r"overview level 0 of .*small\.tif: it has 0 overview"):
        RasterWindows(path, overview_level=0)


def test_big_jpeg_is_read_window_by_window(tmp_path, monkeypatch):
    """An image above PIL's size limit (lowered here) goes to the windowed reader, a small one
    and GeoTIFFs as their extension says."""
    from PIL import Image

    Image.fromarray(pixels(64, 80)).save(tmp_path / "a.jpg")
    assert not needs_windowed_reading(str(tmp_path / "a.jpg"))
    assert needs_windowed_reading(str(tmp_path / "x.tif"))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 64 * 80 // 3)  # PIL refuses above 2x this
    assert needs_windowed_reading(str(tmp_path / "a.jpg"))
    with RasterWindows(str(tmp_path / "a.jpg")) as raster:
        assert (raster.height, raster.width, raster.georeferenced) == (64, 80, False)


# ---------------------------------------------------------------------------------------- map outputs


def test_box_polygons_at_hand_computed_map_coordinates():
    """Box x 10-30, y 20-50 px; 0.1 m pixels from (528000, 4978000), north up:
    x = 528000 + 0.1 col, y = 4978000 - 0.1 row. Counter-clockwise from the top-left corner."""
    ring = box_polygons(np.array([[10.0, 20.0, 30.0, 50.0]]), TRANSFORM)[0]
    expected = [(528001.0, 4977998.0), (528001.0, 4977995.0), (528003.0, 4977995.0), (528003.0, 4977998.0),
                (528001.0, 4977998.0)]
    assert np.allclose(ring, expected, rtol=0, atol=1e-6)
    # a rotated (90 degrees) transform: x = 100 + row, y = 200 + col; still closed and counter-clockwise
    rot = Affine(0.0, 1.0, 100.0, 1.0, 0.0, 200.0)
    ring = box_polygons(np.array([[1.0, 2.0, 3.0, 6.0]]), rot)[0]
    assert {tuple(p) for p in ring.tolist()} == {(102.0, 201.0), (102.0, 203.0), (106.0, 203.0), (106.0, 201.0)}
    area2 = sum(ring[i, 0] * ring[i + 1, 1] - ring[i + 1, 0] * ring[i, 1] for i in range(4))
    assert area2 > 0 and tuple(ring[0]) == tuple(ring[-1])


def test_feature_collection_names_crs_class_and_score():
    from rasterio.crs import CRS

    fc = detections_feature_collection(np.array([[10.0, 20.0, 30.0, 50.0]]), [0.75], [0], ["tree"], [1],
                                       CRS.from_epsg(32612), TRANSFORM, image="ortho.tif")
    assert fc["crs"] == {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32612"}}
    (feat,) = fc["features"]
    assert feat["geometry"]["type"] == "Polygon" and feat["geometry"]["coordinates"][0][0] == [528001.0, 4977998.0]
    assert feat["properties"] == {"score": 0.75, "category_id": 1, "class_name": "tree", "image": "ortho.tif",
                                  "bbox_px": [10.0, 20.0, 20.0, 30.0]}


def test_georeference_is_required_with_a_reason():
    with pytest.raises(ValueError, match=r"plain\.png has no CRS: detections cannot be written in map coordinates"):
        require_georeference("plain.png", None, Affine.identity())


def test_predict_writes_geojson_in_the_rasters_crs(weights, tmp_path):
    """tools/predict.py --slice on a GeoTIFF: results.json in pixels, <name>.geojson in EPSG:32612
    whose polygons are the pixel boxes mapped by the transform; a plain PNG gets no GeoJSON, and
    with --geojson it is skipped naming why (exit code 1)."""
    src = tmp_path / "in"
    src.mkdir()
    write_tif(src / "ortho.tif", pixels(100, 120))
    from PIL import Image

    Image.fromarray(pixels(60, 70, seed=1)).save(src / "plain.png")
    out = tmp_path / "out"
    args = ["--config-file", CONFIG, "--input", str(src), "--output", str(out), "--slice", *OPTS,
            "MODEL.WEIGHTS", weights]
    assert predict_cli.main(args) == 0
    results = [r for r in json.load(open(out / "results.json")) if r["file_name"] == "ortho.tif"]
    fc = json.load(open(out / "ortho.tif.geojson"))
    assert not (out / "plain.png.geojson").exists() and (out / "ortho.tif.jpg").is_file()
    assert fc["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32612"
    assert len(fc["features"]) == len(results) > 0
    for r, feat in zip(results, fc["features"]):
        x, y, w, h = r["bbox"]
        xs = [p[0] for p in feat["geometry"]["coordinates"][0]]
        ys = [p[1] for p in feat["geometry"]["coordinates"][0]]
        assert min(xs) == pytest.approx(528000 + 0.1 * x) and max(xs) == pytest.approx(528000 + 0.1 * (x + w))
        assert max(ys) == pytest.approx(4978000 - 0.1 * y) and min(ys) == pytest.approx(4978000 - 0.1 * (y + h))
        assert feat["properties"]["score"] == pytest.approx(r["score"]) and feat["properties"]["class_name"] == "tree"
    plain_only = ["--config-file", CONFIG, "--input", str(src / "plain.png"), "--output", str(out), "--geojson",
                  *OPTS, "MODEL.WEIGHTS", weights]
    assert predict_cli.main(plain_only) == 1


def test_crs_less_tif_asked_for_geojson_is_skipped_naming_why(weights, tmp_path, capsys):
    path = write_tif(tmp_path / "nocrs.tif", pixels(40, 40), crs=None)
    out = tmp_path / "out"
    assert predict_cli.main(["--config-file", CONFIG, "--input", path, "--output", str(out), "--slice", "--geojson",
                             *OPTS, "MODEL.WEIGHTS", weights]) == 1
    assert "nocrs.tif has no CRS: detections cannot be written in map coordinates" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["gpkg", "shp"])
def test_geopackage_and_shapefile_hold_the_same_polygons(fmt, tmp_path):
    fiona = pytest.importorskip("fiona")
    from rasterio.crs import CRS

    from d2_anchorfree.data.geo import VECTOR_DRIVERS, write_vector

    fc = detections_feature_collection(np.array([[10.0, 20.0, 30.0, 50.0], [0.0, 0.0, 5.0, 5.0]]), [0.75, 0.5],
                                       [0, 0], ["tree"], [1], CRS.from_epsg(32612), TRANSFORM, image="o.tif")
    path = str(tmp_path / ("det" + VECTOR_DRIVERS[fmt][1]))
    assert write_vector(path, fc, CRS.from_epsg(32612), fmt) == 2
    with fiona.open(path) as src:
        assert src.crs.to_epsg() == 32612
        feats = list(src)
    ring = [tuple(p) for p in feats[0].geometry.coordinates[0]]
    assert {p for p in ring} == {(528001.0, 4977998.0), (528001.0, 4977995.0), (528003.0, 4977995.0),
                                 (528003.0, 4977998.0)}
    assert (feats[0].properties["score"], feats[0].properties["class_name"]) == (0.75, "tree")
    assert (feats[1].properties["w"], feats[1].properties["category"]) == (5.0, 1)


@pytest.mark.parametrize("flags, message", [
    (["--bands", "1,2,3"], "--bands and --overview-level apply to rasters read window by window: add --slice"),
    (["--slice", "--overview-level", "-1"], "--overview-level must be >= 0"),
    (["--slice", "--draw-max-size", "0"], "--draw-max-size must be >= 1 pixel, got 0"),
])
def test_raster_flags_are_checked_before_anything_runs(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        predict_cli.main(["--config-file", CONFIG, "--input", "x.tif", "--output", str(tmp_path), *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_gdal_block_cache_is_bounded_while_a_raster_is_open(tmp_path):
    """GDAL's default cache (5% of the machine's memory) would set the peak memory of a long
    windowed read; RasterWindows sets GDAL_CACHEMAX (bytes) while the file is open."""
    from rasterio.env import getenv

    path = write_tif(tmp_path / "c.tif", pixels(32, 32))
    with RasterWindows(path, cache_mb=7):
        assert getenv()["GDAL_CACHEMAX"] == 7 * 2**20
    with pytest.raises(ValueError, match="cache_mb must be >= 1 MiB, got 0"):
        RasterWindows(path, cache_mb=0)

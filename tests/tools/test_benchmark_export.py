"""benchmarks/export.py (d2af benchmark export): a tiny run (tiny FCOS, 128x128, one repetition, no warm-up) goes
through export, every backend (OpenVINO and the INT8 graphs, NNCF's included), the backbone-only parts and the onnxruntime profile, and
writes a JSON with one row per backend and part, positive times and the environment. No
timing is checked."""
import json

import numpy as np
import pytest


# exports and times a model on three backends, OpenVINO among them in this process
pytestmark = [pytest.mark.slow, pytest.mark.openvino]

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

from benchmarks import export as bench  # noqa: E402


def test_tiled_image_repeats_the_tile(tmp_path):
    cv2 = pytest.importorskip("cv2")
    tile = np.arange(3 * 2 * 3, dtype=np.uint8).reshape(3, 2, 3)
    cv2.imwrite(str(tmp_path / "t.png"), tile)
    image = bench.make_image(str(tmp_path / "t.png"), 5, 7)
    assert image.shape == (5, 7, 3) and image.dtype == np.uint8
    assert (image == np.tile(tile, (2, 4, 1))[:5, :7]).all()
    assert bench.make_image("", 4, 6).shape == (4, 6, 3)


def test_tiny_run_writes_rows_and_environment(tmp_path, capsys):
    out = tmp_path / "export_speed.json"
    result = bench.main(["--models", "tiny", "--sizes", "128x128", "--runs", "1", "--warmup", "0",
                         "--threads", "1", "--parts", "--profile", "--profile-runs", "1", "--int8", "2", "--openvino", "--nncf",
                         "--workdir", str(tmp_path / "files"), "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    rows = {(r["part"], r["backend"]): r for r in saved["rows"]}
    # the INT8 graphs are timed whole only
    assert set(rows) == {(p, b) for p in ("whole", "backbone") for b in bench.BACKENDS
                         if not (p == "backbone" and b.endswith("-int8"))}
    for r in rows.values():
        assert "error" not in r, r
        assert r["model"] == "tiny" and r["size"] == "128x128"
        assert len(r["seconds"]) == 1 and r["seconds"][0] > 0 and r["ms"]["median"] > 0
        assert r["eager_over_backend"] > 0
    counts = {rows["whole", b]["detections"] for b in bench.BACKENDS if not b.endswith("-int8")}
    assert len(counts) == 1 and min(counts) >= 0  # every float backend returns the same number of boxes
    env = saved["environment"]
    assert env["ort_intra_op_num_threads"] == 1 and env["ort_inter_op_num_threads"] == 1
    assert env["ort_graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert env["torch"] and env["onnxruntime"] and env["cpu"] and "--runs 1" in env["command"]
    assert env["openvino"] and env["openvino_inference_num_threads"] == 1
    profile = saved["profile"]["tiny 128x128"]
    assert profile["onnxruntime"]["total_ms"] > 0 and any(op == "Conv" for op, _, _ in profile["onnxruntime"]["by_op"])
    assert profile["eager"]["total_ms"] > 0 and any("conv" in op for op, _, _ in profile["eager"]["by_op"])
    printed = capsys.readouterr().out
    assert "| tiny | 128x128 | whole | onnxruntime |" in printed


def test_realtime_entries_with_and_without_the_bottom_up_path():
    pytest.importorskip("timm")
    from d2_anchorfree.modeling.backbone import PathAggregationFPN

    with_path, _ = bench.build_detector("rt-gfl", "")
    plain, _ = bench.build_detector("rt-gfl-fpn", "")
    assert isinstance(with_path.backbone, PathAggregationFPN)
    assert not isinstance(plain.backbone, PathAggregationFPN)
    # the same head and FPN: only the path's parameters differ (P6/P7 come from the path's N5)
    extra = set(with_path.state_dict()) - set(plain.state_dict())
    missing = set(plain.state_dict()) - set(with_path.state_dict())
    assert extra and all(k.startswith("backbone.path_") for k in extra)
    assert all(k.startswith("backbone.top_block.") for k in missing)


def test_realtime_entry_with_score_voting_takes_the_configs_weights():
    pytest.importorskip("timm")
    plain, _ = bench.build_detector("rt-gfl", "")
    voting, _ = bench.build_detector("rt-gfl+vote", "")
    assert voting.test_score_voting_sigma == 0.1 and plain.test_score_voting_sigma is None
    assert bench.model_weights("rt-gfl+vote", "", ["rt-gfl=a.pth"]) == "a.pth"
    assert bench.model_weights("rt-gfl+vote", "", ["rt-gfl=a.pth", "rt-gfl+vote=b.pth"]) == "b.pth"


def test_realtime_entry_with_score_peaks_takes_the_configs_weights():
    pytest.importorskip("timm")
    plain, _ = bench.build_detector("rt-gfl", "")
    peaks, _ = bench.build_detector("rt-gfl+peaks", "")
    assert (peaks.test_peak_kernel, peaks.test_nms_thresh) == (3, None) and plain.test_peak_kernel is None
    assert set(peaks.state_dict()) == set(plain.state_dict())
    assert bench.model_weights("rt-gfl+peaks", "", ["rt-gfl=a.pth"]) == "a.pth"

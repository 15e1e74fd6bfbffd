"""OpenVINO as the second runtime of the exported ONNX files (``predict_onnx.load_model(...,
runtime="openvino")``, ``d2af predict-onnx --runtime openvino``): the same detections as
onnxruntime for the float32 graphs of every detector, at input sizes that are and are not
multiples of the backbone's size divisibility (32), and INT8 QDQ graphs (``d2af quantize``) that
OpenVINO runs, with the same quantization as onnxruntime (checked on the FPN features).

Weights: the briefly trained, cached weights of ``test_export.py`` (nothing trained here when
its cache is warm). The padding case: before the export computed the padded size with a float
ceil (``export.graph.padded_to_divisibility``), OpenVINO padded 384 to 416 and 416 to 448 (its CPU
plugin rounds the int64 division of detectron2's ``(H + 31) // 32 * 32``) and at 416x400 failed
with a shape mismatch in the FPN, so these checks fail on the old graph.
"""
import os

import numpy as np
import pytest
import torch

from d2_anchorfree.export import export_model
from d2_anchorfree.export.verify import match_detections

from test_export import _model, tiles  # noqa: F401  (tiles: the fixture, used by name)

pytest.importorskip("onnxruntime", reason="optional export dependency (requirements-extra.txt)")
pytest.importorskip("openvino", reason="optional openvino dependency (requirements-extra.txt)")
pytestmark = pytest.mark.openvino  # run in their own pytest process by make test (pytest.ini)

from d2_anchorfree.runtime.predict_onnx import load_model  # noqa: E402

# float32 OpenVINO vs onnxruntime: measured at most 2e-4 px and 1.3e-6 in score (these detectors, sizes and
# tiles); the export check's tolerances (0.01 px, 1e-4) apply unchanged
# (all but VFNet and TOOD: their deformable convolutions are not in OpenVINO's ONNX reader)
OPENVINO_DETECTORS = ["FCOS", "ATSS", "GFL", "DeFCN", "GFL+POTO+3DMF+Aux", "RT-GFL", "RT-GFL+peaks"]
# Sizes (H, W): a multiple of 32, neither side one, one side one (each padded differently)
SIZES = [(384, 384), (333, 271), (416, 400)]


def _crop_or_tile(image: np.ndarray, height: int, width: int) -> np.ndarray:
    reps = (-(-height // image.shape[0]), -(-width // image.shape[1]), 1)
    return np.ascontiguousarray(np.tile(image, reps)[:height, :width])


def _as_tuple(out):
    return out["boxes"], out["scores"], out["classes"]


@pytest.mark.slow  # trained weights (test_export._model), an export and two runtimes per detector
@pytest.mark.parametrize("name", OPENVINO_DETECTORS)
def test_openvino_equals_onnxruntime_at_padded_sizes(name, tiles, tmp_path):  # noqa: F811
    cfg, model = _model(name, "MODEL.DENSE.SCORE_THRESH_TEST", 0.001)
    sample, image, _ = tiles
    path = export_model(cfg, model, "onnx", str(tmp_path), torch.from_numpy(sample))
    ort, meta = load_model(path, runtime="onnxruntime")
    ov, ov_meta = load_model(path, runtime="openvino")
    assert ov_meta == meta  # the metadata_props read through OpenVINO's rt_info
    for size in SIZES:
        x = _crop_or_tile(image, *size)
        ref, got = _as_tuple(ort(x)), _as_tuple(ov(x))
        assert len(ref[1]) >= 20, f"{name} at {size}: only {len(ref[1])} detections; the check would be weak"
        assert got[0].dtype == np.float32 and got[1].dtype == np.float32 and got[2].dtype == np.int64
        report = match_detections(ref, got)
        assert report.ok, f"{name} at {size}: {report.summary()}"


@pytest.fixture(scope="module")
def int8_fpn(tmp_path_factory):
    """The trained FCOS's backbone + FPN alone (``benchmarks.export.BackboneGraph``: normalized,
    padded float input [1, 3, H, W] -> P3..P7) exported to ONNX and quantized as ``d2af
    quantize`` does (``quantize_graph``), calibrated on 4 val tiles; 3 other tiles to compare on."""
    import json
    import warnings

    import cv2

    from benchmarks.export import BackboneGraph, backbone_input
    from conftest import trees_dir
    from d2_anchorfree.runtime.quantize_onnx import quantize_graph

    folder = tmp_path_factory.mktemp("openvino_int8")
    trees = trees_dir()
    names = [im["file_name"] for im in json.load(open(os.path.join(trees, "val.json")))["images"]][:7]
    _, model = _model("FCOS")
    graph = BackboneGraph(model).eval()
    inputs = [backbone_input(model, cv2.imread(os.path.join(trees, "images", n))).numpy() for n in names]
    outputs = [f"p{i}" for i in range(len(graph.names))]
    fp32, int8 = str(folder / "fpn.onnx"), str(folder / "fpn_int8.onnx")
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the library size checks of the whole graph's export
        torch.onnx.export(graph, (torch.from_numpy(inputs[0]),), fp32, dynamo=False, opset_version=19,
                          input_names=["x"], output_names=outputs, dynamic_axes={"x": {2: "h", 3: "w"}})
    quantize_graph(fp32, int8, inputs[:4], input_name="x")
    return fp32, int8, inputs[4:]


@pytest.mark.slow  # trained weights, an export and a calibration
def test_openvino_reproduces_onnxruntime_int8_features(int8_fpn):
    """OpenVINO reads the QDQ graph natively and runs its own INT8 kernels, which round
    differently from onnxruntime's, so the check is statistical: on every FPN level, OpenVINO
    INT8 is closer to onnxruntime INT8 than onnxruntime INT8 is to float32 (OpenVINO applies the
    same quantization, error included, rather than computing in float or with other scales).
    Measured (20-iteration FCOS, 4 calibration tiles, AMD EPYC AVX2): |ov8 - ort8| / |ort8 - fp32|
    0.16-0.81 per level (RMS over the level), about 0.2 on P6, where INT8 deviates by 0.7 std.
    Whole-graph detections of a useful model (the 300-iteration tiny FCOS): docs/deployment.md."""
    import onnxruntime
    import openvino

    fp32, int8, inputs = int8_fpn
    ort_fp32 = onnxruntime.InferenceSession(fp32, providers=["CPUExecutionProvider"])
    ort_int8 = onnxruntime.InferenceSession(int8, providers=["CPUExecutionProvider"])
    ov_int8 = openvino.Core().compile_model(int8, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    rms = lambda a, b: float(np.sqrt(np.mean((a.astype(np.float64) - b) ** 2)))  # noqa: E731
    for x in inputs:
        ref, quantized = ort_fp32.run(None, {"x": x}), ort_int8.run(None, {"x": x})
        got = ov_int8({"x": x})
        for level, (f, q, o) in enumerate(zip(ref, quantized, (got[out] for out in ov_int8.outputs))):
            int8_error, runtime_gap = rms(q, f), rms(o, q)
            assert int8_error > 0.05 * f.std(), f"P{level + 3}: INT8 equals float32; nothing quantized?"
            assert runtime_gap < int8_error, (f"P{level + 3}: OpenVINO INT8 differs from onnxruntime INT8 by "
                                              f"{runtime_gap:.3g} RMS, more than INT8 from float32 ({int8_error:.3g})")


@pytest.mark.slow  # trained weights, an export and a calibration
def test_openvino_runs_the_int8_detector_graph(tiles, tmp_path):  # noqa: F811
    """The whole INT8 detector (``d2af quantize``'s file, metadata included) runs in OpenVINO
    through the runtime's session: detections of the right types and a top score near
    onnxruntime INT8's (the 20-iteration model's detections themselves are too close in score
    to compare one by one; see docs/deployment.md for the trained model's)."""
    from d2_anchorfree.runtime.quantize_onnx import quantize

    cfg, model = _model("FCOS", "MODEL.DENSE.SCORE_THRESH_TEST", 0.001)
    sample, image, crop = tiles
    path = export_model(cfg, model, "onnx", str(tmp_path), torch.from_numpy(sample))
    int8 = str(tmp_path / "model_int8.onnx")
    quantize(path, int8, [sample, image, crop])
    ort, meta = load_model(int8, runtime="onnxruntime")
    ov, ov_meta = load_model(int8, runtime="openvino")
    assert ov_meta == meta and "quantization" in meta
    x = _crop_or_tile(image, 416, 400)
    ref, got = _as_tuple(ort(x)), _as_tuple(ov(x))
    assert len(got[1]) == len(ref[1]) >= 20, (len(ref[1]), len(got[1]))
    assert got[0].dtype == np.float32 and got[1].dtype == np.float32 and got[2].dtype == np.int64
    assert abs(float(ref[1][0]) - float(got[1][0])) < 0.05, (ref[1][:3], got[1][:3])


@pytest.mark.slow  # an export of VFNet (random weights)
def test_deformable_convolutions_are_refused_by_name_in_openvino(tmp_path):
    from detectron2.modeling import build_model

    from conftest import load_cfg

    cfg = load_cfg("configs/VFNet/VFNet_tiny_R_18_cpu.yaml")
    path = export_model(cfg, build_model(cfg).eval(), "onnx", str(tmp_path), torch.zeros(64, 64, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"model.onnx has deformable convolutions \(ONNX DeformConv.*--runtime onnxruntime"):
        load_model(path, runtime="openvino")


def test_unknown_or_missing_runtime_is_named(tmp_path, monkeypatch):
    import sys

    with pytest.raises(ValueError, match=r"--runtime must be one of \['onnxruntime', 'openvino'\], got 'tensorrt'"):
        load_model(str(tmp_path / "m.onnx"), runtime="tensorrt")
    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"pip install 'd2_anchorfree\[openvino\]'"):
        load_model(str(tmp_path / "m.onnx"), runtime="openvino")


def test_openvino_session_reads_the_metadata_and_refuses_a_file_without_it(tmp_path):
    """On a hand-made graph (no export): the metadata_props come through OpenVINO's rt_info, and
    a file without d2af_metadata is refused as with onnxruntime."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["boxes"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.UINT8, ["h", "w", 3])],
                              [helper.make_tensor_value_info("boxes", TensorProto.UINT8, ["h", "w", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    onnx.save(model, str(tmp_path / "plain.onnx"))
    with pytest.raises(ValueError, match="has no d2af_metadata"):
        load_model(str(tmp_path / "plain.onnx"), runtime="openvino")
    model.metadata_props.add(key="d2af_metadata", value='{"min_size_test": 7, "class_names": ["tree"]}')
    onnx.save(model, str(tmp_path / "meta.onnx"))
    x = np.arange(2 * 5 * 3, dtype=np.uint8).reshape(2, 5, 3)
    for runtime in ("onnxruntime", "openvino"):
        session, meta = load_model(str(tmp_path / "meta.onnx"), threads=1, runtime=runtime)
        assert meta == {"min_size_test": 7, "class_names": ["tree"]}
        np.testing.assert_array_equal(session(x)["boxes"], x)

"""OpenVINO's NNCF as the second INT8 quantizer of ``d2af quantize`` (``--quantizer nncf``,
``quantize_onnx.quantize_nncf``): the ONNX node names of the float32 part map to NNCF's ignored
scope (a hand-made graph), the IR of a trained tiny FCOS keeps its output convolutions float32
and quantizes every other one, runs through ``load_model(..., runtime="openvino")`` with the
metadata, finds the float32 detections, and the command compares COCO AP with OpenVINO.

Weights: the briefly trained (20 iterations), cached FCOS of ``test_export.py``. Its scores are
nearly tied (about 0.35) and its boxes move with any rounding, so the detections are compared at
IoU > 0.5, not 0.9: measured 65-75% of the float32 top 20 per tile found by NNCF INT8 (onnxruntime
INT8: 20-45%). The trained 300-iteration tiny FCOS: 95-100% at IoU > 0.9 (docs/deployment.md).
"""
import json
import os

import numpy as np
import pytest
import torch

from d2_anchorfree.export import export_model

from test_export import _model  # noqa: F401

onnx = pytest.importorskip("onnx", reason="optional export dependency (requirements-extra.txt)")
pytest.importorskip("openvino", reason="optional openvino dependency (requirements-extra.txt)")
pytest.importorskip("nncf", reason="optional openvino dependency (requirements-extra.txt)")
pytestmark = pytest.mark.openvino  # run in their own pytest process by make test (pytest.ini)

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from d2_anchorfree.runtime import quantize_onnx  # noqa: E402
from d2_anchorfree.runtime.predict_onnx import load_model, predict, read_bgr  # noqa: E402
from d2_anchorfree.runtime.quantize_onnx import (calibration_images, is_quantized_conv, nncf_ignored_names,  # noqa: E402
                                                 openvino_conv_name, output_convs, quantize_nncf)


def test_ignored_scope_leaves_only_the_feature_ops_to_nncf(tmp_path):
    """x -> A (bias) -> relu -> B (bias) -> sigmoid -> "scores";  relu -> C (no bias) -> "boxes":
    A and the relu are the feature part (in OpenVINO: A/WithoutBiases + A + relu), B and C are
    output convolutions, the sigmoid comes after them."""
    import openvino

    w = numpy_helper.from_array(np.ones((2, 2, 3, 3), np.float32), "w")
    bias = numpy_helper.from_array(np.ones(2, np.float32), "b")
    conv = lambda name, x, out, *b: helper.make_node("Conv", [x, "w", *b], [out], name=name, pads=[1, 1, 1, 1])  # noqa: E731
    nodes = [conv("A", "x", "a", "b"), helper.make_node("Relu", ["a"], ["r"], name="relu"),
             conv("B", "r", "bb", "b"), helper.make_node("Sigmoid", ["bb"], ["scores"], name="sig"),
             conv("C", "r", "boxes")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("scores", "boxes")],
                              initializer=[w, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    onnx.save(model, str(tmp_path / "g.onnx"))
    ov_model = openvino.Core().read_model(str(tmp_path / "g.onnx"))
    ops = {op.get_friendly_name(): op.get_type_name() for op in ov_model.get_ordered_ops()}
    names = set(ops)
    ignored = set(nncf_ignored_names(model, ov_model))
    # everything but the feature ops (and constants, parameters, results: nothing to quantize),
    # B's bias Add and the shape ops of the bias broadcast included; OpenVINO names an op that
    # writes a graph output after that output (C -> "boxes", the sigmoid -> "scores")
    assert {"A/WithoutBiases", "A", "relu"} <= names
    assert ignored == {n for n, kind in ops.items() if kind not in ("Constant", "Parameter", "Result")} - {
        "A/WithoutBiases", "A", "relu"}
    assert {"B/WithoutBiases", "B", "boxes", "scores"} <= ignored
    nodes = {node.name: node for node in model.graph.node}
    assert [openvino_conv_name(nodes[n], names) for n in output_convs(model)] == ["B/WithoutBiases", "boxes"]


@pytest.fixture(scope="module")
def nncf_int8(tmp_path_factory):
    """The trained FCOS (score threshold 0.001) exported, and its NNCF INT8 IR calibrated on the
    first 8 val tiles; the other 4 tiles to compare on."""
    from conftest import trees_dir

    folder = tmp_path_factory.mktemp("nncf")
    trees = trees_dir()
    val = json.load(open(os.path.join(trees, "val.json")))
    files = [os.path.join(trees, "images", im["file_name"]) for im in val["images"]]
    cfg, model = _model("FCOS", "MODEL.DENSE.SCORE_THRESH_TEST", 0.001)
    path = export_model(cfg, model, "onnx", str(folder / "fp32"), torch.from_numpy(read_bgr(files[0])))
    _, meta = load_model(path, runtime="openvino")
    out = str(folder / "model_int8.xml")
    entry = quantize_nncf(path, out, calibration_images(files[:8], meta, 8))
    return {"path": path, "int8": out, "entry": entry, "meta": meta, "files": files[8:], "val": val, "folder": folder}


@pytest.mark.slow  # trained weights, an export and an NNCF calibration
def test_nncf_ir_keeps_the_output_convolutions_float32(nncf_int8):
    import openvino

    model = openvino.Core().read_model(nncf_int8["int8"])
    convs = {op.get_friendly_name(): op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"}
    nodes = {node.name: node for node in onnx.load(nncf_int8["path"]).graph.node}
    float_convs = {openvino_conv_name(nodes[n], convs) for n in nncf_int8["entry"]["float_output_convs"]}
    # FCOS head: class logits, box distances and centerness on each of the 5 levels
    assert len(float_convs) == 15 and all(("cls_logits" in n) or ("box_pred" in n) or ("centerness" in n) for n in float_convs)
    for name, op in convs.items():
        assert is_quantized_conv(op) == (name not in float_convs), name
        if name in float_convs:  # float32 weights read directly, no FakeQuantize on the input
            weight, source = op.input_value(1).get_node(), op.input_value(0).get_node()
            assert weight.get_type_name() == "Constant" and weight.get_element_type() == openvino.Type.f32, name
            assert source.get_type_name() != "FakeQuantize", name
    assert nncf_int8["entry"]["quantized_convs"] == len(convs) - 15 > 30
    assert sum(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops()) > 30


@pytest.mark.slow  # trained weights, an export and an NNCF calibration
def test_nncf_ir_runs_in_openvino_and_finds_the_float32_detections(nncf_int8):
    from detectron2.structures import Boxes, pairwise_iou

    fp32, meta = load_model(nncf_int8["path"], runtime="openvino")
    int8, meta8 = load_model(nncf_int8["int8"], runtime="openvino")
    assert {k: v for k, v in meta8.items() if k != "quantization"} == meta
    assert meta8["quantization"] == nncf_int8["entry"] and meta8["quantization"]["quantizer"].startswith("nncf ")
    with pytest.raises(ValueError, match=r"model_int8.xml is OpenVINO IR .* run it with --runtime openvino"):
        load_model(nncf_int8["int8"])  # onnxruntime
    found = []
    for path in nncf_int8["files"]:
        image = read_bgr(path)
        ref, got = predict(fp32, meta, image), predict(int8, meta8, image)
        assert len(got[1]) >= 20 and got[0].dtype == np.float32 and got[2].dtype == np.int64
        assert abs(float(got[1][0]) - float(ref[1][0])) < 0.05, (ref[1][:3], got[1][:3])
        iou = pairwise_iou(Boxes(torch.from_numpy(ref[0][:20])), Boxes(torch.from_numpy(got[0]))).numpy()
        iou *= ref[2][:20, None] == got[2][None]
        found += list(iou.max(1) > 0.5)
    assert np.mean(found) >= 0.5, f"only {np.mean(found):.0%} of the float32 top 20 found by NNCF INT8"


@pytest.mark.slow  # an NNCF calibration and two OpenVINO evaluations
def test_command_with_nncf_compares_ap_in_openvino_and_flags_a_drop(nncf_int8, tmp_path, capsys):
    val = nncf_int8["val"]
    subset = {**val, "images": val["images"][:3]}
    ids = {im["id"] for im in subset["images"]}
    subset["annotations"] = [a for a in val["annotations"] if a["image_id"] in ids]
    coco = tmp_path / "val3.json"
    coco.write_text(json.dumps(subset))
    images = os.path.dirname(nncf_int8["files"][0])
    out = str(tmp_path / "q" / "model_int8.xml")
    argv = ["--quantizer", "nncf", "--model", nncf_int8["path"], "--output", out, "--calibration", str(coco),
            "--calibration-root", images, "--calibration-images", "3", "--coco-json", str(coco), "--image-root", images,
            "--max-ap-drop", "-100"]
    assert quantize_onnx.main(argv) == 1
    captured = capsys.readouterr()
    assert "(nncf): " in captured.out and "COCO AP float32" in captured.out and "(both evaluated with openvino)" in captured.out
    assert "INT8 REJECTED" in captured.err
    report = json.load(open(str(tmp_path / "q" / "model_int8_ap.json")))
    assert report["quantizer"] == "nncf" and report["runtime"] == "openvino" and report["max_ap_drop"] == -100
    assert os.path.isfile(out) and os.path.isfile(out[:-4] + ".bin")

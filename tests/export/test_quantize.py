"""INT8 quantization of exported detectors (``d2_anchorfree.runtime.quantize_onnx``): which
convolutions are quantized (all but the output layers, found on a hand-made graph), the graph
and metadata of a quantized detector, calibration and AP-margin errors, the command's
float32 / INT8 comparison on COCO AP, and the errors of ``--quantizer nncf`` that need no
OpenVINO in the process (test_quantize_nncf.py runs NNCF itself)."""
import json
import os

import cv2
import numpy as np
import pytest
import torch

from detectron2.modeling import build_model

from conftest import load_cfg, trees_dir

onnx = pytest.importorskip("onnx", reason="optional export dependency (requirements-extra.txt)")
onnxruntime = pytest.importorskip("onnxruntime", reason="optional export dependency (requirements-extra.txt)")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from d2_anchorfree.export import export_model  # noqa: E402
from d2_anchorfree.runtime import quantize_onnx  # noqa: E402
from d2_anchorfree.runtime import predict_onnx  # noqa: E402
from d2_anchorfree.runtime.predict_onnx import load_model, predict  # noqa: E402
from d2_anchorfree.runtime.quantize_onnx import calibration_images, output_convs, quantize  # noqa: E402


def _conv(name, x, out, weight):
    return helper.make_node("Conv", [x, weight], [out], name=name, pads=[1, 1, 1, 1])


def test_output_convs_are_those_no_convolution_follows():
    # x -> A -> relu -> B -> sigmoid -> mul -> "scores"      B: followed by no conv
    #               \-> C -> D -> mul                        C: followed by D; D: by none
    #               \-> E -> add(E, relu) -> F -> "boxes"    E: followed by F (through add); F: by none
    nodes = [_conv("A", "x", "a", "w"), helper.make_node("Relu", ["a"], ["r"], name="relu"),
             _conv("B", "r", "b", "w"), helper.make_node("Sigmoid", ["b"], ["bs"], name="sig"),
             _conv("C", "r", "c", "w"), _conv("D", "c", "d", "w"),
             helper.make_node("Mul", ["bs", "d"], ["scores"], name="mul"),
             _conv("E", "r", "e", "w"), helper.make_node("Add", ["e", "r"], ["ed"], name="add"),
             _conv("F", "ed", "boxes", "w")]
    w = numpy_helper.from_array(np.ones((2, 2, 3, 3), np.float32), "w")
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("scores", "boxes")],
                              initializer=[w])
    assert output_convs(helper.make_model(graph)) == ["B", "D", "F"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny FCOS (random init, fixed seed) exported to ONNX, real val tiles and a COCO json of
    three of them."""
    trees = trees_dir()
    val = json.load(open(os.path.join(trees, "val.json")))
    folder = tmp_path_factory.mktemp("int8")
    subset = {**val, "images": val["images"][:3]}
    ids = {im["id"] for im in subset["images"]}
    subset["annotations"] = [a for a in val["annotations"] if a["image_id"] in ids]
    coco = folder / "val3.json"
    coco.write_text(json.dumps(subset))
    tiles = [cv2.imread(os.path.join(trees, "images", im["file_name"])) for im in val["images"][:6]]
    # random init scores sit near the classifier prior: a low threshold keeps detections to compare
    cfg = load_cfg("configs/FCOS/FCOS_tiny_R_18_cpu.yaml", "MODEL.DENSE.SCORE_THRESH_TEST", 0.001)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    path = export_model(cfg, model, "onnx", str(folder / "fp32"), torch.from_numpy(tiles[0]))
    return {"path": path, "folder": folder, "coco": str(coco), "images": os.path.join(trees, "images"),
            "tiles": tiles}


@pytest.mark.slow  # an export and a quantization (about 20 s on an idle machine)
def test_int8_graph_quantizes_the_towers_and_keeps_outputs_and_metadata(exported):
    path = exported["path"]
    _, meta = load_model(path)
    files = [os.path.join(exported["images"], f) for f in sorted(os.listdir(exported["images"]))[:4]]
    images = calibration_images([os.path.join(exported["images"], "missing.png")] + files, meta, 4)
    # the unreadable file is skipped; the others come at the runtime's test size
    expected = [predict_onnx.test_size(*cv2.imread(f).shape[:2], meta["min_size_test"], meta["max_size_test"]) for f in files]
    assert [im.shape[:2] for im in images] == expected and all(im.dtype == np.uint8 for im in images)
    out = str(exported["folder"] / "int8.onnx")
    entry = quantize(path, out, images)
    model = onnx.load(out)
    produced_by = {o: n for n in model.graph.node for o in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    float_convs = set(entry["float_output_convs"])
    # FCOS head: class logits, box distances and centerness on each of the 5 levels
    assert len(float_convs) == 15 and all(("cls_logits" in n) or ("box_pred" in n) or ("centerness" in n) for n in float_convs)
    for node in convs:
        weight_from = produced_by.get(node.input[1])
        quantized = weight_from is not None and weight_from.op_type == "DequantizeLinear"
        assert quantized == (node.name not in float_convs), node.name
    assert entry["quantized_convs"] == len(convs) - 15 > 30 and entry["calibration_images"] == 4
    # onnxruntime fuses every quantized conv into an integer kernel (a Conv whose bias is not a
    # constant, e.g. an exporter's Identity, would stay a float Conv between Q/DQ pairs: slower)
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(exported["folder"] / "int8_fused.onnx")
    onnxruntime.InferenceSession(out, options, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
    assert fused.count("QLinearConv") == entry["quantized_convs"]
    assert fused.count("Conv") + fused.count("FusedConv") == 15  # the float output layers (+ activation)
    session, meta8 = load_model(out)
    assert meta8["quantization"]["float_output_convs"] == entry["float_output_convs"]
    assert {k: v for k, v in meta8.items() if k != "quantization"} == meta
    # the INT8 graph runs through the runtime and finds boxes where the float one does
    boxes, scores, classes = predict(session, meta8, exported["tiles"][5])
    ref = predict(load_model(path)[0], meta, exported["tiles"][5])
    assert len(ref[1]) > 0 and len(scores) > 0 and boxes.dtype == np.float32
    assert abs(float(scores.max()) - float(ref[1].max())) < 0.05


def test_calibration_and_model_errors_name_the_problem(tmp_path):
    images = os.path.join(trees_dir(), "images")
    two = [os.path.join(images, f) for f in sorted(os.listdir(images))[:2]]
    meta = {"min_size_test": 400, "max_size_test": 640}
    with pytest.raises(ValueError, match=r"--calibration-images 5 asked, but .* only 2 readable image\(s\) \(of 2 listed\)"):
        calibration_images(two, meta, 5)
    with pytest.raises(ValueError, match=r"--calibration-images must be >= 1, got 0"):
        calibration_images(two, meta, 0)
    # an ONNX file that d2af export did not write (no d2af_metadata) is refused before any work
    w = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "w")
    graph = helper.make_graph([_conv("A", "x", "y", "w")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w])
    onnx.save(helper.make_model(graph), str(tmp_path / "plain.onnx"))
    with pytest.raises(ValueError, match="no d2af_metadata"):
        quantize(str(tmp_path / "plain.onnx"), str(tmp_path / "q.onnx"), calibration_images(two, meta, 1))


@pytest.mark.slow  # a quantization and two evaluations each
@pytest.mark.parametrize("margin, code", [(100.0, 0), (-100.0, 1)])
def test_command_compares_coco_ap_and_flags_a_drop_above_the_margin(exported, tmp_path, capsys, margin, code):
    out = str(tmp_path / "q" / "model_int8.onnx")
    argv = ["--model", exported["path"], "--output", out, "--calibration", exported["coco"],
            "--calibration-root", exported["images"], "--calibration-images", "3",
            "--coco-json", exported["coco"], "--image-root", exported["images"], "--max-ap-drop", str(margin)]
    assert quantize_onnx.main(argv) == code
    captured = capsys.readouterr()
    assert "convolutions int8" in captured.out and "COCO AP float32" in captured.out
    assert ("INT8 REJECTED" in captured.err) == (code == 1)
    report_path = str(tmp_path / "q" / "model_int8_ap.json")
    assert f"wrote {report_path}" in captured.out  # the report's name is printed
    report = json.load(open(report_path))
    assert set(report) == {"float32", "int8", "max_ap_drop", "quantizer", "runtime"} and report["max_ap_drop"] == margin
    assert report["quantizer"] == report["runtime"] == "onnxruntime"
    assert os.path.isfile(out)


def test_nncf_quantizer_names_its_extra_and_its_output_format(tmp_path, monkeypatch, capsys):
    """Before any work: NNCF missing names the extra that installs it; NNCF writes OpenVINO IR,
    so an --output that is not .xml is a usage error; onnxruntime refuses an IR file by name."""
    import sys

    argv = ["--quantizer", "nncf", "--model", str(tmp_path / "model.onnx"), "--calibration", str(tmp_path)]
    with pytest.raises(SystemExit) as exit_info:
        quantize_onnx.main(argv + ["--output", str(tmp_path / "int8.onnx")])
    assert exit_info.value.code == 2 and "--output must end in .xml" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "nncf", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"--quantizer nncf needs nncf and openvino: pip install 'd2_anchorfree\[openvino\]'"):
        quantize_onnx.main(argv + ["--output", str(tmp_path / "int8.xml")])
    with pytest.raises(ImportError, match=r"pip install 'd2_anchorfree\[openvino\]'"):
        quantize_onnx.quantize_nncf(str(tmp_path / "model.onnx"), str(tmp_path / "int8.xml"), [])
    with pytest.raises(ValueError, match=r"int8.xml is OpenVINO IR .*: run it with --runtime openvino"):
        load_model(str(tmp_path / "int8.xml"))
    with pytest.raises(SystemExit) as exit_info:  # d2af predict-onnx: a usage error before any work
        predict_onnx.main(["--model", str(tmp_path / "int8.xml"), "--input", str(tmp_path), "--output", str(tmp_path)])
    assert exit_info.value.code == 2 and "int8.xml is OpenVINO IR" in capsys.readouterr().err


def test_detections_found_counts_the_references_best_detections_matched_by_class_and_iou():
    from d2_anchorfree.runtime.quantize_onnx import detections_found, pairwise_iou

    # IoU by hand: [0,0,10,10] vs [0,0,10,9]: 90 / 100 = 0.9; vs [5,0,15,10]: 50 / 150; empty boxes: 0
    iou = pairwise_iou(np.array([[0, 0, 10, 10], [0, 0, 0, 0]], np.float32),
                       np.array([[0, 0, 10, 9], [5, 0, 15, 10], [0, 0, 0, 0]], np.float32))
    np.testing.assert_allclose(iou, [[0.9, 1 / 3, 0.0], [0.0, 0.0, 0.0]], rtol=1e-6)
    reference = (np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50], [60, 60, 70, 70]], np.float32),
                 np.array([0.9, 0.8, 0.7, 0.1], np.float32), np.array([0, 0, 1, 0]))
    candidate = (np.array([[0, 0, 10, 9],        # the best reference: IoU 0.9, same class: found
                           [20, 20, 30, 28.5],   # the second: IoU 0.85, below 0.9: not found
                           [40, 40, 50, 50],     # the third's box, but class 0 (it is class 1): not found
                           [60, 60, 70, 70]], np.float32),  # the fourth, outside top 3: not checked
                 np.array([0.5, 0.5, 0.5, 0.5], np.float32), np.array([0, 0, 0, 0]))
    assert detections_found(reference, candidate, top=3, iou=0.9) == (1, 3)
    assert detections_found(reference, candidate, top=4, iou=0.9) == (2, 4)
    assert detections_found(reference, candidate, top=3, iou=0.8) == (2, 3)
    no_detections = (np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))
    assert detections_found(reference, no_detections, top=3) == (0, 3)
    assert detections_found(no_detections, candidate) == (0, 0)


@pytest.mark.slow  # a quantization and two models on three tiles
def test_agreement_of_int8_with_float32_is_reported_and_checked_against_a_minimum(exported, tmp_path, capsys,
                                                                                   monkeypatch):
    out = str(tmp_path / "q" / "model_int8.onnx")
    argv = ["--model", exported["path"], "--output", out, "--calibration", exported["coco"],
            "--calibration-root", exported["images"], "--calibration-images", "3",
            "--agreement", exported["coco"], "--agreement-root", exported["images"]]
    assert quantize_onnx.main(argv) == 0  # no --min-agreement: report only
    report_path = str(tmp_path / "q" / "model_int8_agreement.json")
    assert f"wrote {report_path}" in capsys.readouterr().out
    report = json.load(open(report_path))
    assert report["images"] == 3 and report["images_without_detections"] == 0
    assert report["checked"] == 3 * quantize_onnx.AGREEMENT_TOP  # random init at score 0.001: >= 20 each
    assert 0 <= report["found"] <= report["checked"] and 0.0 <= report["min"] <= report["mean"] <= 1.0
    assert report["runtime"] == report["quantizer"] == "onnxruntime" and report["min_agreement"] == 0.0
    # the same INT8 file against itself finds everything; a minimum above what it finds rejects it
    assert quantize_onnx.agreement(out, out, [os.path.join(exported["images"], json.load(open(exported["coco"]))
                                                           ["images"][0]["file_name"])])["mean"] == 1.0
    monkeypatch.setattr(quantize_onnx, "agreement", lambda *a, **k: {**report, "mean": 0.5, "min": 0.25})
    assert quantize_onnx.main(argv + ["--min-agreement", "0.6"]) == 1
    assert "INT8 REJECTED: it finds 50.0% (min 25.0%)" in capsys.readouterr().err
    assert quantize_onnx.main(argv + ["--min-agreement", "0.5"]) == 0


@pytest.mark.parametrize("extra, message", [(["--min-agreement", "1.5"], "--min-agreement must be in [0, 1], got 1.5"),
                                            (["--min-agreement", "0.9"], "--min-agreement needs --agreement")])
def test_agreement_arguments_are_checked_before_any_work(tmp_path, capsys, extra, message):
    argv = ["--model", str(tmp_path / "absent.onnx"), "--output", str(tmp_path / "int8.onnx"),
            "--calibration", str(tmp_path), *extra]
    with pytest.raises(SystemExit) as exit_info:
        quantize_onnx.main(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err

"""INT8 post-training static quantization of an exported detector (``d2af export --format onnx``)
with onnxruntime's quantizer (the default) or OpenVINO's NNCF (``--quantizer nncf``), calibrated
on real images; no torch, no detectron2.

    d2af quantize --model output/fcos_onnx/model.onnx --output output/fcos_onnx/model_int8.onnx \\
        --calibration datasets/trees/train.json --calibration-images 64 \\
        --coco-json datasets/trees/val.json --max-ap-drop 1.0
    d2af quantize --quantizer nncf --model output/fcos_onnx/model.onnx \\
        --output output/fcos_onnx/model_int8.xml --calibration datasets/trees/train.json \\
        --coco-json datasets/trees/val.json      # OpenVINO IR: d2af predict-onnx --runtime openvino

(``python -m d2_anchorfree.runtime.quantize_onnx`` takes the same arguments.)

What is quantized: the convolutions of the backbone, the FPN and the head towers, with the ReLUs,
additions, max pooling and upsampling between them (:data:`FEATURE_OPS`), QDQ format
(QuantizeLinear / DequantizeLinear pairs, which onnxruntime fuses into integer kernels), weights
int8 per output channel, activations uint8 per tensor with ranges from the calibration images
(min/max). What stays float32: the head's output layers (the convolutions from which no other
convolution is reachable: class logits, box distances, centerness, DFL distributions, 3D max
filtering's last conv; quantizing them costs AP), every normalization, the scoring rule, box
decoding, candidate selection, top-k and NMS, and deformable convolutions.

``--quantizer nncf`` (``pip install 'd2_anchorfree[openvino]'``): OpenVINO reads the ONNX file,
NNCF (``nncf.quantize``, OpenVINO backend) quantizes the same part, every op not made from
:func:`feature_nodes` passed as its ignored scope (:func:`nncf_ignored_names`), with its own
quantizer placement (FakeQuantize on the activation inputs of convolutions, additions, pooling;
int8 weights per output channel, the ``--nncf-preset``'s activation scheme) and its fast bias
correction; the result is an OpenVINO IR (``.xml`` + ``.bin``, float parts kept float32) with the
metadata inside, which ``d2af predict-onnx --runtime openvino`` runs like the ONNX files.

Calibration images go through the runtime's own preprocessing (``predict_onnx``: BGR, resized to
the model's test size), so the ranges are those the deployed model sees. With ``--coco-json`` the
float32 and INT8 models are both evaluated on that dataset (COCO AP, pycocotools, as ``d2af
predict-onnx --evaluate``; with onnxruntime, or with OpenVINO for ``--quantizer nncf``); an AP drop above ``--max-ap-drop`` points makes the exit code 1 and
says so: the INT8 file is written but flagged, never passed off as equivalent.

Without ground truth (a model with no labelled test data, e.g. one converted from a zoo),
``--agreement IMAGES`` runs both models on those images and reports the share of float32's
``AGREEMENT_TOP`` best detections per image that INT8 also finds (same class, IoU >=
``AGREEMENT_IOU``; :func:`agreement`), in ``<output stem>_agreement.json``; ``--min-agreement``
makes a mean share below it exit 1 as an AP drop does.
"""
import argparse
import json
import logging
import os
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .predict_onnx import (METADATA_KEY, coco_results, evaluate, list_inputs, load_model, predict, read_bgr,
                           resize, test_size)

QUANTIZED_OPS = ("Conv",)
# Ops quantized along with the convolutions inside the feature part of the graph (backbone, FPN,
# towers), so that onnxruntime fuses each DequantizeLinear -> Conv -> QuantizeLinear chain into
# an integer convolution: the activation after a conv, residual and top-down additions, the stem's
# max pooling, the FPN's upsampling. Normalizations that do not fold into a conv (GroupNorm's
# InstanceNormalization) stay float and break such chains.
FEATURE_OPS = ("Conv", "Relu", "Clip", "Add", "MaxPool", "Resize")
#: The quantizers of ``--quantizer``.
QUANTIZERS = ("onnxruntime", "nncf")
#: NNCF's presets (``--nncf-preset``): "performance" (NNCF's default): symmetric int8 weights and
#: activations; "mixed": asymmetric activations (a zero point, as onnxruntime's uint8). On the
#: trained tiny FCOS both gave the same AP and latency (docs/deployment.md).
NNCF_PRESETS = ("performance", "mixed")
#: ``--agreement``: of the float32 model's ``AGREEMENT_TOP`` best detections per image, the share
#: that the INT8 model also finds, with a box of the same class at IoU >= ``AGREEMENT_IOU``. A check
#: of the INT8 file against its own float32 model, for images without ground truth (a model with no
#: labelled test data, e.g. a zoo model): not an accuracy.
AGREEMENT_TOP = 20
AGREEMENT_IOU = 0.9
# OpenVINO op types that hold no computation to quantize; left out of NNCF's ignored scope
_OV_STRUCTURAL = ("Constant", "Parameter", "Result")


def _consumers(model) -> Dict[str, list]:
    consumers: Dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def _reaches_conv(model) -> Dict[str, bool]:
    """{node name: whether a Conv node is reachable from its outputs} (nodes in graph order,
    which ONNX requires to be topological, visited backwards)."""
    consumers = _consumers(model)
    reaches: Dict[str, bool] = {}
    for node in reversed(model.graph.node):
        reaches[node.name] = any(c.op_type in QUANTIZED_OPS or reaches.get(c.name, False)
                                 for out in node.output for c in consumers.get(out, []))
    return reaches


def output_convs(model) -> List[str]:
    """Names of the Conv nodes of ``model`` (an ``onnx.ModelProto``) from which no other Conv node
    is reachable: the detector's output layers, left in float32."""
    reaches = _reaches_conv(model)
    return [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS and not reaches[n.name]]


def feature_nodes(model) -> List[str]:
    """Names of the nodes of ``model`` that INT8 quantization may touch: those of
    :data:`FEATURE_OPS` from which a Conv node is reachable (backbone, FPN, head towers), the
    output convolutions (:func:`output_convs`) and everything after them excluded."""
    reaches = _reaches_conv(model)
    return [n.name for n in model.graph.node if n.op_type in FEATURE_OPS and reaches[n.name]]


def calibration_images(paths: Sequence[str], meta: dict, limit: int) -> List[np.ndarray]:
    """The first ``limit`` readable images of ``paths``, preprocessed as ``predict_onnx.predict``
    feeds them (uint8 BGR [h, w, 3] at the model's test size).

    Raises:
        ValueError: ``limit`` < 1, or fewer than ``limit`` readable images (the count is given).
    """
    if limit < 1:
        raise ValueError(f"--calibration-images must be >= 1, got {limit}")
    images = []
    for path in paths:
        try:
            image = read_bgr(path)
        except ValueError:
            continue
        h, w = image.shape[:2]
        size = test_size(h, w, meta["min_size_test"], meta["max_size_test"])
        images.append(np.ascontiguousarray(resize(image, size)))
        if len(images) == limit:
            return images
    raise ValueError(f"--calibration-images {limit} asked, but the calibration set has only {len(images)} "
                     f"readable image(s) (of {len(paths)} listed)")


class _Images:
    """onnxruntime's ``CalibrationDataReader`` protocol over a list of input feeds."""

    def __init__(self, feeds: Sequence[Dict[str, np.ndarray]]):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def _onnx_quantizer():
    try:
        import onnx
        from onnxruntime import quantization
    except ImportError as e:
        raise ImportError("INT8 quantization needs onnx and onnxruntime: pip install 'd2_anchorfree[export]'") from e
    return onnx, quantization


def quantize_graph(model_path: str, output_path: str, images: Sequence[np.ndarray], input_name: str = "image",
                   per_channel: bool = True) -> Dict[str, object]:
    """Write the INT8 (QDQ) version of the ONNX graph ``model_path`` to ``output_path``: the
    :func:`feature_nodes` (every Conv but the output convolutions, and the ops between them)
    quantized, calibrated on ``images``.

    Args:
        model_path: a float32 ``.onnx``. output_path: the ``.onnx`` to write (folder must exist).
        images: calibration inputs of the graph's input ``input_name`` (e.g. uint8 BGR
            [h, w, 3] for ``d2af export``'s graphs).
        per_channel: int8 weight scales per output channel (else per tensor).

    Returns:
        {"quantized_convs": count, "float_output_convs": [node names]}.

    Raises:
        ImportError: onnx / onnxruntime's quantizer missing. ValueError: no image.
    """
    onnx, q = _onnx_quantizer()
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not images:
        raise ValueError("no calibration image")
    with tempfile.TemporaryDirectory(prefix="d2af_quantize_") as tmp:
        # onnxruntime's recommended pre-processing (its basic graph optimizations, ONNX shape
        # inference): among others it removes the Identity nodes through which the exporter
        # shares equal constants (e.g. zero conv biases); a Conv whose bias is not a constant is
        # not fused into an integer convolution.
        prepared = os.path.join(tmp, "prepared.onnx")
        quant_pre_process(model_path, prepared, skip_symbolic_shape=True)
        model = onnx.load(prepared)
        keep_float = output_convs(model)
        convs = [n.name for n in model.graph.node if n.op_type in QUANTIZED_OPS]
        reader = _Images([{input_name: image} for image in images])
        q.quantize_static(prepared, output_path, reader, quant_format=q.QuantFormat.QDQ,
                          op_types_to_quantize=list(FEATURE_OPS), nodes_to_quantize=feature_nodes(model),
                          per_channel=per_channel, activation_type=q.QuantType.QUInt8,
                          weight_type=q.QuantType.QInt8, calibrate_method=q.CalibrationMethod.MinMax)
    return {"quantized_convs": len(convs) - len(keep_float), "float_output_convs": keep_float}


def quantize(model_path: str, output_path: str, images: Sequence[np.ndarray], per_channel: bool = True) -> dict:
    """:func:`quantize_graph` of a ``d2af export`` file, keeping its metadata with a
    "quantization" entry added (format, calibration image count, the float32 output
    convolutions, the number of quantized convolutions).

    Args:
        model_path: a float32 ``.onnx`` written by ``d2af export``. output_path: the INT8 file.
        images: uint8 BGR [h, w, 3] as the runtime feeds them (:func:`calibration_images`).
        per_channel: int8 weight scales per output channel (else per tensor).

    Returns:
        the "quantization" entry.

    Raises:
        ImportError: onnx / onnxruntime's quantizer missing (``pip install 'd2_anchorfree[export]'``).
        ValueError: the file has no d2_anchorfree metadata, or no image is given.
    """
    onnx, _ = _onnx_quantizer()
    props = {p.key: p.value for p in onnx.load(model_path, load_external_data=False).metadata_props}
    if "d2af_metadata" not in props:
        raise ValueError(f"{model_path} has no d2af_metadata: export it with d2af export")
    entry = {"format": "onnxruntime QDQ, int8 weights per " + ("channel" if per_channel else "tensor")
             + ", uint8 activations (min/max calibration)", "calibration_images": len(images),
             **quantize_graph(model_path, output_path, images, per_channel=per_channel)}
    meta = json.loads(props["d2af_metadata"])
    meta["quantization"] = entry
    out = onnx.load(output_path)
    del out.metadata_props[:]
    for key, value in {**props, "d2af_metadata": json.dumps(meta)}.items():
        out.metadata_props.add(key=key, value=value)
    onnx.save(out, output_path)
    return entry


def _nncf():
    """(nncf, openvino), imported on first use.

    Raises:
        ImportError: either is missing, naming the extra that installs both.
    """
    try:
        import nncf
        import openvino
    except ImportError as e:
        raise ImportError("--quantizer nncf needs nncf and openvino: pip install 'd2_anchorfree[openvino]' "
                          "(or the pinned requirements-extra.txt)") from e
    return nncf, openvino


def _onnx():
    try:
        import onnx
    except ImportError as e:
        raise ImportError("--quantizer nncf reads the ONNX graph's node names with onnx: "
                          "pip install 'd2_anchorfree[export]'") from e
    return onnx


def openvino_conv_name(node, names) -> str:
    """The OpenVINO op name of the ONNX Conv ``node`` (an ``onnx.NodeProto``) in a model read by
    OpenVINO's ONNX reader, whose op names are ``names`` (a set): ``<node name>/WithoutBiases``
    for a Conv with a bias (OpenVINO splits it into a Convolution and an Add named after the
    node), else the node's name, or its output's name where that is a graph output (OpenVINO
    names the op that writes a graph output after it).

    Raises:
        KeyError: no such name is in ``names``.
    """
    for name in (node.name + "/WithoutBiases", node.name, node.output[0]):
        if name in names:
            return name
    raise KeyError(f"no OpenVINO op for the ONNX Conv {node.name!r}")


def nncf_ignored_names(onnx_model, ov_model) -> List[str]:
    """The op names of ``ov_model`` (``openvino.Model``: the ONNX graph ``onnx_model``, an
    ``onnx.ModelProto``, read by ``Core.read_model``) that NNCF must leave float, so that it
    quantizes what the onnxruntime path quantizes: every op but those made from
    :func:`feature_nodes` (OpenVINO names an op after the ONNX node it comes from; a Conv with a
    bias becomes the Convolution ``<name>/WithoutBiases`` and the Add ``<name>``), constants,
    parameters and results left out (nothing to quantize there).

    Raises:
        ValueError: a feature node has no op of its name in ``ov_model`` (the reader named ops
            otherwise: the ignored scope would not match what onnxruntime quantizes).
    """
    ops = ov_model.get_ordered_ops()
    names = {op.get_friendly_name() for op in ops}
    keep = set()
    for node in feature_nodes(onnx_model):
        found = {node, node + "/WithoutBiases"} & names
        if not found:
            raise ValueError(f"the ONNX node {node!r} has no OpenVINO op of that name: cannot map the float32 "
                             "part to NNCF's ignored scope")
        keep |= found
    return [op.get_friendly_name() for op in ops
            if op.get_friendly_name() not in keep and op.get_type_name() not in _OV_STRUCTURAL]


def is_quantized_conv(op) -> bool:
    """Whether the OpenVINO Convolution ``op`` computes in INT8 after NNCF: its weights come
    from an integer constant (NNCF's compressed weights: i8/u8 -> Convert -> Subtract ->
    Multiply) or through a FakeQuantize. A float32 conv reads a float constant directly."""
    node = op.input_value(1).get_node()
    while True:
        kind = node.get_type_name()
        if kind == "FakeQuantize":
            return True
        if kind == "Constant":
            return node.get_element_type().is_integral()
        if kind not in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze"):
            return False
        node = node.input_value(0).get_node()


def quantize_nncf_graph(model_path: str, output_path: str, images: Sequence[np.ndarray], per_channel: bool = True,
                        preset: str = "performance", metadata: Optional[dict] = None) -> Dict[str, object]:
    """Write the INT8 OpenVINO IR of the ONNX graph ``model_path`` to ``output_path`` (``.xml``,
    its ``.bin`` beside it) with NNCF's post-training quantization (OpenVINO backend),
    calibrated on ``images``: the convolutions of :func:`feature_nodes` and the ops between them
    quantized, everything else (the :func:`output_convs`, normalizations, scoring, decoding,
    top-k, NMS) left float32 through NNCF's ignored scope (:func:`nncf_ignored_names`) and saved
    without fp16 compression. Activation ranges: per tensor, NNCF's default for activations (the
    mean over the images of each image's min and max).

    Args:
        model_path: a float32 ``.onnx``. output_path: the ``.xml`` (folder must exist).
        images: calibration inputs of the graph's one input (e.g. uint8 BGR [h, w, 3] for ``d2af
            export``'s graphs).
        per_channel: int8 weight scales per output channel (else per tensor).
        preset: one of :data:`NNCF_PRESETS`.
        metadata: when given, written (with the "quantization" entry added) into the IR's rt_info
            under ("framework", "d2af_metadata"), where ``predict_onnx`` reads it.

    Returns:
        the "quantization" entry: format (preset, weight scales), quantizer (nncf version),
        calibration image count, "quantized_convs" (the INT8 convolutions counted in the
        result) and "float_output_convs" (the ONNX node names of :func:`output_convs`).

    Raises:
        ImportError: nncf / openvino missing (``pip install 'd2_anchorfree[openvino]'``), or onnx.
        ValueError: no image; an unknown preset; an output path not ending in ``.xml``; a
            feature node the ignored scope cannot name.
        KeyError: an output convolution with no OpenVINO op of its name.
        RuntimeError: the result quantizes an output convolution or no convolution at all.
    """
    nncf, ov = _nncf()
    onnx = _onnx()
    if not images:
        raise ValueError("no calibration image")
    if preset not in NNCF_PRESETS:
        raise ValueError(f"--nncf-preset must be one of {list(NNCF_PRESETS)}, got {preset!r}")
    if not output_path.endswith(".xml"):
        raise ValueError(f"--quantizer nncf writes OpenVINO IR (.xml + .bin): --output must end in .xml, got {output_path}")
    from nncf.common.logging import nncf_logger
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    graph = onnx.load(model_path, load_external_data=False)
    model = ov.Core().read_model(model_path)
    keep_float = output_convs(graph)
    advanced = AdvancedQuantizationParameters(weights_quantization_params=QuantizationParameters(per_channel=per_channel))
    level = nncf_logger.level
    nncf.set_log_level(logging.WARNING)  # at INFO NNCF logs every ignored op: hundreds of lines
    try:
        quantized = nncf.quantize(model, nncf.Dataset(list(images)), preset=nncf.QuantizationPreset(preset),
                                  subset_size=len(images), ignored_scope=nncf.IgnoredScope(names=nncf_ignored_names(graph, model)),
                                  advanced_parameters=advanced)
    finally:
        nncf.set_log_level(level)
    convs = {op.get_friendly_name(): op for op in quantized.get_ordered_ops() if op.get_type_name() == "Convolution"}
    int8 = [name for name, op in convs.items() if is_quantized_conv(op)]
    nodes = {node.name: node for node in graph.graph.node}
    wrong = [name for name in keep_float if openvino_conv_name(nodes[name], convs) in int8]
    if wrong or not int8:
        raise RuntimeError(f"NNCF quantized {len(int8)} convolutions, output convolutions among them: {wrong}")
    entry = {"format": f"OpenVINO IR, NNCF {preset} preset, int8 weights per " + ("channel" if per_channel else "tensor")
             + ", int8/uint8 activations per tensor (mean min/max over the calibration images), fast bias correction",
             "quantizer": f"nncf {nncf.__version__}", "calibration_images": len(images),
             "quantized_convs": len(int8), "float_output_convs": keep_float}
    if metadata is not None:
        quantized.set_rt_info(json.dumps({**metadata, "quantization": entry}), ["framework", METADATA_KEY])
    ov.save_model(quantized, output_path, compress_to_fp16=False)  # the float32 parts stay float32
    return entry


def quantize_nncf(model_path: str, output_path: str, images: Sequence[np.ndarray], per_channel: bool = True,
                  preset: str = "performance") -> dict:
    """:func:`quantize_nncf_graph` of a ``d2af export`` file, keeping its metadata (OpenVINO
    reads the ONNX metadata_props into the model's rt_info under "framework", and IR keeps it
    there) with the "quantization" entry added.

    Args:
        model_path: a float32 ``.onnx`` written by ``d2af export``. output_path: the ``.xml``.
        images: uint8 BGR [h, w, 3] as the runtime feeds them (:func:`calibration_images`).
        per_channel: int8 weight scales per output channel (else per tensor).
        preset: one of :data:`NNCF_PRESETS`.

    Returns:
        the "quantization" entry (:func:`quantize_nncf_graph`).

    Raises:
        ImportError: nncf / openvino missing (``pip install 'd2_anchorfree[openvino]'``), or onnx.
        ValueError: the file has no d2af_metadata; and those of :func:`quantize_nncf_graph`.
        RuntimeError: the result quantizes an output convolution or no convolution at all.
    """
    _, ov = _nncf()
    model = ov.Core().read_model(model_path)
    if not model.has_rt_info(["framework", METADATA_KEY]):
        raise ValueError(f"{model_path} has no d2af_metadata: export it with d2af export")
    meta = json.loads(str(model.get_rt_info(["framework", METADATA_KEY]).astype(str)))
    return quantize_nncf_graph(model_path, output_path, images, per_channel, preset, metadata=meta)


def image_paths(spec: str, root: str = "") -> List[str]:
    """The image files of ``--calibration`` / ``--agreement``: a COCO json's images (in ``root``,
    default ``<json dir>/images``), a folder or a quoted glob (``predict_onnx.list_inputs``).

    Raises:
        FileNotFoundError: nothing found (from ``list_inputs``).
    """
    is_json = spec.endswith(".json")
    return list_inputs("" if is_json else spec, spec if is_json else "", root)[0]


def _read_named(path: str) -> np.ndarray:
    """``read_bgr(path)``, its ValueError naming ``path``."""
    try:
        return read_bgr(path)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from e


def coco_ap(model_path: str, coco_json: str, image_root: str = "", threads: int = 0,
            runtime: str = "onnxruntime") -> Dict[str, float]:
    """COCO box AP / AP50 / AP75 (percent) of ``model_path`` (ONNX, or OpenVINO IR with
    ``runtime`` "openvino") on the images of ``coco_json``, as ``d2af predict-onnx --coco-json
    ... --evaluate --runtime <runtime>``.

    Raises:
        ValueError: an image of the json cannot be read (named).
    """
    session, meta = load_model(model_path, threads, runtime)
    files, names, ids = list_inputs("", coco_json, image_root)
    results = []
    for path, name in zip(files, names):
        results += coco_results(*predict(session, meta, _read_named(path)), meta, image_id=ids[name])
    return evaluate(coco_json, results, meta["coco_max_dets_per_image"])


def pairwise_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` [N, 4] with every box of ``b`` [M, 4] (XYXY pixels; N, M >= 1):
    [N, M] float64 in [0, 1], 0 for an empty box. pycocotools' box IoU (``mask.iou``, the one
    COCOeval uses; the runtime has no torch), on the boxes turned to XYWH."""
    from pycocotools import mask as mask_utils

    def xywh(boxes):
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)

    return np.asarray(mask_utils.iou(xywh(a), xywh(b), [0] * len(b))).reshape(len(a), len(b))


def detections_found(reference, candidate, top: int = AGREEMENT_TOP, iou: float = AGREEMENT_IOU) -> Tuple[int, int]:
    """How many of ``reference``'s ``top`` best detections ``candidate`` also has.

    Args:
        reference, candidate: one image's (boxes [D, 4] XYXY pixels, scores [D], classes [D]), as
            :func:`~d2_anchorfree.runtime.predict_onnx.predict` returns them (sorted by score).
        top: how many of ``reference``'s detections are checked (its ``top`` highest scores).
        iou: a reference detection is found when a candidate box of the same class overlaps it
            with IoU >= ``iou`` (several reference boxes may be found by one candidate box).

    Returns:
        (found, checked): ``checked`` = min(top, number of reference detections).
    """
    ref_boxes, ref_scores, ref_classes = reference
    order = np.argsort(-ref_scores, kind="stable")[:top]
    boxes, classes = candidate[0], candidate[2]
    if len(order) == 0:
        return 0, 0
    if len(boxes) == 0:
        return 0, len(order)
    overlap = pairwise_iou(ref_boxes[order], boxes)
    same_class = ref_classes[order][:, None] == classes[None, :]
    return int(((overlap >= iou) & same_class).any(axis=1).sum()), len(order)


def agreement(float_path: str, int8_path: str, paths: Sequence[str], threads: int = 0,
              runtime: str = "onnxruntime") -> Dict[str, object]:
    """The INT8 model's agreement with its float32 model on ``paths`` (:func:`detections_found`
    per image, both run by ``runtime`` with the runtime's own preprocessing).

    Returns:
        dict: ``"mean"`` and ``"min"`` over the images that have float32 detections of each image's
        found / checked share (None when no image has any), ``"images"`` (compared),
        ``"images_without_detections"`` (no float32 detection to check), ``"checked"`` and
        ``"found"`` (detections, summed), ``"top"`` and ``"iou"`` (the rule).

    Raises:
        ValueError: an image cannot be read (named).
    """
    sessions = [load_model(path, threads, runtime) for path in (float_path, int8_path)]
    shares, checked, found, empty = [], 0, 0, 0
    for path in paths:
        image = _read_named(path)
        n_found, n_checked = detections_found(*(predict(session, meta, image) for session, meta in sessions))
        if n_checked == 0:
            empty += 1
            continue
        shares.append(n_found / n_checked)
        checked, found = checked + n_checked, found + n_found
    return {"mean": float(np.mean(shares)) if shares else None, "min": float(np.min(shares)) if shares else None,
            "images": len(paths), "images_without_detections": empty, "checked": checked, "found": found,
            "top": AGREEMENT_TOP, "iou": AGREEMENT_IOU}


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """Quantize, then (with ``--coco-json``) compare float32 and INT8 COCO AP.

    Returns:
        0; 1 when the INT8 AP is more than ``--max-ap-drop`` below the float32 AP, or (with
        ``--agreement`` and ``--min-agreement``) INT8 finds too few of float32's detections (the
        INT8 file is written and the finding printed).

    Raises:
        ValueError: too few calibration images, a model without d2_anchorfree metadata.
        FileNotFoundError: no calibration image found.
        ImportError: the ``--quantizer``'s packages are missing (naming the extra).
        SystemExit: code 2 for bad arguments (``--quantizer nncf`` with an ``--output`` not
            ending in ``.xml``).
    """
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", required=True, help="float32 model.onnx written by d2af export")
    p.add_argument("--output", required=True, help="the INT8 file to write: .onnx (onnxruntime) or .xml (nncf)")
    p.add_argument("--quantizer", choices=QUANTIZERS, default="onnxruntime",
                   help="onnxruntime (default: QDQ ONNX, onnxruntime or OpenVINO run it) or nncf (OpenVINO IR, run "
                        "with --runtime openvino; pip install 'd2_anchorfree[openvino]')")
    p.add_argument("--nncf-preset", choices=NNCF_PRESETS, default="performance",
                   help="with --quantizer nncf: performance (default: symmetric activations) or mixed (asymmetric)")
    p.add_argument("--calibration", required=True,
                   help="calibration images: a COCO json (its images, e.g. the training set's), a folder or a quoted glob")
    p.add_argument("--calibration-root", default="", help="image folder of a --calibration json (default: <json dir>/images)")
    p.add_argument("--calibration-images", type=int, default=64, help="how many calibration images (default 64)")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (default: per channel)")
    p.add_argument("--coco-json", default="", help="evaluate float32 and INT8 on this COCO json")
    p.add_argument("--image-root", default="", help="image folder of --coco-json (default: <json dir>/images)")
    p.add_argument("--max-ap-drop", type=float, default=1.0, help="AP points INT8 may lose (default 1.0)")
    p.add_argument("--agreement", default="",
                   help="images without ground truth (a COCO json's images, a folder or a quoted glob) on which to "
                        f"check that INT8 finds float32's {AGREEMENT_TOP} best detections per image (same class, "
                        f"IoU >= {AGREEMENT_IOU})")
    p.add_argument("--agreement-root", default="", help="image folder of an --agreement json (default: <json dir>/images)")
    p.add_argument("--min-agreement", type=float, default=0.0,
                   help="with --agreement: the mean share of float32's detections INT8 must find, in [0, 1] "
                        "(default 0: report only)")
    p.add_argument("--threads", type=int, default=0,
                   help="onnxruntime intra-op threads / OpenVINO INFERENCE_NUM_THREADS for evaluation")
    args = p.parse_args(argv)
    if not 0.0 <= args.min_agreement <= 1.0:
        p.error(f"--min-agreement must be in [0, 1], got {args.min_agreement}")
    if args.min_agreement > 0 and not args.agreement:
        p.error("--min-agreement needs --agreement (the images to compare on)")
    nncf = args.quantizer == "nncf"
    if nncf and not args.output.endswith(".xml"):
        p.error(f"--quantizer nncf writes OpenVINO IR (.xml + .bin): --output must end in .xml, got {args.output}")
    if nncf:
        _nncf()  # a missing package is named before any work
    runtime = "openvino" if nncf else "onnxruntime"
    _, meta = load_model(args.model, runtime=runtime)
    images = calibration_images(image_paths(args.calibration, args.calibration_root), meta, args.calibration_images)
    folder = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(folder, exist_ok=True)
    if nncf:
        entry = quantize_nncf(args.model, args.output, images, per_channel=not args.per_tensor, preset=args.nncf_preset)
    else:
        entry = quantize(args.model, args.output, images, per_channel=not args.per_tensor)
    print(f"wrote {args.output} ({args.quantizer}): {entry['quantized_convs']} convolutions int8, "
          f"{len(entry['float_output_convs'])} output convolutions float32, {len(images)} calibration images")
    code = check_agreement(args, runtime) if args.agreement else 0
    if not args.coco_json:
        return code
    fp32 = coco_ap(args.model, args.coco_json, args.image_root, args.threads, runtime)
    int8 = coco_ap(args.output, args.coco_json, args.image_root, args.threads, runtime)
    drop = fp32["AP"] - int8["AP"]
    print(f"COCO AP float32 {fp32['AP']:.2f} (AP50 {fp32['AP50']:.2f}), INT8 {int8['AP']:.2f} "
          f"(AP50 {int8['AP50']:.2f}): {drop:.2f} points lost (both evaluated with {runtime})")
    report = os.path.splitext(args.output)[0] + "_ap.json"
    with open(report, "w") as f:
        json.dump({"float32": fp32, "int8": int8, "max_ap_drop": args.max_ap_drop, "quantizer": args.quantizer,
                   "runtime": runtime}, f)
    print(f"wrote {report}")
    if not drop <= args.max_ap_drop:  # also NaN: no detection to compare
        print(f"INT8 REJECTED: it loses {drop:.2f} AP points (more than --max-ap-drop {args.max_ap_drop}, "
              "or nothing to compare); "
              "use more or other calibration images, or deploy the float32 model", file=sys.stderr)
        return 1
    return code


def check_agreement(args, runtime: str) -> int:
    """``--agreement``: :func:`agreement` on those images, printed and written to
    ``<output stem>_agreement.json``; 1 (``INT8 REJECTED``) when the mean share is below
    ``--min-agreement``, or when no image has a float32 detection to compare and a minimum is set.

    Raises:
        FileNotFoundError: no image found for ``--agreement``.
    """
    result = agreement(args.model, args.output, image_paths(args.agreement, args.agreement_root), args.threads,
                       runtime)
    mean = "nothing to compare" if result["mean"] is None else f"{100 * result['mean']:.1f}% (min {100 * result['min']:.1f}%)"
    print(f"agreement on {result['images']} images ({result['images_without_detections']} without float32 "
          f"detections): INT8 finds {result['found']} of float32's {result['checked']} best detections "
          f"(top {AGREEMENT_TOP} per image, same class, IoU >= {AGREEMENT_IOU}); per image {mean} "
          f"(both run with {runtime})")
    report = os.path.splitext(args.output)[0] + "_agreement.json"
    with open(report, "w") as f:
        json.dump({**result, "min_agreement": args.min_agreement, "quantizer": args.quantizer, "runtime": runtime}, f)
    print(f"wrote {report}")
    if args.min_agreement > 0 and not (result["mean"] is not None and result["mean"] >= args.min_agreement):
        print(f"INT8 REJECTED: it finds {mean} of float32's detections (below --min-agreement "
              f"{args.min_agreement}, or nothing to compare); use more or other calibration images, "
              "or deploy the float32 model", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""INT8 post-training static quantization of an exported detector (``d2af export --format onnx``)
with onnxruntime's quantizer, calibrated on real images; no torch, no detectron2.

    d2af quantize --model output/fcos_onnx/model.onnx --output output/fcos_onnx/model_int8.onnx \\
        --calibration datasets/trees/train.json --calibration-images 64 \\
        --coco-json datasets/trees/val.json --max-ap-drop 1.0

(``python -m d2_anchorfree.runtime.quantize_onnx`` takes the same arguments.)

What is quantized: the convolutions of the backbone, the FPN and the head towers, with the ReLUs,
additions, max pooling and upsampling between them (:data:`FEATURE_OPS`), QDQ format
(QuantizeLinear / DequantizeLinear pairs, which onnxruntime fuses into integer kernels), weights
int8 per output channel, activations uint8 per tensor with ranges from the calibration images
(min/max). What stays float32: the head's output layers (the convolutions from which no other
convolution is reachable: class logits, box distances, centerness, DFL distributions, 3D max
filtering's last conv; quantizing them costs AP), every normalization, the scoring rule, box
decoding, candidate selection, top-k and NMS, and deformable convolutions.

Calibration images go through the runtime's own preprocessing (``predict_onnx``: BGR, resized to
the model's test size), so the ranges are those the deployed model sees. With ``--coco-json`` the
float32 and INT8 models are both evaluated on that dataset (COCO AP, pycocotools, as ``d2af
predict-onnx --evaluate``); an AP drop above ``--max-ap-drop`` points makes the exit code 1 and
says so: the INT8 file is written but flagged, never passed off as equivalent.
"""
import argparse
import json
import os
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

import numpy as np

from .predict_onnx import coco_results, evaluate, list_inputs, load_model, predict, read_bgr, resize, test_size

QUANTIZED_OPS = ("Conv",)
# Ops quantized along with the convolutions inside the feature part of the graph (backbone, FPN,
# towers), so that onnxruntime fuses each DequantizeLinear -> Conv -> QuantizeLinear chain into
# an integer convolution: the activation after a conv, residual and top-down additions, the stem's
# max pooling, the FPN's upsampling. Normalizations that do not fold into a conv (GroupNorm's
# InstanceNormalization) stay float and break such chains.
FEATURE_OPS = ("Conv", "Relu", "Clip", "Add", "MaxPool", "Resize")


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


def coco_ap(model_path: str, coco_json: str, image_root: str = "", threads: int = 0) -> Dict[str, float]:
    """COCO box AP / AP50 / AP75 (percent) of ``model_path`` on the images of ``coco_json``, as
    ``d2af predict-onnx --coco-json ... --evaluate``.

    Raises:
        ValueError: an image of the json cannot be read (named).
    """
    session, meta = load_model(model_path, threads)
    files, names, ids = list_inputs("", coco_json, image_root)
    results = []
    for path, name in zip(files, names):
        try:
            image = read_bgr(path)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e
        results += coco_results(*predict(session, meta, image), meta, image_id=ids[name])
    return evaluate(coco_json, results, meta["coco_max_dets_per_image"])


def main(argv: Optional[Sequence[str]] = None, prog: Optional[str] = None) -> int:
    """Quantize, then (with ``--coco-json``) compare float32 and INT8 COCO AP.

    Returns:
        0; 1 when the INT8 AP is more than ``--max-ap-drop`` below the float32 AP (the INT8 file
        is written and the drop printed).

    Raises:
        ValueError: too few calibration images, a model without d2_anchorfree metadata.
        FileNotFoundError: no calibration image found.
    """
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", required=True, help="float32 model.onnx written by d2af export")
    p.add_argument("--output", required=True, help="the INT8 .onnx to write")
    p.add_argument("--calibration", required=True,
                   help="calibration images: a COCO json (its images, e.g. the training set's), a folder or a quoted glob")
    p.add_argument("--calibration-root", default="", help="image folder of a --calibration json (default: <json dir>/images)")
    p.add_argument("--calibration-images", type=int, default=64, help="how many calibration images (default 64)")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (default: per channel)")
    p.add_argument("--coco-json", default="", help="evaluate float32 and INT8 on this COCO json")
    p.add_argument("--image-root", default="", help="image folder of --coco-json (default: <json dir>/images)")
    p.add_argument("--max-ap-drop", type=float, default=1.0, help="AP points INT8 may lose (default 1.0)")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads for evaluation")
    args = p.parse_args(argv)
    _, meta = load_model(args.model)
    is_json = args.calibration.endswith(".json")
    paths, _, _ = list_inputs("" if is_json else args.calibration, args.calibration if is_json else "",
                              args.calibration_root)
    images = calibration_images(paths, meta, args.calibration_images)
    folder = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(folder, exist_ok=True)
    entry = quantize(args.model, args.output, images, per_channel=not args.per_tensor)
    print(f"wrote {args.output}: {entry['quantized_convs']} convolutions int8, "
          f"{len(entry['float_output_convs'])} output convolutions float32, {len(images)} calibration images")
    if not args.coco_json:
        return 0
    fp32 = coco_ap(args.model, args.coco_json, args.image_root, args.threads)
    int8 = coco_ap(args.output, args.coco_json, args.image_root, args.threads)
    drop = fp32["AP"] - int8["AP"]
    print(f"COCO AP float32 {fp32['AP']:.2f} (AP50 {fp32['AP50']:.2f}), INT8 {int8['AP']:.2f} "
          f"(AP50 {int8['AP50']:.2f}): {drop:.2f} points lost")
    with open(os.path.splitext(args.output)[0] + "_ap.json", "w") as f:
        json.dump({"float32": fp32, "int8": int8, "max_ap_drop": args.max_ap_drop}, f)
    if not drop <= args.max_ap_drop:  # also NaN: no detection to compare
        print(f"INT8 REJECTED: it loses {drop:.2f} AP points (more than --max-ap-drop {args.max_ap_drop}, "
              "or nothing to compare); "
              "use more or other calibration images, or deploy the float32 model", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

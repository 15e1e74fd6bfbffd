"""Deployment: the whole inference of a detector as one traced graph (TorchScript or ONNX).

``graph.InferenceGraph`` is the computation (uint8 image -> boxes, scores, classes);
``exporter`` traces it with tracer warnings as errors and writes the files. The runtime that
needs neither torch nor detectron2 is :mod:`d2_anchorfree.runtime.predict_onnx` (``d2af predict-onnx``).
"""
from .exporter import (DEFAULT_OPSET, DEFORM_CONV_OPSET, HARMLESS_TRACER_WARNINGS, ExportTraceError,
                       deform_conv2d_symbolic, export_model, export_onnx, export_torchscript,
                       traced_warnings, uses_deform_conv)
from .graph import GRAPH_INPUT, GRAPH_OUTPUTS, InferenceGraph, graph_metadata

__all__ = [
    "DEFAULT_OPSET", "DEFORM_CONV_OPSET", "GRAPH_INPUT", "GRAPH_OUTPUTS", "HARMLESS_TRACER_WARNINGS",
    "ExportTraceError", "InferenceGraph", "deform_conv2d_symbolic", "export_model", "export_onnx",
    "export_torchscript", "graph_metadata", "traced_warnings", "uses_deform_conv",
]

"""Export a detector's :class:`~d2_anchorfree.export.graph.InferenceGraph` to TorchScript or ONNX.

Both formats come from tracing (``torch.jit.trace``; ``torch.onnx.export`` with the TorchScript
exporter, ``dynamo=False``) with every ``TracerWarning`` recorded: a warning means Python saw a
traced value (a data-dependent branch, a size frozen into the trace) and the file would be wrong
for other inputs, so export stops with :class:`ExportTraceError` naming the file and line.
The only exceptions are the library checks listed in :data:`HARMLESS_TRACER_WARNINGS`, each a
size assertion or an implementation switch that cannot change the traced computation.

ONNX specifics: opset 19 by default (``DeformConv``, needed by VFNet's star-shaped deformable
conv, DCN towers and TOOD's task-aligned sampling, exists from opset 19 and onnxruntime runs it);
``torchvision::deform_conv2d`` is mapped to it by :func:`deform_conv2d_symbolic`, torchvision's own
symbolic maps ``torchvision::nms`` to ``NonMaxSuppression``. The image's height and width are
dynamic axes, as is the number of detections.

detectron2's ``TracingAdapter`` is not used: it flattens dict/``Instances`` inputs and outputs,
and the graph's input and outputs are already plain tensors.
"""
import json
import linecache
import os
import warnings
from typing import Dict, List, Optional, Tuple

import torch
from torch import nn

from .graph import GRAPH_INPUT, GRAPH_OUTPUTS, InferenceGraph, graph_metadata

__all__ = [
    "DEFORM_CONV_OPSET",
    "DEFAULT_OPSET",
    "ExportTraceError",
    "HARMLESS_TRACER_WARNINGS",
    "deform_conv2d_symbolic",
    "export_onnx",
    "export_torchscript",
    "optional_import",
    "traced_warnings",
    "uses_deform_conv",
]

DEFORM_CONV_OPSET = 19  # ONNX DeformConv was added in opset 19
DEFAULT_OPSET = 19

# (file path suffix, text of the source line): tracer warnings that cannot change the traced
# computation, in libraries we do not own. Matched on the source line, not its number, so that
# detectron2 v0.6 and main (different line numbers) are covered alike.
HARMLESS_TRACER_WARNINGS: Tuple[Tuple[str, str, str], ...] = (
    ("detectron2/layers/wrappers.py", "x.numel() == 0 and self.training",
     "Conv2d's empty-input check, training only"),
    ("detectron2/structures/image_list.py", "t.shape[:-2] == tensors[0].shape[:-2]",
     "ImageList's assert that the images agree in channels (one image here)"),
    ("torch/nn/functional.py", "size_prods == 1",
     "GroupNorm / BatchNorm's 'more than 1 value per channel' size check, raising only"),
    ("torchvision/ops/deform_conv.py", "n_offset_grps == 0",
     "deform_conv2d's offset-channel check, raising only"),
)


class ExportTraceError(RuntimeError):
    """Tracing met Python code that depends on traced values; the message lists each warning
    as ``file:line: source line: message``."""


def _is_harmless(warning: warnings.WarningMessage) -> bool:
    path = warning.filename.replace(os.sep, "/")
    line = linecache.getline(warning.filename, warning.lineno)
    return any(path.endswith(suffix) and text in line for suffix, text, _ in HARMLESS_TRACER_WARNINGS)


def traced_warnings(records: List[warnings.WarningMessage]) -> List[str]:
    """The ``TracerWarning`` s among ``records`` that are not in :data:`HARMLESS_TRACER_WARNINGS`,
    each as ``"file:line: source line: message"`` (deduplicated, in order)."""
    found = []
    for w in records:
        if issubclass(w.category, torch.jit.TracerWarning) and not _is_harmless(w):
            line = linecache.getline(w.filename, w.lineno).strip()
            text = f"{w.filename}:{w.lineno}: {line}: {str(w.message).splitlines()[0]}"
            if text not in found:
                found.append(text)
    return found


class _RaiseOnTracerWarnings:
    """Context manager recording warnings and raising :class:`ExportTraceError` at exit when a
    non-harmless ``TracerWarning`` was among them. Other warnings are re-emitted, except
    ``DeprecationWarning`` s (of the TorchScript tracer and exporter, which export uses on purpose)."""

    def __init__(self, what: str):
        self.what = what

    def __enter__(self):
        self._context = warnings.catch_warnings(record=True)
        self.records = self._context.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, exc_type, exc, tb):
        self._context.__exit__(exc_type, exc, tb)
        for w in self.records:  # deprecations: the TorchScript tracer and exporter, used on purpose
            if not issubclass(w.category, (torch.jit.TracerWarning, DeprecationWarning)):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        if exc_type is not None:
            return False
        bad = traced_warnings(self.records)
        if bad:
            raise ExportTraceError(
                f"tracing {self.what} met Python code that depends on traced values (the export "
                f"would be wrong for other inputs):\n  " + "\n  ".join(bad))
        return False


def optional_import(name: str):
    """Import an optional export dependency (onnx, onnxruntime).

    Raises:
        ImportError: it is missing, with the command that installs it.
    """
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ImportError(f"{name} is needed for ONNX export and inference: pip install -e .[export] "
                          "(or the pinned requirements-extra.txt)") from e


def _check_sample(image: torch.Tensor) -> None:
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[2] != 3:
        raise ValueError(f"the sample image must be uint8 [H, W, 3] (BGR), got {image.dtype} {tuple(image.shape)}")


def uses_deform_conv(traced: torch.jit.ScriptModule) -> bool:
    """Whether a traced module runs ``torchvision::deform_conv2d`` (DCN towers, VFNet's star
    conv, TOOD's task-aligned sampling), read from its graph rather than guessed from module types.

    Args:
        traced: the result of ``torch.jit.trace``.
    """
    return any(node.kind() == "torchvision::deform_conv2d" for node in traced.inlined_graph.nodes())


def export_torchscript(model: nn.Module, sample_image: torch.Tensor, path: str,
                       metadata: Optional[Dict[str, str]] = None) -> torch.jit.ScriptModule:
    """Trace ``InferenceGraph(model)`` on ``sample_image`` and save it to ``path``.

    Args:
        model: an ``AnchorFreeDetector`` (switched to ``eval()``).
        sample_image: uint8 [H, W, 3] BGR; the trace is valid for every size.
        path: output file (e.g. ``model.ts``); its folder must exist.
        metadata: saved as extra files of the archive (``torch.jit.load(..., _extra_files=)``).

    Returns:
        the traced module.

    Raises:
        ValueError: a bad sample image. ExportTraceError: see the module docstring.
    """
    _check_sample(sample_image)
    graph = InferenceGraph(model.eval())
    with torch.no_grad(), _RaiseOnTracerWarnings(f"{type(model).__name__} for TorchScript"):
        traced = torch.jit.trace(graph, (sample_image,), check_trace=False)
    extra = {f"{key}.json": value for key, value in (metadata or {}).items()}
    torch.jit.save(traced, path, _extra_files=extra)
    return traced


def deform_conv2d_symbolic(g, input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w,
                           dil_h, dil_w, n_weight_grps, n_offset_grps, use_mask):
    """ONNX symbolic of ``torchvision::deform_conv2d`` for the TorchScript exporter: ONNX
    ``DeformConv`` (opset 19; same offset layout: per kernel position (dy, dx) pairs, in input
    pixels; the mask is the optional 5th input, DCNv2). torchvision registers symbolics for nms
    and roi_align only; the dynamo exporter's table (onnxscript) has the same mapping."""
    from torch.onnx import symbolic_helper

    args = [symbolic_helper._maybe_get_const(v, "i") for v in
            (stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, n_weight_grps, n_offset_grps)]
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, n_weight_grps, n_offset_grps = (int(a) for a in args)
    inputs = [input, weight, offset, bias]
    if bool(symbolic_helper._maybe_get_const(use_mask, "b")):
        inputs.append(mask)
    return g.op("DeformConv", *inputs, dilations_i=[dil_h, dil_w], strides_i=[stride_h, stride_w],
                pads_i=[pad_h, pad_w, pad_h, pad_w], group_i=n_weight_grps, offset_group_i=n_offset_grps)


def export_onnx(model: nn.Module, sample_image: torch.Tensor, path: str, opset: int = DEFAULT_OPSET,
                metadata: Optional[Dict[str, str]] = None, detector_name: str = "") -> None:
    """Export ``InferenceGraph(model)`` to ONNX at ``path`` (input "image" uint8 [H, W, 3] with
    dynamic H and W; outputs "boxes" [D, 4], "scores" [D], "classes" [D] with dynamic D).

    Args:
        model: an ``AnchorFreeDetector`` (switched to ``eval()``).
        sample_image: uint8 [H, W, 3] BGR used for tracing.
        path: output ``.onnx`` file; its folder must exist.
        opset: ONNX opset, >= 11 (NonMaxSuppression, dynamic TopK); >= 19 for deformable convs.
        metadata: string key/values stored in the model's ``metadata_props``.
        detector_name: named in errors (e.g. the META_ARCHITECTURE).

    Registers :func:`deform_conv2d_symbolic` with ``torch.onnx`` for opset 19 (process-wide and
    idempotent: the TorchScript exporter keeps its symbolics in a global table).

    Raises:
        ValueError: a bad sample image; ``opset`` below 19 for a model with deformable
            convolutions (naming the op, the detector and the opset it needs).
        ImportError: onnx is not installed (with the install command).
        ExportTraceError: see the module docstring.
    """
    onnx = optional_import("onnx")

    _check_sample(sample_image)
    name = detector_name or type(model).__name__
    if opset < 11:
        raise ValueError(f"ONNX export needs opset >= 11 (NonMaxSuppression, TopK with a dynamic k), got {opset}")
    graph = InferenceGraph(model.eval())
    if opset < DEFORM_CONV_OPSET:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            probe = torch.jit.trace(graph, (sample_image,), check_trace=False)
        if uses_deform_conv(probe):
            raise ValueError(
                f"{name} uses deformable convolution (torchvision::deform_conv2d), which ONNX has as "
                f"DeformConv from opset {DEFORM_CONV_OPSET} on; got --opset {opset}. Export with opset "
                f">= {DEFORM_CONV_OPSET} (onnxruntime runs it on the CPU) or use --format torchscript.")
    torch.onnx.register_custom_op_symbolic("torchvision::deform_conv2d", deform_conv2d_symbolic, DEFORM_CONV_OPSET)
    with torch.no_grad(), _RaiseOnTracerWarnings(f"{name} for ONNX"):
        torch.onnx.export(
            graph, (sample_image,), path, dynamo=False, opset_version=opset,
            input_names=[GRAPH_INPUT], output_names=list(GRAPH_OUTPUTS),
            dynamic_axes={GRAPH_INPUT: {0: "height", 1: "width"}, "boxes": {0: "detections"},
                          "scores": {0: "detections"}, "classes": {0: "detections"}})
    proto = onnx.load(path)
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, path)


def export_model(cfg, model: nn.Module, fmt: str, output_dir: str, sample_image: torch.Tensor,
                 opset: int = DEFAULT_OPSET, classes: Optional[dict] = None,
                 best_f1_score_threshold: Optional[float] = None) -> str:
    """Export ``model`` (built from ``cfg``, weights loaded) as ``<output_dir>/model.onnx`` or
    ``model.ts``, with :func:`~d2_anchorfree.export.graph.graph_metadata` embedded, and write
    ``<output_dir>/metadata.json`` (the same, readable).

    Args:
        cfg: the config. model: the detector. fmt: "onnx" or "torchscript".
        output_dir: created if missing. sample_image: uint8 [H, W, 3] BGR. opset: ONNX only.
        classes: the class names and category ids to embed (the weights file's), see
            :func:`~d2_anchorfree.export.graph.graph_metadata`.
        best_f1_score_threshold: the weights' saved best-F1 threshold to embed, or None.

    Returns:
        the path of the written model file.

    Raises:
        ValueError: an unknown ``fmt``; see :func:`export_onnx`, :func:`export_torchscript`.
    """
    if fmt not in ("onnx", "torchscript"):
        raise ValueError(f"--format must be 'onnx' or 'torchscript', got {fmt!r}")
    os.makedirs(output_dir, exist_ok=True)
    metadata = graph_metadata(cfg, model, fmt, classes, best_f1_score_threshold)
    if fmt == "onnx":
        path = os.path.join(output_dir, "model.onnx")
        export_onnx(model, sample_image, path, opset, metadata, cfg.MODEL.META_ARCHITECTURE)
    else:
        path = os.path.join(output_dir, "model.ts")
        export_torchscript(model, sample_image, path, metadata)
    with open(os.path.join(output_dir, "metadata.json"), "w") as f:
        json.dump(json.loads(metadata["d2af_metadata"]), f, indent=1)
    return path

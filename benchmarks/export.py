"""CPU latency of the detectors' exported inference, side by side in one run: eager PyTorch
(``InferenceGraph`` called under ``torch.no_grad()``: exactly the computation that is exported),
onnxruntime (``CPUExecutionProvider``) on the exported ONNX file and the TorchScript file
(``torch.jit.load``). Prints a Markdown table and writes the raw timings to a JSON file.

The numbers of docs/benchmarks/export_speed.json (tiny FCOS with trained weights, R-50 FCOS
randomly initialized, 512x512 and 800x1333, 2 threads) come from::

    nice -n 5 python tools/benchmark_export.py --weights output/fcos_tiny/model_final.pth \\
        --runs 5 --warmup 2 --threads 2 --profile --profile-runs 1 --out docs/benchmarks/export_speed.json

and those of docs/benchmarks/export_speed_r50_1thread.json (R-50 at one thread, with the
backbone + FPN timed alone) from::

    nice -n 5 python tools/benchmark_export.py --models R50 --threads 1 --runs 5 --warmup 1 --parts --profile \\
        --out docs/benchmarks/export_speed_r50_1thread.json

and those of docs/benchmarks/export_speed_openvino.json (onnxruntime and OpenVINO, float32 and
INT8, side by side; the tiny FCOS with GroupNorm and with BatchNorm heads, randomly initialized)
from::

    python -m benchmarks.export --weights output/fcos_tiny/model_final.pth --models tiny,R50,tiny-GN,tiny-BN \
        --sizes 400x400,800x1333 --int8 16 --openvino --no-torchscript --runs 5 --warmup 1 --threads 2 \
        --out docs/benchmarks/export_speed_openvino.json

and those of docs/benchmarks/export_speed_nncf.json (OpenVINO on float32, the QDQ INT8 file and
NNCF's INT8 IR of the trained tiny FCOS) from::

    python -m benchmarks.export --weights output/fcos_tiny/model_final.pth --models tiny \\
        --sizes 400x400,800x1333 --int8 16 --openvino --nncf --no-torchscript --runs 7 --warmup 1 --threads 2 \\
        --out docs/benchmarks/export_speed_nncf.json

Other uses (``d2af benchmark export`` and ``python -m benchmarks.export`` take the same
arguments as ``python tools/benchmark_export.py``)::

    d2af benchmark export --quick                       # smoke run (tiny model only, ~1 min)
    d2af benchmark export --models R50 --sizes 512x512 --ort-level disable   # no graph fusions
    d2af benchmark export --models R50 --opts MODEL.DENSE.SCORE_THRESH_TEST 0.0  # worst-case NMS

How it measures:

* Input: one uint8 BGR image at each size (H x W), a real tree image
  (``datasets/trees/images/``, the first in sorted order unless ``--image``) tiled, not resized,
  to the size so that the crowns keep the pixel size the tiny model was trained on. Without the
  dataset a seeded random image is used (noted in the JSON, "image": "synthetic").
* Each model is exported once (ONNX opset 19 with dynamic H/W, and TorchScript, both traced on a
  512x512 crop) and every backend gets a fresh session / loaded module per size.
* Repetition ``i`` runs every backend of every model once, the order rotated by ``i`` (tiny
  eager, tiny ort, R50 eager, R50 ort; tiny ort, R50 eager, R50 ort, tiny eager; ...), so that a
  busy spell of the shared machine lands on all models and backends alike and rows of different
  models compare as fairly as one model's backends; the first ``--warmup`` repetitions are
  dropped. All the models' sessions are open at once (memory: their sum). Times are wall-clock per call (``time.perf_counter``),
  in ms, as median [min-max] over ``--runs``.
* Threads: ``torch.set_num_threads(T)`` for eager and TorchScript; onnxruntime
  ``intra_op_num_threads = T``, ``inter_op_num_threads = 1``, sequential execution,
  ``graph_optimization_level`` from ``--ort-level`` (default "all" = ORT_ENABLE_ALL).
* ``--openvino``: OpenVINO's CPU plugin on the same ONNX files (``predict_onnx.open_session``:
  ``INFERENCE_NUM_THREADS = T``, float32 inference precision, latency hint), and with
  ``--int8`` on the INT8 QDQ file, which OpenVINO runs with its own INT8 kernels.
* ``--nncf`` (with ``--int8`` and ``--openvino``): the whole graph also quantized by NNCF
  (``quantize_onnx.quantize_nncf_graph``, the same calibration tiles) and its OpenVINO IR timed
  in OpenVINO as "openvino-nncf-int8".
* "x eager" = eager's median / the backend's median; "paired" = the median over repetitions of
  eager's time / the backend's time in the same repetition (less sensitive to load drifts).
  Interleaving does not make the backends equally sensitive to load: on a busy machine (other
  processes on the same cores) eager PyTorch with 2 OpenMP threads slowed down far more than
  onnxruntime (R-50 512x512 eager 5.0 s at 2 threads vs 1.5 s at 1 thread), so check the
  load average printed with the table, and ``--threads 1``, before reading a ratio as the
  runtimes' own.
* Detections: the number of boxes each backend returned on the image. An untrained model's
  score-threshold candidates (and so the NMS cost) differ from a trained one's: with random
  init FCOS' prior-probability bias keeps nearly every score below SCORE_THRESH_TEST, so the
  R-50 rows time a near-empty NMS.
* ``--parts``: also time the backbone + FPN alone (``model.backbone`` on the normalized, padded
  float image, exported the same way) in all three backends; "rest" = whole - backbone is the
  head, candidate selection, box decoding and NMS.
* ``--profile``: after the timing, the whole graph runs ``--profile-runs`` more times (after
  one dropped call) in a profiling onnxruntime session (node times summed by op type) and in
  eager PyTorch under ``torch.profiler`` (self CPU time summed by aten op); the top ops go to
  the JSON ("profile") and are printed, and onnxruntime's node time is also split by the
  module a node was exported from (backbone, head, rest: pre/post-processing and layout
  reorders). Profiling adds overhead: compare shares, not ms.
"""
import argparse
import glob
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from benchmarks import REPO, cpu_description, describe_cpu, write_json_report
from benchmarks.inputs import parse_size
from benchmarks.report import markdown_table
from benchmarks.timing import interleaved, summarize

MODELS = {
    "tiny": "configs/FCOS/FCOS_tiny_R_18_cpu.yaml",
    "R50": "configs/FCOS/FCOS_R_50_FPN_1x.yaml",
    # the head-norm comparison: the tiny FCOS randomly initialized (seed 0) with its GroupNorm
    # towers (the default) and with BatchNorm towers, which the export folds into the convolutions
    "tiny-GN": "configs/FCOS/FCOS_tiny_R_18_cpu.yaml",
    "tiny-BN": "configs/FCOS/FCOS_tiny_R_18_cpu.yaml",
    # NMS-free by dual assignment: inference from the one-to-one branch (no NMS node) and the same
    # weights with NMS; give trained weights with --model-weights tiny-dual=PATH (random ones
    # score below the threshold, and NMS then has nothing to do)
    "tiny-dual": "configs/compositions/GFL_Dual_tiny_R_18_cpu.yaml",
    "tiny-dual+NMS": "configs/compositions/GFL_Dual_tiny_R_18_cpu.yaml",
    # the real-time family (configs/realtime/: RegNetX-200MF from timm, BatchNorm towers); give
    # trained weights with --model-weights rt-gfl=PATH ...
    "rt-gfl": "configs/realtime/GFL_RegNetX_002_cpu.yaml",
    # ... and the same config without PANet's bottom-up path (MODEL.FPN.BOTTOM_UP_PATH False: the
    # plain FPN), to time what the path costs; its own weights: --model-weights rt-gfl-fpn=PATH
    "rt-gfl-fpn": "configs/realtime/GFL_RegNetX_002_cpu.yaml",
    # ... and the config's weights with score voting after NMS (MODEL.DENSE.SCORE_VOTING_SIGMA
    # 0.1), to time what voting costs (rt-gfl's --model-weights)
    "rt-gfl+vote": "configs/realtime/GFL_RegNetX_002_cpu.yaml",
    # ... and the config's weights NMS-free by score peaks (GFL_Peaks_RegNetX_002_cpu.yaml: a max
    # pooling in place of the NMS), to time NMS against peaks (rt-gfl's --model-weights)
    "rt-gfl+peaks": "configs/realtime/GFL_Peaks_RegNetX_002_cpu.yaml",
    "rt-defcn": "configs/realtime/DeFCN_RegNetX_002_cpu.yaml",
    "rt-dual": "configs/realtime/GFL_Dual_RegNetX_002_cpu.yaml",
}
MODEL_OPTS = {"tiny-GN": ["MODEL.DENSE.NORM", "GN"], "tiny-BN": ["MODEL.DENSE.NORM", "BN"],
              "tiny-dual+NMS": ["MODEL.DENSE.POSTPROCESS", "nms"],
              "rt-gfl-fpn": ["MODEL.FPN.BOTTOM_UP_PATH", "False"],
              "rt-gfl+vote": ["MODEL.DENSE.SCORE_VOTING_SIGMA", "0.1"]}
# models that take the weights of another entry of --model-weights
SHARED_WEIGHTS = {"tiny-dual+NMS": "tiny-dual", "rt-gfl+vote": "rt-gfl", "rt-gfl+peaks": "rt-gfl"}
BACKENDS = ("eager", "onnxruntime", "torchscript", "onnxruntime-int8", "openvino", "openvino-int8", "openvino-nncf-int8")
ORT_LEVELS = ("disable", "basic", "extended", "all")
EXPORT_SIZE = (512, 512)  # the traced sample; the graphs are valid for every size


def parse_args(argv=None, prog=None):
    """The command line (see the module docstring); ``prog``: the program name of the usage."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    csv = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    p.add_argument("--models", type=csv, default=list(MODELS), help=f"comma list of {','.join(MODELS)}")
    p.add_argument("--sizes", type=csv, default=["512x512", "800x1333"], help="comma list of HxW")
    p.add_argument("--weights", default="", help="trained weights of the tiny model (default: random init; R-50 is always random)")
    p.add_argument("--model-weights", nargs="*", default=[], metavar="NAME=PATH",
                   help="trained weights of other --models entries (e.g. tiny-dual=output/dual/model_final.pth; "
                        "tiny-dual+NMS uses tiny-dual's)")
    p.add_argument("--image", default="", help="a BGR image file (default: first of datasets/trees/images/)")
    p.add_argument("--runs", type=int, default=6, help="timed repetitions per model and size")
    p.add_argument("--warmup", type=int, default=2, help="untimed repetitions before them")
    p.add_argument("--threads", type=int, default=2, help="torch threads and onnxruntime intra-op threads")
    p.add_argument("--ort-level", choices=ORT_LEVELS, default="all",
                   help="onnxruntime graph_optimization_level (default: all = ORT_ENABLE_ALL)")
    p.add_argument("--no-mem-arena", action="store_true", help="onnxruntime enable_cpu_mem_arena = False")
    p.add_argument("--parts", action="store_true", help="also time backbone + FPN alone in every backend")
    p.add_argument("--profile", action="store_true",
                   help="onnxruntime node times by op type and eager self times by aten op (whole graph)")
    p.add_argument("--profile-runs", type=int, default=2, help="with --profile: profiled calls per model, size and backend")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY VALUE",
                   help="extra config options for every model, e.g. MODEL.DENSE.SCORE_THRESH_TEST 0.0 "
                        "(every candidate up to TOPK_CANDIDATES_TEST reaches NMS: its worst case)")
    p.add_argument("--int8", type=int, default=0, metavar="N",
                   help="also time the INT8 ONNX graph (d2_anchorfree.runtime.quantize_onnx), calibrated on "
                        "N tree images tiled to the traced size (0: off)")
    p.add_argument("--openvino", action="store_true",
                   help="also time OpenVINO (CPU plugin, float32 precision, latency hint, INFERENCE_NUM_THREADS = "
                        "--threads) on the ONNX graph, and with --int8 on the INT8 graph")
    p.add_argument("--nncf", action="store_true",
                   help="with --int8 and --openvino: also time NNCF's INT8 OpenVINO IR of the whole graph "
                        "(quantize_onnx --quantizer nncf, the same calibration tiles)")
    p.add_argument("--no-torchscript", action="store_true", help="leave the TorchScript backend out")
    p.add_argument("--workdir", default="", help="where the exported files go (default: a temporary folder)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny model, 512x512, 2 runs, 1 warm-up, JSON to output/ (unless given explicitly)")
    p.add_argument("--out", default="docs/benchmarks/export_speed.json", help="JSON output ('' for none)")
    args = p.parse_args(argv)
    if args.quick:  # smaller defaults; options given explicitly win
        quick = {"models": ["tiny"], "sizes": ["512x512"], "runs": 2, "warmup": 1, "out": "output/export_speed_quick.json"}
        for key, value in quick.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    if args.nncf and not (args.int8 and args.openvino):
        p.error("--nncf needs --int8 N and --openvino")
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        p.error(f"unknown --models {unknown}; choose from {list(MODELS)}")
    return args


# ----------------------------------------------------------------------------- inputs


def default_image() -> str:
    """The first tree image (sorted) under ``datasets/trees/images/`` of the working directory
    or the repository; "" when there is none."""
    for root in (os.getcwd(), REPO):
        files = sorted(glob.glob(os.path.join(root, "datasets", "trees", "images", "*.png")))
        if files:
            return files[0]
    return ""


def make_image(path: str, height: int, width: int) -> np.ndarray:
    """uint8 BGR [height, width, 3]: the image at ``path`` tiled (repeated, then cropped) to the
    size, or a seeded random image when ``path`` is ""."""
    if not path:
        return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    import cv2

    tile = cv2.imread(path, cv2.IMREAD_COLOR)
    if tile is None:
        raise FileNotFoundError(f"cannot read image {path}")
    reps = (-(-height // tile.shape[0]), -(-width // tile.shape[1]), 1)
    return np.ascontiguousarray(np.tile(tile, reps)[:height, :width])


# ----------------------------------------------------------------------------- models


def model_weights(name: str, weights: str, named: List[str]) -> str:
    """The weights file of ``name``: ``weights`` for "tiny", else its (or :data:`SHARED_WEIGHTS`'
    entry's) NAME=PATH in ``named``, else "" (random init).

    Raises:
        ValueError: an entry of ``named`` without "=" or naming an unknown model.
    """
    pairs = {}
    for item in named:
        key, sep, path = item.partition("=")
        if not sep or key not in MODELS:
            raise ValueError(f"--model-weights {item!r}: expected NAME=PATH with NAME one of {list(MODELS)}")
        pairs[key] = path
    if name == "tiny":
        return weights
    return pairs.get(name, pairs.get(SHARED_WEIGHTS.get(name, ""), ""))


def build_detector(name: str, weights: str, extra_opts: Optional[List[str]] = None):
    """The detector ``name`` of :data:`MODELS` on the CPU, in eval mode, with ``weights`` when
    given (:func:`model_weights`), otherwise (R-50: no pretrained weights here) randomly initialized (``torch.manual_seed(0)`` first); :data:`MODEL_OPTS` of ``name``, then
    ``extra_opts`` (KEY VALUE ...) merged last. Returns (model, weights used or "random init")."""
    from detectron2.modeling import build_model

    from d2_anchorfree.checkpoint import load_inference_weights
    from d2_anchorfree.engine import setup_cfg

    config = os.path.join(REPO, MODELS[name])
    # No dataset is read: REGISTER_COCO cleared so that the tiny config builds without datasets/.
    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "DATASETS.REGISTER_COCO", "[]", *MODEL_OPTS.get(name, []),
            *(extra_opts or [])]
    cfg = setup_cfg(argparse.Namespace(config_file=config, opts=opts), default_setup_logging=False)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    used = weights
    load_inference_weights(model, used, allow_untrained=True)
    return model, used or "random init"


class BackboneGraph(torch.nn.Module):
    """``model.backbone`` on a normalized, padded float image [1, 3, H, W], returning the head's
    feature maps as a tuple (the part of ``InferenceGraph`` timed by ``--parts``)."""

    def __init__(self, model):
        super().__init__()
        self.backbone = model.backbone
        self.names = list(model.head_in_features)

    def forward(self, x: torch.Tensor):
        features = self.backbone(x)
        return tuple(features[f] for f in self.names)


def backbone_input(model, image: np.ndarray) -> torch.Tensor:
    """What ``InferenceGraph`` feeds the backbone for ``image`` (uint8 BGR HW3)."""
    chw = torch.from_numpy(image).permute(2, 0, 1)
    if model.input_format == "RGB":
        chw = chw.flip(0)
    with torch.no_grad():
        return model.preprocess_image([{"image": chw.to(model.pixel_mean.dtype)}]).tensor.contiguous()


def export_all(name: str, model, sample: np.ndarray, workdir: str, parts: bool, int8: int = 0,
               nncf: bool = False) -> Dict[str, str]:
    """Export the whole graph (ONNX + TorchScript, via ``d2_anchorfree.export``), with ``int8``
    > 0 its INT8 ONNX graph calibrated on that many tree tiles (and with ``nncf`` NNCF's INT8
    OpenVINO IR calibrated on the same tiles), and, with ``parts``, the backbone alone; returns
    {key: path} with keys onnx, ts, onnx-int8, ov-nncf-int8, backbone.onnx, backbone.ts and the
    export (and quantization) times in seconds under "seconds"."""
    from d2_anchorfree.export import export_onnx, export_torchscript

    paths, seconds = {}, {}
    image = torch.from_numpy(sample)
    start = time.perf_counter()
    paths["onnx"] = os.path.join(workdir, f"{name}.onnx")
    export_onnx(model, image, paths["onnx"])
    seconds["onnx"] = time.perf_counter() - start
    start = time.perf_counter()
    paths["ts"] = os.path.join(workdir, f"{name}.ts")
    export_torchscript(model, image, paths["ts"])
    seconds["ts"] = time.perf_counter() - start
    if parts:
        graph, x = BackboneGraph(model).eval(), backbone_input(model, sample)
        outputs = [f"f{i}" for i in range(len(graph.names))]
        axes = {"x": {2: "height", 3: "width"}, **{o: {2: f"{o}_h", 3: f"{o}_w"} for o in outputs}}
        paths["backbone.onnx"] = os.path.join(workdir, f"{name}_backbone.onnx")
        paths["backbone.ts"] = os.path.join(workdir, f"{name}_backbone.ts")
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the same harmless library checks as the whole graph
            torch.onnx.export(graph, (x,), paths["backbone.onnx"], dynamo=False, opset_version=19,
                              input_names=["x"], output_names=outputs, dynamic_axes=axes)
            torch.jit.save(torch.jit.trace(graph, (x,), check_trace=False), paths["backbone.ts"])
    if int8:
        from d2_anchorfree.runtime.quantize_onnx import quantize_graph

        start = time.perf_counter()
        paths["onnx-int8"] = os.path.join(workdir, f"{name}_int8.onnx")
        tiles = calibration_tiles(int8, sample.shape[:2])
        quantize_graph(paths["onnx"], paths["onnx-int8"], tiles)
        seconds["onnx-int8"] = time.perf_counter() - start
        if nncf:
            from d2_anchorfree.runtime.quantize_onnx import quantize_nncf_graph

            start = time.perf_counter()
            paths["ov-nncf-int8"] = os.path.join(workdir, f"{name}_nncf_int8.xml")
            quantize_nncf_graph(paths["onnx"], paths["ov-nncf-int8"], tiles)
            seconds["ov-nncf-int8"] = time.perf_counter() - start
    paths["seconds"] = seconds
    return paths


def calibration_tiles(count: int, size: Tuple[int, int]) -> List[np.ndarray]:
    """``count`` tree images (sorted, from the folder of :func:`default_image`) tiled to ``size``
    (H, W); seeded random images without the dataset."""
    first = default_image()
    files = sorted(glob.glob(os.path.join(os.path.dirname(first), "*.png")))[:count] if first else []
    files += [""] * (count - len(files))
    return [make_image(f, *size) if f else np.random.default_rng(i).integers(0, 256, (*size, 3), dtype=np.uint8)
            for i, f in enumerate(files)]


# ----------------------------------------------------------------------------- backends


def ort_options(threads: int, level: str, mem_arena: bool, profile_prefix: str = ""):
    """onnxruntime ``SessionOptions``: ``threads`` intra-op, 1 inter-op, sequential execution,
    graph optimization ``level`` (one of :data:`ORT_LEVELS`), optional profiling."""
    import onnxruntime as ort

    levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = levels[level]
    so.enable_cpu_mem_arena = mem_arena
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return so


def make_runners(paths: Dict[str, str], model, args, part: str) -> Dict[str, Callable]:
    """{backend: fn(input) -> outputs} for ``part`` "whole" (input: uint8 HW3 numpy; outputs
    boxes, scores, classes) or "backbone" (input: float [1, 3, H, W] numpy). A fresh onnxruntime
    session, OpenVINO compiled model (``--openvino``; ``predict_onnx.open_session``) and freshly
    loaded TorchScript module, so that no size inherits another's state."""
    import onnxruntime as ort

    from d2_anchorfree.export import InferenceGraph

    prefix = "" if part == "whole" else "backbone."
    eager = InferenceGraph(model).eval() if part == "whole" else BackboneGraph(model).eval()
    scripted = None if args.no_torchscript else torch.jit.load(paths[prefix + "ts"])
    session = ort.InferenceSession(paths[prefix + "onnx"], ort_options(args.threads, args.ort_level, not args.no_mem_arena),
                                   providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name

    def run_torch(module):
        def run(x):
            with torch.no_grad():
                return [t.numpy() for t in module(torch.from_numpy(x))]
        return run

    runners = {"eager": run_torch(eager), "onnxruntime": lambda x: session.run(None, {feed: x})}
    if not args.no_torchscript:
        runners["torchscript"] = run_torch(scripted)
    if part == "whole" and "onnx-int8" in paths:
        int8 = ort.InferenceSession(paths["onnx-int8"], ort_options(args.threads, args.ort_level, not args.no_mem_arena),
                                    providers=["CPUExecutionProvider"])
        runners["onnxruntime-int8"] = lambda x: int8.run(None, {feed: x})
    if args.openvino:
        from d2_anchorfree.runtime.predict_onnx import open_session

        graphs = {"openvino": paths[prefix + "onnx"]}
        if part == "whole" and "onnx-int8" in paths:
            graphs["openvino-int8"] = paths["onnx-int8"]
        if part == "whole" and "ov-nncf-int8" in paths:
            graphs["openvino-nncf-int8"] = paths["ov-nncf-int8"]
        for backend, path in graphs.items():
            ov_session = open_session(path, args.threads, "openvino")[0]
            runners[backend] = lambda x, run=ov_session: list(run(x).values())
    return runners


def time_backends(runners: Dict[str, Callable], inputs: Dict[str, np.ndarray], runs: int, warmup: int):
    """Time every runner ``warmup + runs`` times on its input, interleaved
    (``benchmarks.timing.interleaved``: repetition ``i`` runs them all, the order rotated by ``i``).

    Args:
        runners: {label: fn(input) -> outputs}, e.g. one per (model, backend).
        inputs: {label: the input its runner takes} (the same keys).

    Returns:
        ({label: [seconds]}, {label: outputs of its last call}, {label: error} for a runner that
        raised).
    """
    last = {}

    def measure(entry):
        label = entry["label"]
        x = inputs[label]
        start = time.perf_counter()
        out = runners[label](x)
        elapsed = time.perf_counter() - start
        last[label] = out
        return {"total": elapsed}

    entries = [{"label": label} for label in runners]
    samples = interleaved(entries, rounds=runs, warmup=warmup, measure=measure)
    errors = {e["label"]: e["error"] for e in entries if "error" in e}
    return {label: samples[label].get("total", []) for label in runners}, last, errors


def ort_profile(path: str, x: np.ndarray, args, workdir: str, top: int = 12) -> Dict:
    """Run a profiling onnxruntime session on ``x`` once (dropped: first-call allocations) and
    ``args.profile_runs`` times more, and sum the node (kernel) times of those calls by op type.
    Returns {"runs", "total_ms" (per call), "by_op": [[op, ms per call, share], ...] (the top
    ``top``), "other_ms"}."""
    import onnxruntime as ort

    so = ort_options(args.threads, args.ort_level, not args.no_mem_arena,
                     profile_prefix=os.path.join(workdir, "ort_profile"))
    session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    for _ in range(1 + args.profile_runs):
        session.run(None, {feed: x})
    trace_file = session.end_profiling()
    with open(trace_file) as f:
        events = json.load(f)
    os.remove(trace_file)
    calls = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                   if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(calls) != 1 + args.profile_runs:
        raise RuntimeError(f"onnxruntime profile: expected {1 + args.profile_runs} model_run events, got {len(calls)}")
    kept = calls[1:]
    by_op: Dict[str, float] = {}
    by_scope: Dict[str, float] = {}
    for e in events:
        if (e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")
                and any(start <= e["ts"] <= end for start, end in kept)):
            op = e.get("args", {}).get("op_name", "?")
            ms = e["dur"] / 1000.0 / len(kept)
            by_op[op] = by_op.get(op, 0.0) + ms
            scope = node_scope(e["name"])
            by_scope[scope] = by_scope.get(scope, 0.0) + ms
    total = sum(by_op.values())
    ranked = sorted(by_op.items(), key=lambda kv: -kv[1])
    return {"runs": len(kept), "total_ms": total,
            "by_op": [[op, ms, ms / total if total else 0.0] for op, ms in ranked[:top]],
            "other_ms": sum(ms for _, ms in ranked[top:]),
            "by_scope": {k: [v, v / total if total else 0.0] for k, v in sorted(by_scope.items(), key=lambda kv: -kv[1])}}


def node_scope(name: str) -> str:
    """The detector part an exported node comes from, by the module path the TorchScript
    exporter writes into node names ("/backbone/bottom_up/res2/res2.0/conv1/Conv"): "backbone",
    "head", or "rest" (pre/post-processing, and nodes onnxruntime added, e.g. layout reorders)."""
    parts = name.split("/")[1:3]
    for part in ("backbone", "head"):
        if part in parts:
            return part
    return "rest"


def torch_profile(model, x: np.ndarray, runs: int, top: int = 12) -> Dict:
    """Eager ``InferenceGraph`` on ``x`` under ``torch.profiler`` (CPU), ``runs`` calls after
    one unprofiled call; self CPU time summed by op (aten, torchvision), per call. Returns the
    same fields as :func:`ort_profile`."""
    from torch.profiler import ProfilerActivity, profile

    from d2_anchorfree.export import InferenceGraph

    graph, image = InferenceGraph(model).eval(), torch.from_numpy(x)
    with torch.no_grad():
        graph(image)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                graph(image)
    by_op = {e.key: e.self_cpu_time_total / 1000.0 / max(runs, 1) for e in prof.key_averages()}
    total = sum(by_op.values())
    ranked = sorted(by_op.items(), key=lambda kv: -kv[1])
    return {"runs": runs, "total_ms": total,
            "by_op": [[op, ms, ms / total if total else 0.0] for op, ms in ranked[:top]],
            "other_ms": sum(ms for _, ms in ranked[top:])}


# ----------------------------------------------------------------------------- report


def paired_ratio(reference: List[float], other: List[float]) -> Optional[float]:
    """Median over repetitions of reference[i] / other[i] (same repetition), None if empty."""
    pairs = [a / b for a, b in zip(reference, other) if b > 0]
    return statistics.median(pairs) if pairs else None


def make_rows(model: str, size: str, part: str, times: Dict[str, List[float]], last: Dict, errors: Dict) -> List[Dict]:
    """One JSON row per backend: summary (ms), raw seconds, detections (whole graph), ratios."""
    rows = []
    eager = summarize(times.get("eager", []))
    for backend, values in times.items():
        s = summarize(values)
        row = {"model": model, "size": size, "part": part, "backend": backend, "ms": s,
               "seconds": values}
        if backend in errors:
            row["error"] = errors[backend]
        if part == "whole" and backend in last:
            row["detections"] = int(len(last[backend][1]))
        if s and eager:
            row["eager_over_backend"] = eager["median"] / s["median"]
            row["paired_eager_over_backend"] = paired_ratio(times["eager"], values)
        rows.append(row)
    return rows


def table(rows: List[Dict]) -> str:
    """The Markdown table: one line per model, size, part and backend."""
    header = ["model", "size (HxW)", "part", "backend", "ms median [min-max]", "n", "x eager", "paired", "detections"]
    lines = []
    for r in rows:
        s = r["ms"]
        if "error" in r or not s:
            lines.append([r["model"], r["size"], r["part"], r["backend"], r.get("error", "-"), "-", "-", "-", "-"])
            continue
        ratio = lambda k: f"{r[k]:.2f}" if r.get(k) is not None else "-"  # noqa: E731
        lines.append([r["model"], r["size"], r["part"], r["backend"],
                      f"{s['median']:.1f} [{s['min']:.1f}-{s['max']:.1f}]", s["n"],
                      ratio("eager_over_backend"), ratio("paired_eager_over_backend"), r.get("detections", "-")])
    return markdown_table(header, lines)


def rest_table(rows: List[Dict]) -> str:
    """With ``--parts``: per model, size and backend, the median of the whole graph, of the
    backbone + FPN and their difference (head + decoding + NMS), ms, and the backbone's share."""
    whole = {(r["model"], r["size"], r["backend"]): r["ms"].get("median") for r in rows if r["part"] == "whole" and r["ms"]}
    lines = []
    for r in rows:
        if r["part"] != "backbone" or not r["ms"]:
            continue
        w = whole.get((r["model"], r["size"], r["backend"]))
        b = r["ms"]["median"]
        if w is None:
            continue
        lines.append([r["model"], r["size"], r["backend"], f"{w:.1f}", f"{b:.1f}", f"{w - b:.1f}", f"{100 * b / w:.0f}%"])
    return markdown_table(["model", "size (HxW)", "backend", "whole ms", "backbone+FPN ms", "rest ms", "backbone share"], lines)


def profile_table(profiles: Dict[str, Dict], top: int = 6) -> str:
    """With ``--profile``: the top ops of each profiled model, size and backend."""
    lines = []
    for key, by_backend in profiles.items():
        for backend, p in by_backend.items():
            ops = ", ".join(f"{op} {ms:.0f} ms ({100 * share:.0f}%)" for op, ms, share in p["by_op"][:top])
            scopes = ", ".join(f"{k} {100 * share:.0f}%" for k, (_, share) in p.get("by_scope", {}).items()) or "-"
            lines.append([key, backend, f"{p['total_ms']:.0f}", scopes, ops])
    return markdown_table(["model size", "backend", "op time ms/call", "by part", f"top {top} ops"], lines)


def environment(args, argv: List[str], image: str) -> Dict:
    """Versions, CPU model, thread settings, load average, the image and the command line
    (``argv``: the arguments after the script name)."""
    import onnxruntime as ort
    import detectron2

    info = {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": ort.__version__,
            "detectron2": detectron2.__version__, "machine": platform.machine(),
            "torch_threads": torch.get_num_threads(), "ort_intra_op_num_threads": args.threads,
            "ort_inter_op_num_threads": 1, "ort_execution_mode": "ORT_SEQUENTIAL",
            "ort_graph_optimization_level": {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                                             "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}[args.ort_level],
            "ort_enable_cpu_mem_arena": not args.no_mem_arena, "ort_provider": "CPUExecutionProvider",
            "onnx_opset": 19, "export_sample_size": list(EXPORT_SIZE),
            "image": (os.path.relpath(image, REPO) if os.path.abspath(image).startswith(REPO + os.sep)
                      else os.path.abspath(image)) if image else "synthetic",
            "image_note": "tiled (repeated, then cropped) to each size, not resized" if image else "seeded random uint8",
            "loadavg_start": os.getloadavg(), "time_start": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": shlex.join(["python", "tools/benchmark_export.py", *argv]), "args": vars(args)}
    if args.openvino:
        import openvino

        info.update({"openvino": openvino.__version__, "openvino_device": "CPU", "openvino_inference_num_threads": args.threads,
                     "openvino_inference_precision_hint": "f32", "openvino_performance_hint": "LATENCY"})
    if args.nncf:
        import nncf

        info["nncf"] = nncf.__version__
    info.update(cpu_description())
    return info


# ----------------------------------------------------------------------------- main


def export_model(name: str, args, image_path: str, workdir: str, log=print) -> Tuple[object, Dict, Dict]:
    """Build model ``name`` with its weights and export it once (ONNX, TorchScript, and the INT8
    and backbone graphs the arguments ask for). Returns (model, {file kind: path}, model info)."""
    model, weights = build_detector(name, model_weights(name, args.weights, args.model_weights), args.opts)
    sample = make_image(image_path, *EXPORT_SIZE)
    paths = export_all(name, model, sample, workdir, args.parts, args.int8, args.nncf)
    info = {"config": MODELS[name], "weights": weights, "export_seconds": paths["seconds"],
            "onnx_bytes": os.path.getsize(paths["onnx"])}
    log(f"[{name}] {weights}; exported in {paths['seconds']['onnx']:.1f} s (ONNX), {paths['seconds']['ts']:.1f} s (TorchScript)")
    return model, paths, info


def bench_models(names: List[str], args, image_path: str, workdir: str, log=print) -> Tuple[List[Dict], Dict, Dict]:
    """Export every model of ``names`` once, then time them at every size (and part): all models'
    backends in one interleaved loop (:func:`time_backends`), so that rows of different models
    are as comparable as rows of one model's backends. Returns (rows, {"<name> <size>": profile},
    {name: model info})."""
    exported = {name: export_model(name, args, image_path, workdir, log) for name in names}
    rows, profiles = [], {}
    for size in args.sizes:
        h, w = parse_size(size)
        image = make_image(image_path, h, w)
        for part in (["whole", "backbone"] if args.parts else ["whole"]):
            runners, inputs = {}, {}  # keyed by (model name, backend)
            for name, (model, paths, _) in exported.items():
                x = image if part == "whole" else backbone_input(model, image).numpy()
                for backend, run in make_runners(paths, model, args, part).items():
                    runners[name, backend], inputs[name, backend] = run, x
            start = time.perf_counter()
            times, last, errors = time_backends(runners, inputs, args.runs, args.warmup)
            log(f"[{size} {part}] {len(runners)} runners interleaved, {time.perf_counter() - start:.0f} s")
            for name in exported:
                pick = lambda d: {backend: v for (model, backend), v in d.items() if model == name}  # noqa: E731
                new = make_rows(name, size, part, pick(times), pick(last), pick(errors))
                rows += new
                log(f"[{name} {size} {part}] " + ", ".join(
                    f"{r['backend']} {r['ms'].get('median', float('nan')):.1f} ms" for r in new))
            del runners
        if args.profile:
            for name, (model, paths, _) in exported.items():
                profiles[f"{name} {size}"] = {"onnxruntime": ort_profile(paths["onnx"], image, args, workdir),
                                              "eager": torch_profile(model, image, args.profile_runs)}
    return rows, profiles, {name: info for name, (_, _, info) in exported.items()}


def main(argv=None, prog=None) -> Dict:
    """Run the benchmark; print the tables; write and return the JSON record.

    Args:
        argv (list[str], optional): the arguments (default: ``sys.argv[1:]``).
        prog (str, optional): the program name shown in the usage (default: the script's name).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv, prog)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args, argv)
    finally:  # a caller in the same process (the smoke test) keeps its thread count
        torch.set_num_threads(threads)


def _run(args, argv: List[str]) -> Dict:
    """The benchmark of :func:`main` with its threads set."""
    image_path = args.image or default_image()
    if not image_path:
        print("no --image and no datasets/trees/images/: timing a seeded random image", file=sys.stderr)
    result = {"environment": environment(args, argv, image_path), "models": {}, "rows": [], "profile": {}}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="d2af_export_bench_") as tmp:
        workdir = args.workdir or tmp
        os.makedirs(workdir, exist_ok=True)
        result["rows"], result["profile"], result["models"] = bench_models(args.models, args, image_path, workdir)
    env = result["environment"]
    env["loadavg_end"], env["wall_seconds"] = os.getloadavg(), time.perf_counter() - start
    print(f"\nCPU: {describe_cpu(env)}; torch {env['torch']} with {env['torch_threads']} threads; "
          f"onnxruntime {env['onnxruntime']} CPUExecutionProvider, intra_op {args.threads}, inter_op 1, "
          f"{env['ort_graph_optimization_level']}, mem arena {env['ort_enable_cpu_mem_arena']}; "
          + (f"OpenVINO {env['openvino'].split('-')[0]} CPU, {args.threads} threads, f32, LATENCY; " if args.openvino else "")
          + f"{args.runs} runs after {args.warmup} warm-up, models and backends interleaved; image {env['image']} "
          f"({env['image_note']}); load average {env['loadavg_start'][0]:.1f} -> {env['loadavg_end'][0]:.1f}\n")
    print(table(result["rows"]))
    if args.parts:
        print("\n" + rest_table(result["rows"]))
    if result["profile"]:
        print("\nProfiles of the whole graph (onnxruntime: node time by op type; eager: self CPU time by op):\n"
              + profile_table(result["profile"]))
    if args.out:
        write_json_report(args.out, result, prefix="\n")
    return result


if __name__ == "__main__":
    main()

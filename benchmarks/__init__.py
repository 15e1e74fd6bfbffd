"""Benchmarks of d2_anchorfree (not part of the installed package; run from the source tree).

Command lines (each also ``d2af benchmark <name> ...`` and ``python -m benchmarks.<name> ...``):

* :mod:`benchmarks.detectors`: speed, memory and scaling of the detectors next to detectron2's
  (``d2af benchmark``; ``python tools/benchmark.py``);
* :mod:`benchmarks.export`: latency of eager PyTorch vs onnxruntime vs TorchScript;
* :mod:`benchmarks.slicing`: accuracy, time and memory of sliced inference and TTA;
* :mod:`benchmarks.cocoeval`: pycocotools vs faster-coco-eval vs detectron2's C++ COCOeval;
* :mod:`benchmarks.raster`: time and peak memory of windowed sliced inference on a synthetic
  30000 x 30000 GeoTIFF;
* :mod:`benchmarks.train_loop`: the project's trainer (``train_net.py``'s) for a few iterations,
  each split into data wait, forward parts, assignment, losses, backward, clipping + optimizer
  step and the rest (hooks, metrics).

Not a ``d2af benchmark`` suite (it needs a private environment): ``python -m benchmarks.yolo_reference``,
YOLO11n trained on the same data with Ultralytics (AGPL-3.0), which runs only in its own venv
(``tools/setup_yolo_env.sh``), in a subprocess (``benchmarks/yolo_ref/worker.py``); nothing here
imports it.

The parts of :mod:`benchmarks.detectors`:

* :mod:`benchmarks.timing`: wall-clock laps, timing proxies, round-robin timing, summaries.
* :mod:`benchmarks.memory`: peak memory of a call (CUDA allocator, Linux RSS high-water mark).
* :mod:`benchmarks.inputs`: synthetic images, GT boxes, FPN points and predictions.
* :mod:`benchmarks.models`: the detectors and assigners under test; the one module that uses
  d2_anchorfree's internals and config keys.
* :mod:`benchmarks.inference`, :mod:`benchmarks.training`, :mod:`benchmarks.assign`,
  :mod:`benchmarks.hungarian`:
  one section each (``--sections infer,train,assign,hungarian``).
* :mod:`benchmarks.report`: run description, progress lines and the Markdown tables.
"""
import json
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITES = ("detectors", "export", "slicing", "cocoeval", "raster", "train_loop")


def write_json_report(path: str, report, indent: int = 1, prefix: str = "") -> None:
    """Write a benchmark's JSON ``report`` to ``path`` (its folder made when missing) and print
    ``"<prefix>wrote <path>"``, the ending every benchmark command shares.

    Raises:
        OSError: the folder or the file cannot be written; TypeError: ``report`` is not JSON.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=indent)
    print(f"{prefix}wrote {path}")

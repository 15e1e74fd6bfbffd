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
import platform

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITES = ("detectors", "export", "slicing", "cocoeval", "raster", "train_loop")
# /proc/cpuinfo flags of the x86 instructions that INT8 convolutions run on (onnxruntime's and
# OpenVINO's kernels use them when present): AVX-512 VNNI, AVX-VNNI (the 256-bit form) and AMX.
# Without them INT8 runs on AVX2 multiply-adds and gains far less over float32.
INT8_DOT_PRODUCT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_description(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """The machine's CPU as every benchmark records it.

    Args:
        cpuinfo: the file to read (Linux's ``/proc/cpuinfo``; another path in tests).

    Returns:
        dict: ``"cpu"`` (``/proc/cpuinfo``'s model name, else ``platform.processor()``),
        ``"cpu_count"`` (``os.cpu_count()``), ``"cpu_int8_dot_product"`` (the flags of
        :data:`INT8_DOT_PRODUCT_FLAGS` the CPU has, in that order; ``[]`` when it has none, None
        where ``cpuinfo`` cannot be read or has no flags line).
    """
    name, flags = platform.processor(), None
    try:
        with open(cpuinfo) as f:
            lines = f.read().splitlines()
        name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), name)
        flag_line = next((line for line in lines if line.startswith("flags")), None)
        if flag_line is not None:
            present = set(flag_line.split(":", 1)[1].split())
            flags = [flag for flag in INT8_DOT_PRODUCT_FLAGS if flag in present]
    except OSError:
        pass
    return {"cpu": name, "cpu_count": os.cpu_count(), "cpu_int8_dot_product": flags}


def describe_cpu(info: dict) -> str:
    """One line for a benchmark's header: ``"AMD EPYC (2 cores; INT8 dot products: avx512_vnni)"``.

    Args:
        info: :func:`cpu_description`'s dict (or a report's environment holding its keys).
    """
    flags = info.get("cpu_int8_dot_product")
    dot = ("not known" if flags is None else ", ".join(flags) if flags
           else "none (no VNNI or AMX)")
    return f"{info['cpu']} ({info['cpu_count']} cores; INT8 dot products: {dot})"


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

"""YOLO11n trained on the same data, side by side with our detectors: COCO AP on the tree-crown val
tiles, training wall clock and ONNX latency, with one command.

Ultralytics is AGPL-3.0. It is used here only as a measuring tool, in a private venv
(``bash tools/setup_yolo_env.sh``, default ``~/.cache/d2af/venv-yolo``, ``--venv`` or
``D2AF_YOLO_VENV``): this module never imports it; it runs ``benchmarks/yolo_ref/worker.py`` with
that venv's python in a subprocess for everything Ultralytics does (train, predict, export), and
measures the results in our environment. d2_anchorfree never imports Ultralytics, and it is no
dependency of the project.

    python -m benchmarks.yolo_reference --seeds 0,1,2 --ours gfl=output/gfl_onnx/model.onnx \\
        --out docs/benchmarks/yolo11n_reference.json                 # about 10 min of training per seed
    python -m benchmarks.yolo_reference --quick                      # 1 epoch, 3 timed runs (a smoke run)
    python -m benchmarks.yolo_reference --dry-run                    # convert the data, print the commands
    python -m benchmarks.yolo_reference --latency-only --ours gfl=output/gfl_onnx/model.onnx \
        --out output/yolo11n_latency.json                           # re-time an earlier run's exports

What it does, per seed (``--seeds``, default 0):

1. Converts ``datasets/trees`` (COCO ``train.json`` / ``val.json``) to the YOLO layout under
   ``--workdir`` (images symlinked, one ``class cx cy w h`` line per box, normalized by the
   image's size, boxes clipped to the image; classes in the order of sorted category ids; crowd
   boxes left out) and writes its ``data.yaml`` (:func:`convert_split`, :func:`write_dataset`).
2. Trains YOLO11n from ``yolo11n.yaml`` (random init, ``pretrained=False``, no weights downloaded)
   at imgsz 416, batch 4, ``nbs=4`` (no gradient accumulation: one optimizer step per 4 images, as
   our 300 iterations of 4 images), ``--epochs`` (default 84, meant as about the wall clock of
   our 10-minute training on the 2-core CPU: the report records the real seconds; 20 epochs are
   320 steps, about our 1200 image views), AMP off,
   ``deterministic=True``, ``workers=1`` (Ultralytics uses 0 on the CPU anyway), ``plots=False``,
   ``val=False`` (Ultralytics still validates once after the last epoch), its other defaults
   (augmentation, optimizer "auto", schedule) unchanged; torch at ``--threads`` (default 2 as
   our training; Ultralytics itself would set cores - 1 = 1 on this machine). Records the train
   call's wall seconds, the epochs' training seconds alone and the load average.
3. Predicts the val images with ``last.pt`` at conf 0.001, IoU 0.7, max_det 300, imgsz 416, writes
   them as COCO results (the val json's image and category ids) and evaluates them here with
   pycocotools, maxDets [1, 10, 300] as our evaluation (``TEST.COCO_MAX_DETS_PER_IMAGE`` 300 of the
   tiny configs; ``d2_anchorfree.evaluation.report.run_cocoeval`` / ``coco_stats``, AP in %).
4. Exports ``last.pt`` to ONNX at 416 x 416, batch 1: the raw forward and the graph with NMS inside
   (``nms=True``: conf 0.05 as our graphs' score threshold, IoU 0.7, max_det 300).

Then, once (on the first seed's files), times with onnxruntime here (CPUExecutionProvider,
``--threads`` intra-op, 1 inter-op, sequential, all graph optimizations), batch 1, on one val image
(``--image``, default the first of val.json): YOLO11n "forward" (the graph alone on the letterboxed,
normalized 1x3x416x416 input), YOLO11n "end to end" (letterbox + normalization in numpy, the NMS
graph, boxes mapped back to the image) and each ``--ours NAME=PATH.onnx`` (a ``d2af export`` file:
``predict_onnx.predict`` on the same uint8 BGR image, its resize, graph with NMS and rescaling),
interleaved (``benchmarks.timing.interleaved``: run i times every entry once, order rotated by i),
``--runs`` after ``--warmup``, median [min-max] ms; the load average before and after is printed
and recorded.

``--latency-only`` skips steps 1-4: it reads ``seed<N>/worker.json`` of an earlier run in
``--workdir`` (N the first of ``--seeds``) for its two ONNX files and times them as above beside
``--ours`` (for a new export of ours, or on a quieter machine, without training YOLO11n again); the
report then holds the latency section and the run it timed. Raises FileNotFoundError naming the
missing ``worker.json`` or ONNX file.

Writes ``--out`` (JSON): per-seed COCO numbers, train seconds, image views and steps, Ultralytics'
own final validation, the detections count, the network calls its guard refused (expected none);
mean / std / min / max over seeds; the latency rows; versions of both environments; the commands.
"""
import argparse
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from benchmarks import REPO, cpu_description, write_json_report

DEFAULT_VENV = os.path.join("~", ".cache", "d2af", "venv-yolo")
WORKER = os.path.join(REPO, "benchmarks", "yolo_ref", "worker.py")
#: The COCO numbers reported per seed (``coco_stats``' keys, percent).
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR")
#: maxDets [1, 10, 300]: TEST.COCO_MAX_DETS_PER_IMAGE of the tiny / real-time configs.
MAX_DETS = 300
LETTERBOX_FILL = 114  # the grey Ultralytics pads with


def parse_args(argv=None, prog=None):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trees", default=os.path.join(REPO, "datasets", "trees"),
                   help="the COCO tree-crown data: train.json, val.json, images/ (make data)")
    p.add_argument("--workdir", default="output/yolo11n_reference", help="the YOLO layout and the runs go here")
    p.add_argument("--venv", default="", help=f"the Ultralytics venv (default: $D2AF_YOLO_VENV or {DEFAULT_VENV})")
    p.add_argument("--epochs", type=int, default=84)
    p.add_argument("--seeds", default="0", help="comma list of seeds, one training each")
    p.add_argument("--imgsz", type=int, default=416)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--fraction", type=float, default=1.0,
                   help="train on this fraction of the train images (Ultralytics' fraction; < 1 for tests only)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of the training; onnxruntime intra-op threads")
    p.add_argument("--ours", nargs="*", default=[], metavar="NAME=PATH",
                   help="our ONNX files (d2af export) to time beside YOLO11n")
    p.add_argument("--image", default="", help="the timed image (default: the first image of val.json)")
    p.add_argument("--runs", type=int, default=20, help="timed runs per model")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before them")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 epoch, 3 runs after 1 warm-up, JSON to output/ (options given explicitly win)")
    p.add_argument("--dry-run", action="store_true", help="convert the data and print the worker commands only")
    p.add_argument("--latency-only", action="store_true",
                   help="no training: time the YOLO11n ONNX files of an earlier run in --workdir (the first of "
                        "--seeds) beside --ours, and write the latency section only")
    p.add_argument("--out", default="docs/benchmarks/yolo11n_reference.json", help="the JSON report ('' for none)")
    args = p.parse_args(argv)
    if args.quick:
        quick = {"epochs": 1, "runs": 3, "warmup": 1, "out": "output/yolo11n_reference_quick.json",
                 "workdir": "output/yolo11n_reference_quick"}
        for key, value in quick.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        p.error(f"--seeds takes a comma list of integers, got {args.seeds!r}")
    if args.latency_only and args.dry_run:
        p.error("--latency-only and --dry-run exclude each other")
    if not args.seed_list or args.epochs < 1 or args.runs < 1 or not 0 < args.fraction <= 1:
        p.error("need at least one seed, --epochs >= 1, --runs >= 1 and 0 < --fraction <= 1")
    try:
        args.ours_files = parse_ours(args.ours)
    except ValueError as e:
        p.error(str(e))
    return args


def parse_ours(items: Sequence[str]) -> Dict[str, str]:
    """{NAME: PATH} of ``--ours NAME=PATH ...``.

    Raises:
        ValueError: an item without "=", an empty name, a repeated name or a missing file.
    """
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--ours {item!r}: expected NAME=PATH.onnx")
        if name in out:
            raise ValueError(f"--ours: the name {name!r} is given twice")
        if not os.path.isfile(path):
            raise ValueError(f"--ours {item!r}: no such file {path}")
        out[name] = path
    return out


# ----------------------------------------------------------------------------- data


def yolo_box(bbox: Sequence[float], width: float, height: float) -> Optional[Tuple[float, float, float, float]]:
    """A COCO ``[x, y, w, h]`` box (pixels) as YOLO's normalized ``(cx, cy, w, h)``, clipped to
    the ``width`` x ``height`` image; None when nothing of it is inside the image."""
    x0, y0 = max(float(bbox[0]), 0.0), max(float(bbox[1]), 0.0)
    x1, y1 = min(float(bbox[0]) + float(bbox[2]), width), min(float(bbox[1]) + float(bbox[3]), height)
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height


def convert_split(coco: dict, image_root: str, out: str, split: str) -> Dict[str, int]:
    """Write one split of a COCO dataset dict in the YOLO layout: ``out/images/<split>/<file>``
    symlinked to ``image_root/<file>``, ``out/labels/<split>/<stem>.txt`` with a line
    ``class cx cy w h`` (6 decimals) a box (:func:`yolo_box`; classes: index of the category id in
    the sorted ids; crowd boxes left out), an empty file for an image without boxes.

    Returns:
        {"images", "boxes", "skipped"} counts (skipped: crowd or outside the image).
    """
    classes = {cid: i for i, cid in enumerate(sorted(c["id"] for c in coco["categories"]))}
    boxes = {im["id"]: [] for im in coco["images"]}
    for a in coco["annotations"]:
        boxes[a["image_id"]].append(a)
    counts = {"images": 0, "boxes": 0, "skipped": 0}
    for sub in ("images", "labels"):
        os.makedirs(os.path.join(out, sub, split), exist_ok=True)
    for im in coco["images"]:
        link = os.path.join(out, "images", split, im["file_name"])
        os.makedirs(os.path.dirname(link), exist_ok=True)
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(os.path.abspath(os.path.join(image_root, im["file_name"])), link)
        lines = []
        for a in boxes[im["id"]]:
            box = None if a.get("iscrowd", 0) else yolo_box(a["bbox"], im["width"], im["height"])
            if box is None:
                counts["skipped"] += 1
                continue
            lines.append(f"{classes[a['category_id']]} " + " ".join(f"{v:.6f}" for v in box))
        label = os.path.join(out, "labels", split, os.path.splitext(im["file_name"])[0] + ".txt")
        os.makedirs(os.path.dirname(label), exist_ok=True)
        with open(label, "w") as f:
            f.write("".join(line + "\n" for line in lines))
        counts["images"] += 1
        counts["boxes"] += len(lines)
    return counts


def write_dataset(trees: str, out: str) -> Dict:
    """The YOLO layout of ``trees`` (train.json, val.json, images/) under ``out`` and its
    ``data.yaml`` (absolute ``path``, ``train``/``val`` image folders, ``names``). Returns
    {"data_yaml", "splits": {split: counts}, "names", "category_ids"}."""
    out = os.path.abspath(out)
    info = {"splits": {}}
    for split in ("train", "val"):
        with open(os.path.join(trees, f"{split}.json")) as f:
            coco = json.load(f)
        info["splits"][split] = convert_split(coco, os.path.join(trees, "images"), out, split)
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    info["names"] = [c["name"] for c in cats]
    info["category_ids"] = [c["id"] for c in cats]
    info["data_yaml"] = os.path.join(out, "data.yaml")
    with open(info["data_yaml"], "w") as f:  # JSON is YAML: no yaml dependency here
        f.write(json.dumps({"path": out, "train": "images/train", "val": "images/val",
                            "names": info["names"]}, indent=1) + "\n")
    return info


# ----------------------------------------------------------------------------- the Ultralytics side


def venv_dir(arg: str = "") -> str:
    return os.path.abspath(os.path.expanduser(arg or os.environ.get("D2AF_YOLO_VENV") or DEFAULT_VENV))


def yolo_python(venv: str) -> str:
    """The private venv's python.

    Raises:
        FileNotFoundError: no venv there, naming the setup command.
    """
    python = os.path.join(venv, "bin", "python")
    if not os.path.isfile(python):
        raise FileNotFoundError(f"no Ultralytics environment at {venv}: run `bash tools/setup_yolo_env.sh` "
                                "(or give --venv / D2AF_YOLO_VENV)")
    return python


def worker_env(venv: str, log: str = "") -> Dict[str, str]:
    """The worker's environment: Ultralytics' settings in the venv (sync off), offline, no
    auto-install, no API key; ``NETGUARD_LOG`` = ``log`` when given."""
    env = {k: v for k, v in os.environ.items() if k not in ("ULTRALYTICS_API_KEY", "PYTHONPATH")}
    env.update(YOLO_CONFIG_DIR=os.path.join(venv, "config"), YOLO_OFFLINE="1", YOLO_AUTOINSTALL="false")
    if log:
        env["NETGUARD_LOG"] = log
    return env


def worker_command(python: str, data_yaml: str, run_dir: str, val_list: str, args, seed: int) -> List[str]:
    return [python, WORKER, "--data", data_yaml, "--out", run_dir, "--val-images", val_list,
            "--epochs", str(args.epochs), "--seed", str(seed), "--imgsz", str(args.imgsz),
            "--batch", str(args.batch), "--threads", str(args.threads), "--conf", "0.001", "--iou", "0.7",
            "--max-det", str(MAX_DETS), "--export-conf", "0.05", "--fraction", str(args.fraction)]


def run_worker(command: List[str], env: Dict[str, str], run_dir: str) -> Dict:
    """Run the worker (its output streamed to ``run_dir/worker.log`` and the last lines shown
    on failure); returns its ``worker.json``.

    Raises:
        RuntimeError: the worker failed.
    """
    os.makedirs(run_dir, exist_ok=True)
    log = os.path.join(run_dir, "worker.log")
    with open(log, "w") as f:
        code = subprocess.run(command, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=REPO).returncode
    if code != 0:
        with open(log) as f:
            tail = "".join(f.readlines()[-30:])
        raise RuntimeError(f"the Ultralytics worker failed (exit {code}); the end of {log}:\n{tail}")
    with open(os.path.join(run_dir, "worker.json")) as f:
        return json.load(f)


# ----------------------------------------------------------------------------- evaluation


def coco_results(predictions: List[Dict], image_ids: Dict[str, int], category_ids: Sequence[int],
                 roots: Sequence[str]) -> List[Dict]:
    """The worker's predictions as COCO results: the image id of the prediction's file (its path
    relative to one of ``roots``, the folders the val json's file names are relative to, looked up
    in ``image_ids``: file_name -> id), the category id of its class index, bbox [x, y, w, h].

    Raises:
        KeyError: a prediction of a file that is not an image of the val json.
    """
    out = []
    for p in predictions:
        names = [os.path.relpath(p["file"], root).replace(os.sep, "/") for root in roots]
        image_id = next((image_ids[n] for n in names if n in image_ids), None)
        if image_id is None:
            raise KeyError(f"prediction for {p['file']}: not an image of the val json under {list(roots)}")
        for (x0, y0, x1, y1), score, cls in zip(p["boxes"], p["scores"], p["classes"]):
            out.append({"image_id": image_id, "category_id": int(category_ids[cls]),
                        "bbox": [x0, y0, x1 - x0, y1 - y0], "score": float(score)})
    return out


def evaluate(gt: dict, results: List[Dict]) -> Dict[str, float]:
    """COCO box AP etc. (percent) with pycocotools, maxDets [1, 10, 300], as our evaluation."""
    from d2_anchorfree.evaluation.report import coco_stats, run_cocoeval

    return coco_stats(run_cocoeval(gt, results, MAX_DETS))


def spread(values: Sequence[float]) -> Dict[str, float]:
    """mean, std (sample; 0 for one value), min, max, n of the finite ``values``."""
    v = [float(x) for x in values if x is not None and math.isfinite(x)]
    if not v:
        return {"n": 0}
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
            "min": min(v), "max": max(v), "n": len(v)}


# ----------------------------------------------------------------------------- latency


def letterbox(image: np.ndarray, size: int) -> Tuple[np.ndarray, float, Tuple[int, int]]:
    """``image`` (uint8 BGR HW3) scaled to fit ``size`` x ``size`` (bilinear), centred on a grey
    canvas, as YOLO's input: float32 RGB [1, 3, size, size] in [0, 1], the scale and the (left,
    top) padding."""
    import cv2

    h, w = image.shape[:2]
    r = min(size / h, size / w)
    new_w, new_h = int(round(w * r)), int(round(h * r))
    resized = image if (new_w, new_h) == (w, h) else cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    left, top = (size - new_w) // 2, (size - new_h) // 2
    canvas = np.full((size, size, 3), LETTERBOX_FILL, dtype=np.uint8)
    canvas[top:top + new_h, left:left + new_w] = resized
    x = canvas[:, :, ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    return np.ascontiguousarray(x), r, (left, top)


def unletterbox(boxes: np.ndarray, r: float, pad: Tuple[int, int], shape: Tuple[int, int]) -> np.ndarray:
    """XYXY boxes of the letterboxed input back in the image's pixels, clipped to it."""
    out = (boxes - np.array([pad[0], pad[1], pad[0], pad[1]], dtype=np.float32)) / r
    h, w = shape
    return np.clip(out, 0, np.array([w, h, w, h], dtype=np.float32))


def torchvision_nms(raw: np.ndarray, score: float, iou: float, max_det: int):
    """NMS of YOLO's raw output [1, 4 + classes, N] (cx, cy, w, h, class scores) with torchvision
    (used when no graph with NMS inside was exported): (boxes XYXY, scores, classes)."""
    import torch
    import torchvision

    pred = torch.from_numpy(raw[0].T)
    scores, classes = pred[:, 4:].max(1)
    keep = scores > score
    xywh, scores, classes = pred[keep, :4], scores[keep], classes[keep]
    boxes = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1)
    idx = torchvision.ops.batched_nms(boxes, scores, classes, iou)[:max_det]
    return boxes[idx].numpy(), scores[idx].numpy(), classes[idx].numpy()


def make_entries(yolo_onnx: Dict[str, Dict], ours: Dict[str, str], image: np.ndarray, size: int,
                 threads: int) -> List[Dict]:
    """The timed entries: {"label", "kind", "path", "run": fn() -> number of detections}."""
    import onnxruntime as ort

    from benchmarks.export import ort_options
    from d2_anchorfree.runtime.predict_onnx import METADATA_KEY, predict

    def session(path):
        s = ort.InferenceSession(path, ort_options(threads, "all", True), providers=["CPUExecutionProvider"])
        return s, s.get_inputs()[0].name

    entries = []
    x, r, pad = letterbox(image, size)
    fwd, fwd_in = session(yolo_onnx["forward"]["path"])

    def yolo_forward():
        fwd.run(None, {fwd_in: x})  # raw boxes and scores of every anchor point: no detection count

    entries.append({"label": "yolo11n forward", "kind": f"forward (graph only, 1x3x{size}x{size} float input)",
                    "path": yolo_onnx["forward"]["path"], "run": yolo_forward})
    if "nms" in yolo_onnx:
        e2e, e2e_in = session(yolo_onnx["nms"]["path"])

        def yolo_e2e():
            xi, ri, padi = letterbox(image, size)
            det = e2e.run(None, {e2e_in: xi})[0][0]  # [max_det, 6]: x0, y0, x1, y1, score, class
            det = det[det[:, 4] > 0]
            unletterbox(det[:, :4], ri, padi, image.shape[:2])
            return len(det)

        kind = "end to end (letterbox + normalize, graph with NMS, boxes to the image)"
    else:
        def yolo_e2e():
            xi, ri, padi = letterbox(image, size)
            boxes, _, _ = torchvision_nms(fwd.run(None, {fwd_in: xi})[0], 0.05, 0.7, MAX_DETS)
            unletterbox(boxes, ri, padi, image.shape[:2])
            return len(boxes)

        kind = "end to end (letterbox + normalize, forward, torchvision NMS at 0.05, boxes to the image)"
    entries.append({"label": "yolo11n end to end", "kind": kind,
                    "path": yolo_onnx.get("nms", yolo_onnx["forward"])["path"], "run": yolo_e2e})
    for name, path in ours.items():
        s, feed = session(path)
        props = dict(s.get_modelmeta().custom_metadata_map)
        if METADATA_KEY not in props:
            raise ValueError(f"--ours {name}={path}: no d2af_metadata, not a d2af export file")
        meta = json.loads(props[METADATA_KEY])
        names = [o.name for o in s.get_outputs()]

        def run_graph(im, s=s, feed=feed, names=names):
            return dict(zip(names, s.run(None, {feed: im})))

        entries.append({"label": name, "kind": "end to end (predict_onnx.predict: uint8 BGR, resize, graph with "
                        f"NMS, rescale; test size {meta['min_size_test']})", "path": path,
                        "run": lambda run_graph=run_graph, meta=meta: len(predict(run_graph, meta, image)[1])})
    return entries


def time_latency(entries: List[Dict], runs: int, warmup: int) -> List[Dict]:
    """Interleaved timing of the entries (:func:`benchmarks.timing.interleaved`); one row each."""
    from benchmarks.timing import interleaved, summarize

    counts = {}

    def measure(entry):
        start = time.perf_counter()
        counts[entry["label"]] = entry["run"]()
        return {"total": time.perf_counter() - start}

    samples = interleaved(entries, rounds=runs, warmup=warmup, measure=measure)
    rows = []
    for e in entries:
        row = {"model": e["label"], "kind": e["kind"], "onnx": e["path"], "onnx_bytes": os.path.getsize(e["path"])}
        if "error" in e:
            row["error"] = e["error"]
        else:
            row.update(ms=summarize(samples[e["label"]].get("total", [])),
                       seconds=samples[e["label"]].get("total", []), detections=counts.get(e["label"]))
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- report


def latency_section(args, trees: str, gt: dict, yolo_onnx: Dict[str, Dict]) -> Dict:
    """Time YOLO11n's ONNX files (``worker.json``'s "onnx": {"forward": {"path"}, "nms": {...}})
    beside ``args.ours_files`` on one val image (``args.image`` or the first of ``gt``), interleaved:
    the report's "latency" section. Raises FileNotFoundError when the image cannot be read."""
    import cv2
    import onnxruntime

    image_path = args.image or os.path.join(trees, "images", gt["images"][0]["file_name"])
    image = cv2.imread(image_path, cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(f"cannot read the timed image {image_path}")
    lat = {"image": os.path.relpath(image_path, REPO) if image_path.startswith(REPO + os.sep) else image_path,
           "image_shape": list(image.shape[:2]), "threads": args.threads, "runs": args.runs, "warmup": args.warmup,
           "onnxruntime": onnxruntime.__version__, "provider": "CPUExecutionProvider", "inter_op_threads": 1,
           "graph_optimization_level": "ORT_ENABLE_ALL", "yolo_seed": args.seed_list[0], "loadavg_start": os.getloadavg()}
    entries = make_entries(yolo_onnx, args.ours_files, image, args.imgsz, args.threads)
    lat["rows"] = time_latency(entries, args.runs, args.warmup)
    lat["loadavg_end"] = os.getloadavg()
    return lat


def latency_only(args, argv: Sequence[str], trees: str, gt: dict) -> int:
    """``--latency-only``: the latency section for the ONNX files of the earlier run
    ``<workdir>/seed<N>/worker.json`` (N the first of ``--seeds``), no training; prints the table,
    writes ``--out``, returns 0. Raises FileNotFoundError naming a missing ``worker.json`` or
    ONNX file."""
    seed = args.seed_list[0]
    path = os.path.join(os.path.abspath(args.workdir), f"seed{seed}", "worker.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--latency-only: no earlier run at {path}; run the benchmark without "
                                f"--latency-only first (or give its --workdir and --seeds)")
    with open(path) as f:
        onnx = json.load(f)["onnx"]
    for kind, entry in onnx.items():
        if not os.path.isfile(entry["path"]):
            raise FileNotFoundError(f"--latency-only: the {kind} ONNX file {entry['path']} of {path} is gone")
    report = {"command": shlex.join(["python", "-m", "benchmarks.yolo_reference", *argv]),
              "yolo_run": path, "machine": cpu_description(),
              "versions": {"ours": versions()}, "time_start": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    report["latency"] = latency_section(args, trees, gt, onnx)
    report["time_end"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    print_latency(report["latency"])
    if args.out:
        write_json_report(args.out, report)
    return 0


def versions() -> Dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("torch", "torchvision", "onnxruntime", "pycocotools", "numpy", "opencv-python-headless"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    try:
        import detectron2

        out["detectron2"] = detectron2.__version__
    except ImportError:
        pass
    return out


def print_tables(report: Dict):
    from benchmarks.report import markdown_table

    lines = []
    for seed, r in report["seeds"].items():
        t = r["train"]
        lines.append([seed, *(f"{r['coco'][k]:.2f}" for k in ("AP", "AP50", "AP75", "APs", "APm")),
                      f"{t['train_seconds']:.0f}", f"{t['epochs_train_seconds']:.0f}",
                      f"{t['loadavg_start'][0]:.1f} -> {t['loadavg_end'][0]:.1f}", r["detections"]])
    if len(report["seeds"]) > 1:
        s = report["summary"]
        lines.append(["mean ± std", *(f"{s[k]['mean']:.2f} ± {s[k]['std']:.2f}" for k in ("AP", "AP50", "AP75", "APs", "APm")),
                      f"{s['train_seconds']['mean']:.0f}", f"{s['epochs_train_seconds']['mean']:.0f}", "-", "-"])
    print(f"\nYOLO11n, {report['settings']['epochs']} epochs ({report['image_views']} image views, "
          f"{report['optimizer_steps']} steps of batch {report['settings']['batch']}), COCO bbox on val, maxDets "
          f"[1, 10, {MAX_DETS}]:")
    print(markdown_table(["seed", "AP", "AP50", "AP75", "APs", "APm", "train call s", "epochs s", "load",
                          "detections"], lines))
    if report.get("latency"):
        print_latency(report["latency"])


def print_latency(lat: Dict):
    """Print the latency section as a Markdown table."""
    from benchmarks.report import markdown_table

    rows = [[r["model"], r["kind"], r.get("error") or f"{r['ms']['median']:.1f} [{r['ms']['min']:.1f}-"
             f"{r['ms']['max']:.1f}]", r.get("ms", {}).get("n", "-"), "-" if r.get("detections") is None else r["detections"]]
            for r in lat["rows"]]
    print(f"\nonnxruntime {lat['onnxruntime']}, {lat['threads']} threads, batch 1, {lat['image']} "
          f"({lat['image_shape'][0]}x{lat['image_shape'][1]}), {lat['runs']} runs after {lat['warmup']} warm-up, "
          f"interleaved; load average {lat['loadavg_start'][0]:.1f} -> {lat['loadavg_end'][0]:.1f}:")
    print(markdown_table(["model", "what is timed", "ms median [min-max]", "n", "detections"], rows))


def main(argv=None, prog=None) -> int:
    """Run the benchmark (see the module docstring); returns 0, or 1 when the worker made any
    network attempt."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv, prog)
    trees = os.path.abspath(args.trees)
    workdir = os.path.abspath(args.workdir)
    venv = venv_dir(args.venv)
    with open(os.path.join(trees, "val.json")) as f:
        gt = json.load(f)
    if args.latency_only:
        return latency_only(args, argv, trees, gt)
    data = write_dataset(trees, os.path.join(workdir, "data"))
    val_list = os.path.join(workdir, "val_images.txt")
    with open(val_list, "w") as f:
        f.write("".join(os.path.join(workdir, "data", "images", "val", im["file_name"]) + "\n" for im in gt["images"]))
    print(f"YOLO layout in {data['data_yaml']}: " + ", ".join(f"{k} {v['images']} images, {v['boxes']} boxes"
                                                             for k, v in data["splits"].items()), flush=True)
    python = os.path.join(venv, "bin", "python") if args.dry_run else yolo_python(venv)
    commands = {seed: worker_command(python, data["data_yaml"], os.path.join(workdir, f"seed{seed}"), val_list, args, seed)
                for seed in args.seed_list}
    if args.dry_run:
        for seed, cmd in commands.items():
            print(f"seed {seed}: YOLO_CONFIG_DIR={venv}/config YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false " + shlex.join(cmd))
        return 0

    report = {"command": shlex.join(["python", "-m", "benchmarks.yolo_reference", *argv]),
              "license": "Ultralytics is AGPL-3.0: used only as a measuring tool in a private venv "
                         "(tools/setup_yolo_env.sh) through a subprocess; d2_anchorfree never imports it",
              "setup_command": "bash tools/setup_yolo_env.sh", "venv": venv,
              "dataset": {"trees": trees, "splits": data["splits"], "names": data["names"]},
              "settings": {"model": "yolo11n.yaml (random init, pretrained=False)", "epochs": args.epochs,
                           "imgsz": args.imgsz, "batch": args.batch, "nbs": args.batch, "amp": False,
                           "deterministic": True, "workers": 1, "threads": args.threads, "fraction": args.fraction,
                           "predict_conf": 0.001,
                           "predict_iou": 0.7, "max_det": MAX_DETS, "coco_max_dets": [1, 10, MAX_DETS],
                           "weights": "last.pt (Ultralytics' EMA weights after the last epoch)"},
              "machine": cpu_description(), "versions": {"ours": versions()},
              "seeds": {}, "time_start": time.strftime("%Y-%m-%d %H:%M:%S %Z")}
    image_ids = {im["file_name"]: im["id"] for im in gt["images"]}
    workers = {}
    for seed in args.seed_list:
        run_dir = os.path.join(workdir, f"seed{seed}")
        guard_log = os.path.join(run_dir, "network_attempts.jsonl")
        if os.path.exists(guard_log):
            os.remove(guard_log)
        print(f"[seed {seed}] training YOLO11n for {args.epochs} epochs (log: {run_dir}/worker.log), "
              f"load average {os.getloadavg()[0]:.1f}", flush=True)
        w = run_worker(commands[seed], worker_env(venv, guard_log), run_dir)
        workers[seed] = w
        results = coco_results(w["predictions"], image_ids, data["category_ids"],
                               [os.path.join(workdir, "data", "images", "val"), os.path.join(trees, "images")])
        with open(os.path.join(run_dir, "coco_results.json"), "w") as f:
            json.dump(results, f)
        attempts = list(w["network_attempts"])
        if os.path.exists(guard_log):  # attempts of child processes too
            with open(guard_log) as f:
                attempts += [json.loads(line) for line in f if json.loads(line) not in attempts]
        report["seeds"][str(seed)] = {
            "coco": evaluate(gt, results), "train": w["train"], "detections": len(results),
            "ultralytics_val_metrics": w["train"]["ultralytics_val_metrics"], "onnx": w["onnx"],
            "network_attempts": attempts, "worker_command": shlex.join(commands[seed]),
            "online": w["online"], "settings_sync": w["settings_sync"]}
        r = report["seeds"][str(seed)]
        print(f"[seed {seed}] AP {r['coco']['AP']:.2f} AP50 {r['coco']['AP50']:.2f}; train call "
              f"{w['train']['train_seconds']:.0f} s (epochs {w['train']['epochs_train_seconds']:.0f} s), "
              f"network attempts {len(attempts)}", flush=True)
    first = workers[args.seed_list[0]]
    used = first["train"]["optimizer"]  # what Ultralytics trained on: images and batches per epoch
    report["image_views"] = args.epochs * used["train_images"]
    report["optimizer_steps"] = args.epochs * used["batches_per_epoch"] // used["accumulate"]
    report["versions"]["ultralytics_env"] = {"ultralytics": first["ultralytics"], "torch": first["torch"]}
    per_seed = list(report["seeds"].values())
    report["summary"] = {k: spread([r["coco"][k] for r in per_seed]) for k in STATS}
    for k in ("train_seconds", "epochs_train_seconds"):
        report["summary"][k] = spread([r["train"][k] for r in per_seed])

    report["latency"] = latency_section(args, trees, gt, first["onnx"])
    report["time_end"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    print_tables(report)
    attempts = sum(len(r["network_attempts"]) for r in per_seed)
    print(f"\nnetwork attempts by Ultralytics (refused): {attempts}")
    if args.out:
        write_json_report(args.out, report)
    return 1 if attempts else 0


if __name__ == "__main__":
    sys.exit(main())

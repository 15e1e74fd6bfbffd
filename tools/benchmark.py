#!/usr/bin/env python
"""Speed, memory and scaling of the d2_anchorfree detectors next to detectron2's own dense
detectors (RetinaNet and FCOS), in one run, on the same backbone, input size, device, thread
count and batch. Prints Markdown tables and writes everything to a JSON file.

    python tools/benchmark.py                                  # everything, CPU (tens of minutes)
    python tools/benchmark.py --quick                          # smoke run (about a minute)
    python tools/benchmark.py --sections assign,hungarian      # assignment only
    python tools/benchmark.py --backbones tiny --sizes 512x512 --sections infer,train
    python tools/benchmark.py --device cuda --threads 8 --out output/bench_cuda.json

Sections (``--sections``):

* ``infer``: inference latency per image (median and min/max/IQR over ``--runs`` runs after
  ``--warmup``), split by calling the model's parts in turn: ``preprocess_image`` (normalize,
  pad), ``backbone`` (ResNet + FPN), ``head``, and post-processing (``forward_inference`` +
  ``detector_postprocess``: candidate selection, decode, NMS or NMS-free top-k, rescale). All
  models are detectron2 ``DenseDetector`` subclasses, so the same calls time every one of them.
  The score threshold is forced to ``--score-thresh`` (default 0) for everyone: with untrained
  weights the configured thresholds would leave some models (RetinaNet, prior 0.01) without a
  single candidate and others with thousands; with 0 every model post-processes its full
  ``TOPK_CANDIDATES_TEST`` candidates per level (the worst case).
* ``train``: one training step (forward + backward, ``--train-batch`` images with
  ``--train-gt`` random boxes each), split into forward (preprocess + backbone + head), target
  assignment, losses and backward. Assignment is timed by replacing the model's assigner
  attributes with a timing proxy (ours: ``model.assigner`` and DeFCN's ``model.aux_assigner``;
  detectron2's RetinaNet and FCOS: the bound method ``model.label_anchors``, which for FCOS
  calls ``match_anchors``). "losses" = time of ``forward_training`` minus the assignment.
* ``assign``: target assignment alone on an ``--assign-size`` input with five levels (strides
  8..128) for 10/100/1000/3000 random GT boxes: FCOS (scale ranges + center sampling 1.5),
  ATSS, POTO (prior + quality + Hungarian matching), POTO's auxiliary one-to-many assignment,
  the dense FCOS baseline (tools/dense_fcos_baseline.py, [points x GT x 4] tensors) and
  detectron2's FCOS ``match_anchors`` / RetinaNet ``label_anchors`` (both dense too; these three
  only up to ``--dense-max-gt``). Every case runs in a fresh subprocess. Peak memory of the
  first call (inputs already built, nothing freed before it that the call could reuse): on CPU,
  the kernel's resident-set high-water mark is reset to the current RSS (``echo 5 >
  /proc/self/clear_refs``) and the peak is ``VmHWM`` after the call minus ``VmRSS`` before it
  (/proc/self/status), i.e. the physical memory the call really touched; where the reset is not
  allowed, ``ru_maxrss`` after the call minus ``VmRSS`` before it, marked "<=" when ``ru_maxrss``
  did not grow (then only an upper bound). On CUDA, ``torch.cuda.max_memory_allocated()`` minus
  the memory allocated before the call.
* ``hungarian``: POTO's one-to-one matching alone (``--hungarian-gt`` GTs per image, default
  10/100/500/1000/3000) by both exact solvers of ``match_one_to_one`` (dense
  ``linear_sum_assignment`` on the [G x in-prior columns] matrix, sparse LAPJVsp on the in-prior
  pairs; whether they agree; which one POTOAssigner picks at that size) and the whole POTO
  assigner, with the problem size.

Every model of a backbone is built once and the ``infer`` and ``train`` timings are taken
round-robin: run ``i`` times every model once, in an order rotated by ``i``. A slow spell of the
machine (another process, clock changes) then lands on all models alike instead of on whichever
was being measured, which made one-model-after-another ratios unreliable on a shared 2-core CPU.

Models (``--models``): ours FCOS, ATSS, GFL, VFNet, DeFCN (+ "DeFCN+NMS": the same DeFCN model
with ``nms_free`` off, inference only), and detectron2's ``d2-RetinaNet`` (yacs:
configs/baselines/RetinaNet_R_50_FPN_1x.yaml, configs/tiny/RetinaNet_tiny_R_18_cpu.yaml) and
``d2-FCOS`` (``detectron2.modeling.meta_arch.fcos.FCOS`` from the LazyConfig
``COCO-Detection/fcos_R_50_FPN_1x.py`` via ``model_zoo.get_config`` + ``instantiate``; its
backbone is replaced by the very backbone module our FCOS config builds, and its head width /
number of convs / classes / test settings are set from that config). Backbones (``--backbones``):
``R50`` (the *_R_50_FPN_1x configs, 80 classes) and ``tiny`` (the *_tiny_R_18_cpu configs,
R-18 + FPN-64, 1 class). Ratios "x RetinaNet" / "x d2-FCOS" divide a model's time by
detectron2's on the same backbone and size.

With ``--device cuda`` every timed region is bracketed by ``torch.cuda.synchronize()``, the
tables add images/s and the peak CUDA memory of the call (allocated beyond what was allocated
before it: activations and gradients, not the resident weights). ``--threads N`` calls ``torch.set_num_threads(N)``
in this process and in every assignment subprocess.
"""
import argparse
import gc
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
from typing import Dict, List, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from bench.inputs import assign_inputs, make_inputs, parse_size  # noqa: E402
from bench.memory import CudaPeak, first_call_peak  # noqa: E402
from bench.models import (ASSIGNERS, CONFIGS, D2_MODELS, DENSE_ASSIGNERS, OUR_MODELS, PotoMatching,  # noqa: E402
                          assign_hooks, build_entries, import_library, make_assign_fn, set_variant)
from bench.timing import LapTimer, TimedCall, interleaved, summarize, synchronize  # noqa: E402

TARGET_TIME, TARGET_MEM = 0.5, 0.25  # chunked FCOSAssigner vs dense baseline at 1000 GT


# ------------------------------------------------------------------------------------------ utils
def fmt(x, digits=1):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def markdown_table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def environment(args) -> Dict:
    import detectron2

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "detectron2": detectron2.__version__, "device": args.device,
            "threads": torch.get_num_threads(), "machine": platform.machine(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    info["cpu_count"] = os.cpu_count()
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# --------------------------------------------------------------------------------------- models
# ------------------------------------------------------------------------------------ inference
def inference_once(model, inputs, timer: LapTimer):
    from detectron2.modeling.postprocessing import detector_postprocess

    images = model.preprocess_image(inputs)
    timer.lap("preprocess")
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    timer.lap("backbone_fpn")
    predictions = model.head(features)
    timer.lap("head")
    results = model.forward_inference(images, features, predictions)
    out = [detector_postprocess(r, x["height"], x["width"]) for r, x in zip(results, inputs)]
    timer.lap("post")
    return out


def split_matches_forward(model, inputs) -> bool:
    """The split path of :func:`inference_once` gives what ``model(inputs)`` gives (same
    detections of the first image): the parts timed are the parts the model runs."""
    model.eval()
    with torch.no_grad():
        ref = model(inputs)[0]["instances"]
        split = inference_once(model, inputs, LapTimer("cpu"))[0]
    return len(ref) == len(split) and torch.allclose(ref.scores, split.scores, atol=1e-5)


def inference_laps(model, inputs, device: str):
    """One timed inference of ``inputs``: (seconds per part and "total", per image; detections)."""
    model.eval()
    with torch.no_grad():
        timer = LapTimer(device)
        start = timer.last
        out = inference_once(model, inputs, timer)
    laps = {k: v / len(inputs) for k, v in timer.laps.items()}
    laps["total"] = (timer.last - start) / len(inputs)
    return laps, out


def train_step_laps(model, inputs, proxies: Dict[str, "TimedCall"], device: str):
    """One timed training step (forward + backward, no optimizer step) on ``inputs``.

    Returns (seconds of "forward", "assign", "losses", "backward", "total"; finite loss). The
    assignment time is read from the ``proxies`` installed by :func:`install_assign_proxies`.
    """
    from detectron2.utils.events import EventStorage

    model.train()
    model.zero_grad(set_to_none=True)
    for p in proxies.values():
        p.elapsed = 0.0
    gt = [x["instances"].to(model.device) for x in inputs]  # data loading, not timed
    timer = LapTimer(device)
    start = timer.last
    with EventStorage(0):
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        predictions = model.head(features)
        timer.lap("forward")
        losses = model.forward_training(images, features, predictions, gt)
        timer.lap("assign+losses")
        total = sum(losses.values())
    total.backward()
    timer.lap("backward")
    assign = sum(p.elapsed for p in proxies.values())
    laps = {"forward": timer.laps["forward"], "assign": assign, "losses": timer.laps["assign+losses"] - assign,
            "backward": timer.laps["backward"], "total": timer.last - start}
    return laps, bool(torch.isfinite(total).item())


def install_assign_proxies(model, device: str) -> Dict[str, "TimedCall"]:
    """Replace the model's assignment attributes (:func:`assign_hooks`) by timing proxies."""
    proxies = {n: TimedCall(getattr(model, n), device) for n in assign_hooks(model)}
    for n, p in proxies.items():
        setattr(model, n, p)
    return proxies


def remove_assign_proxies(model, proxies: Dict[str, "TimedCall"]):
    for n, p in proxies.items():
        if n == "label_anchors":
            delattr(model, n)  # back to the class method
        else:
            setattr(model, n, p.fn)


def run_models(args, results: Dict):
    """Inference and training-step timings of every model, interleaved (see :func:`interleaved`)."""
    sections = set(args.sections)
    for backbone in args.backbones:
        entries = build_entries(args, backbone, results)
        for size in args.sizes:
            h, w = parse_size(size)
            base = {"backbone": backbone, "size": size}
            if "infer" in sections:
                infer_entries = [dict(e) for e in entries]
                for e in infer_entries:
                    set_variant(e)
                    e["inputs"] = make_inputs(args.batch, h, w, 0, e["num_classes"])
                    try:
                        e["consistent"] = split_matches_forward(e["model"], e["inputs"])
                    except Exception as exc:
                        e["error"] = f"{type(exc).__name__}: {exc}"
                        traceback.print_exc()
                ok = [e for e in infer_entries if "error" not in e]

                def measure_infer(e):
                    set_variant(e)
                    with CudaPeak(e, args.device):
                        laps, out = inference_laps(e["model"], e["inputs"], args.device)
                    e["detections_per_image"] = sum(len(o) for o in out) / len(out)
                    return laps

                samples = interleaved(ok, args.runs, args.warmup, measure_infer)
                for e in infer_entries:
                    row = {"model": e["label"], **base, "batch": args.batch}
                    if "error" in e:
                        row["error"] = e["error"]
                    else:
                        row.update({k: summarize(v) for k, v in samples[e["label"]].items()})
                        row["detections_per_image"] = e["detections_per_image"]
                        row["split_matches_forward"] = bool(e["consistent"])
                        if args.device.startswith("cuda"):
                            row["images_per_s"] = 1000.0 / row["total"]["median"]
                            row["peak_mem_mb"] = e.get("peak_mem_mb")
                    results["inference"].append(row)
                    print_progress("infer", row)
                for e in entries:
                    set_variant(e)  # DeFCN back to its configured nms_free
            if "train" in sections:
                train_entries = [dict(e) for e in entries if not e.get("infer_only")]
                for e in train_entries:
                    e["inputs"] = make_inputs(args.train_batch, h, w, args.train_gt, e["num_classes"], seed=1)
                    e["proxies"] = install_assign_proxies(e["model"], args.device)
                    e["finite"] = True

                def measure_train(e):
                    with CudaPeak(e, args.device):
                        laps, finite = train_step_laps(e["model"], e["inputs"], e["proxies"], args.device)
                    e["finite"] = e["finite"] and finite
                    return laps

                try:
                    samples = interleaved(train_entries, args.train_runs, args.warmup_train, measure_train)
                finally:
                    for e in train_entries:
                        remove_assign_proxies(e["model"], e["proxies"])
                        e["model"].zero_grad(set_to_none=True)
                for e in train_entries:
                    row = {"model": e["label"], **base, "batch": args.train_batch, "gt_per_image": args.train_gt}
                    if "error" in e:
                        row["error"] = e["error"]
                    else:
                        row.update({k: summarize(v) for k, v in samples[e["label"]].items()})
                        row["assign_hooks"] = list(e["proxies"])
                        row["finite_loss"] = e["finite"]
                        if args.device.startswith("cuda"):
                            row["images_per_s"] = len(e["inputs"]) * 1000.0 / row["total"]["median"]
                            row["peak_mem_mb"] = e.get("peak_mem_mb")
                    results["train"].append(row)
                    print_progress("train", row)
        del entries
        gc.collect()


def print_progress(section: str, row: Dict):
    total = row.get("total", {}).get("median") if "error" not in row else None
    status = f"{total:.1f} ms" if total is not None else row.get("error", "?")
    print(f"  {section:5s} {row['backbone']:4s} {row['size']:>9s} {row['model']:13s} {status}", flush=True)


# ----------------------------------------------------------------------------------- assignment
def run_assign_case(spec: Dict) -> Dict:
    """One (assigner, number of GT) case, meant to run in a fresh process (see module docstring)."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = spec["device"]
    h, w = parse_size(spec["size"])
    shifts, gt, logits, boxes = assign_inputs(h, w, spec["num_gt"], 80, device)
    fn = make_assign_fn(spec["assigner"], shifts, gt, logits, boxes, device)
    out, first, peak, bound, method = first_call_peak(fn, device)
    times = []
    for _ in range(spec["runs"]):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return {"assigner": spec["assigner"], "num_gt": spec["num_gt"], "size": spec["size"],
            "num_points": sum(len(s) for s in shifts), "time_ms": summarize(times or [first]),
            "first_call_ms": first * 1000, "peak_mem_mb": peak / 2**20, "peak_mem_is_upper_bound": bound,
            "mem_method": method, "positives": int((out >= 0).sum())}


def run_assign(args, results: Dict):
    for num_gt in args.gt_counts:
        for name in args.assigners:
            if name in DENSE_ASSIGNERS and num_gt > args.dense_max_gt:
                continue
            spec = {"assigner": name, "num_gt": num_gt, "size": args.assign_size, "device": args.device,
                    "runs": args.assign_runs, "threads": args.threads}
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--assign-case", json.dumps(spec)],
                                  capture_output=True, text=True, cwd=REPO)
            try:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                row = {"assigner": name, "num_gt": num_gt, "size": args.assign_size,
                       "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
            results["assign"].append(row)
            t = row.get("time_ms", {}).get("median")
            print(f"  assign {name:13s} G={num_gt:5d} " + (f"{t:9.1f} ms {row['peak_mem_mb']:8.1f} MB"
                                                         if t is not None else row["error"]), flush=True)


def run_hungarian(args, results: Dict):
    """POTO's matching alone by both solvers (and the whole assigner) for ``--hungarian-gt``."""
    h, w = parse_size(args.assign_size)
    poto = PotoMatching(args.device)
    for num_gt in args.hungarian_gt:
        row = {"num_gt": num_gt, "size": args.assign_size}
        try:
            shifts, gt, logits, boxes = assign_inputs(h, w, num_gt, 80, args.device)
            num_points = sum(len(s) for s in shifts)
            point_idx, gt_idx, quality = poto.pairs(shifts, gt, logits, boxes)
            dense, sparse, whole = [], [], []
            for i in range(args.warmup + args.assign_runs):
                synchronize(args.device)
                t0 = time.perf_counter()
                by_dense = poto.match(point_idx, gt_idx, quality, num_gt, num_points, "dense")
                t1 = time.perf_counter()
                by_sparse = poto.match(point_idx, gt_idx, quality, num_gt, num_points, "sparse")
                synchronize(args.device)
                t2 = time.perf_counter()
                poto(shifts, gt, logits, boxes)
                synchronize(args.device)
                if i >= args.warmup:
                    dense.append(t1 - t0)
                    sparse.append(t2 - t1)
                    whole.append(time.perf_counter() - t2)
            columns = len(torch.unique(point_idx))
            row.update({"pairs": len(point_idx), "columns": columns,
                        "dense_matrix_mb": num_gt * columns * 8 / 2**20,
                        "hungarian_ms": summarize(dense), "sparse_ms": summarize(sparse),
                        "same_matching": bool(torch.equal(by_dense, by_sparse)),
                        "poto_solver": poto.solver_for(num_gt, columns),
                        "poto_total_ms": summarize(whole)})
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        results["hungarian"].append(row)
        print(f"  matching G={num_gt}: " + (f"dense {fmt(row['hungarian_ms']['median'], 2)} ms, sparse "
                                           f"{fmt(row['sparse_ms']['median'], 2)} ms, same {row['same_matching']}"
                                           if "error" not in row else row["error"]), flush=True)


# ------------------------------------------------------------------------------------ reporting
def spread(s: Dict) -> str:
    if not s:
        return "-"
    return f"{s['median']:.1f} [{s['min']:.1f}-{s['max']:.1f}]"


def ratio(a: Optional[float], b: Optional[float]) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def median_of(row: Dict, key: str = "total") -> Optional[float]:
    return row.get(key, {}).get("median") if "error" not in row else None


def report(results: Dict, args) -> str:
    out = []
    cuda = args.device.startswith("cuda")
    if results["inference"]:
        header = ["model", "backbone", "input", "pre ms", "backbone+FPN ms", "head ms", "post ms",
                  "total ms median [min-max]", "IQR", "x RetinaNet", "x d2-FCOS"]
        header += ["img/s", "peak MB"] if cuda else []
        rows = []
        for r in results["inference"]:
            ref = {m["model"]: median_of(m) for m in results["inference"]
                   if m["backbone"] == r["backbone"] and m["size"] == r["size"]}
            if "error" in r:
                rows.append([r["model"], r["backbone"], r["size"], r["error"][:60]] + ["-"] * (len(header) - 4))
                continue
            t = median_of(r)
            row = [r["model"], r["backbone"], r["size"], fmt(r["preprocess"]["median"]),
                   fmt(r["backbone_fpn"]["median"]), fmt(r["head"]["median"]), fmt(r["post"]["median"]),
                   spread(r["total"]), f"{r['total']['p25']:.1f}-{r['total']['p75']:.1f}",
                   ratio(t, ref.get("d2-RetinaNet")), ratio(t, ref.get("d2-FCOS"))]
            if cuda:
                row += [fmt(r.get("images_per_s")), fmt(r.get("peak_mem_mb"), 0)]
            rows.append(row)
        out.append(f"### Inference, per image (batch {args.batch}, {args.runs} runs after {args.warmup} warm-up, "
                   f"score threshold {args.score_thresh})\n\n" + markdown_table(header, rows))
    if results["train"]:
        header = ["model", "backbone", "input", "forward ms", "assign ms", "losses ms", "backward ms",
                  "step ms median [min-max]", "x RetinaNet", "x d2-FCOS"]
        header += ["img/s", "peak MB"] if cuda else []
        rows = []
        for r in results["train"]:
            ref = {m["model"]: median_of(m) for m in results["train"]
                   if m["backbone"] == r["backbone"] and m["size"] == r["size"]}
            if "error" in r:
                rows.append([r["model"], r["backbone"], r["size"], r["error"][:60]] + ["-"] * (len(header) - 4))
                continue
            t = median_of(r)
            row = [r["model"], r["backbone"], r["size"], fmt(r["forward"]["median"]), fmt(r["assign"]["median"]),
                   fmt(r["losses"]["median"]), fmt(r["backward"]["median"]), spread(r["total"]),
                   ratio(t, ref.get("d2-RetinaNet")), ratio(t, ref.get("d2-FCOS"))]
            if cuda:
                row += [fmt(r.get("images_per_s")), fmt(r.get("peak_mem_mb"), 0)]
            rows.append(row)
        out.append(f"### Training step (batch {args.train_batch}, {args.train_gt} GT/image, "
                   f"{args.train_runs} runs after {args.warmup_train} warm-up)\n\n" + markdown_table(header, rows))
    if results["assign"]:
        rows = []
        for r in results["assign"]:
            ref = {m["assigner"]: m for m in results["assign"] if m["num_gt"] == r["num_gt"] and "error" not in m}
            if "error" in r:
                rows.append([r["assigner"], r["num_gt"], r["error"][:60]] + ["-"] * 6)
                continue
            t, mem = r["time_ms"]["median"], r["peak_mem_mb"]
            refs = [ref.get(k) for k in ("d2-RetinaNet", "d2-FCOS")]
            rows.append([r["assigner"], r["num_gt"], spread(r["time_ms"]),
                         ("<=" if r["peak_mem_is_upper_bound"] else "") + fmt(mem),
                         ratio(t, refs[0]["time_ms"]["median"] if refs[0] else None),
                         ratio(t, refs[1]["time_ms"]["median"] if refs[1] else None),
                         ratio(mem, refs[0]["peak_mem_mb"] if refs[0] else None),
                         ratio(mem, refs[1]["peak_mem_mb"] if refs[1] else None), r["positives"]])
        points = results["assign"][0].get("num_points", "?")
        out.append(f"### Target assignment, one image {args.assign_size} ({points} points, strides 8..128)\n\n"
                   + markdown_table(["assigner", "GT", "time ms median [min-max]", "peak MB",
                                     "time x RetinaNet", "time x d2-FCOS", "mem x RetinaNet", "mem x d2-FCOS",
                                     "positives"], rows))
        base = baseline_summary(results["assign"], args.baseline_gt)
        results["baseline"] = base
        if base:
            out.append(
                f"### Chunked FCOSAssigner vs dense baseline at {base['num_gt']} GT\n\n"
                f"time {base['time_ratio']:.2f}x (target <= {TARGET_TIME}: "
                f"{'met' if base['time_target_met'] else 'MISSED'}), peak memory {base['mem_ratio']:.3f}x "
                f"(target <= {TARGET_MEM}: {'met' if base['mem_target_met'] else 'MISSED'}); "
                f"identical labels: {base['same_positives']}")
    if results["hungarian"]:
        rows = [[r["num_gt"], r["pairs"], r["columns"], fmt(r["dense_matrix_mb"]), spread(r["hungarian_ms"]),
                 spread(r["sparse_ms"]), r["same_matching"], r["poto_solver"], spread(r["poto_total_ms"])]
                if "error" not in r else [r["num_gt"], r["error"][:60]] + ["-"] * 7 for r in results["hungarian"]]
        out.append(f"### POTO one-to-one matching, one image {args.assign_size}\n\n"
                   + markdown_table(["GT", "in-prior pairs", "cost columns", "dense matrix MB",
                                     "dense linear_sum_assignment ms", "sparse LAPJVsp ms", "same matching",
                                     "POTOAssigner uses", "whole POTOAssigner ms"], rows))
    return "\n\n".join(out)


def baseline_summary(rows: List[Dict], num_gt: int) -> Optional[Dict]:
    ours = next((r for r in rows if r["assigner"] == "FCOS" and r["num_gt"] == num_gt and "error" not in r), None)
    dense = next((r for r in rows if r["assigner"] == "dense-FCOS" and r["num_gt"] == num_gt and "error" not in r),
                 None)
    if ours is None or dense is None:
        return None
    t = ours["time_ms"]["median"] / dense["time_ms"]["median"]
    m = ours["peak_mem_mb"] / max(dense["peak_mem_mb"], 1e-9)
    return {"num_gt": num_gt, "time_ratio": t, "mem_ratio": m, "time_target_met": t <= TARGET_TIME,
            "mem_target_met": m <= TARGET_MEM, "same_positives": ours["positives"] == dense["positives"],
            "fcos_time_ms": ours["time_ms"]["median"], "dense_time_ms": dense["time_ms"]["median"],
            "fcos_peak_mb": ours["peak_mem_mb"], "dense_peak_mb": dense["peak_mem_mb"]}


# ------------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    csv = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    ints = lambda s: [int(x) for x in csv(s)]  # noqa: E731
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for everyone (default: torch's)")
    p.add_argument("--sections", type=csv, default=["infer", "train", "assign", "hungarian"],
                   help="comma list of infer,train,assign,hungarian (default: all)")
    p.add_argument("--backbones", type=csv, default=["tiny", "R50"], help="tiny (R-18, FPN 64) and/or R50")
    p.add_argument("--sizes", type=csv, default=["512x512", "800x1333"], help="HxW inputs for infer/train")
    p.add_argument("--models", type=csv, default=OUR_MODELS + D2_MODELS,
                   help=f"comma list of {','.join(OUR_MODELS + D2_MODELS)}")
    p.add_argument("--batch", type=int, default=1, help="images per inference forward (default 1)")
    p.add_argument("--runs", type=int, default=5, help="timed inference runs (default 5)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs (default 2)")
    p.add_argument("--score-thresh", type=float, default=0.0,
                   help="test score threshold forced on every model; < 0 keeps the configs' (default 0)")
    p.add_argument("--train-batch", type=int, default=2, help="images per training step (default 2)")
    p.add_argument("--train-runs", type=int, default=3, help="timed training steps (default 3)")
    p.add_argument("--warmup-train", type=int, default=1, help="untimed training steps (default 1)")
    p.add_argument("--train-gt", type=int, default=20, help="random GT boxes per training image (default 20)")
    p.add_argument("--assign-size", default="800x1333", help="HxW input of the assignment benchmark")
    p.add_argument("--assigners", type=csv, default=ASSIGNERS, help=f"comma list of {','.join(ASSIGNERS)}")
    p.add_argument("--gt-counts", type=ints, default=[10, 100, 1000, 3000], help="GT boxes per image")
    p.add_argument("--dense-max-gt", type=int, default=1000,
                   help="largest GT count for the dense assigners (dense-FCOS, d2-*) (default 1000)")
    p.add_argument("--baseline-gt", type=int, default=1000, help="GT count of the FCOSAssigner/dense comparison")
    p.add_argument("--assign-runs", type=int, default=3, help="timed assignment runs after the first call")
    p.add_argument("--hungarian-gt", type=ints, default=[10, 100, 500, 1000, 3000],
                   help="GT counts of the POTO matching timing")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: tiny backbone, 128x160 inputs, 1 run, assignment at 256x320 with 10/50 GT")
    p.add_argument("--out", default="output/benchmark.json", help="JSON output (default output/benchmark.json)")
    p.add_argument("--assign-case", default=None, help=argparse.SUPPRESS)  # internal: one subprocess case
    args = p.parse_args(argv)
    if args.quick:
        args.backbones, args.sizes, args.runs, args.warmup = ["tiny"], ["128x160"], 1, 0
        args.train_runs, args.warmup_train, args.train_gt = 1, 0, 5
        args.assign_size, args.gt_counts, args.baseline_gt, args.dense_max_gt = "256x320", [10, 50], 50, 50
        args.assign_runs, args.hungarian_gt = 1, [10, 20]
    unknown = [m for m in args.models if m not in CONFIGS] + [b for b in args.backbones if b not in ("tiny", "R50")]
    unknown += [a for a in args.assigners if a not in ASSIGNERS]
    unknown += [s for s in args.sections if s not in ("infer", "train", "assign", "hungarian")]
    if unknown:
        p.error(f"unknown value(s) {unknown}; see --help")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.assign_case:
        print(json.dumps(run_assign_case(json.loads(args.assign_case))))
        return
    import_library()

    results = {"env": environment(args), "settings": {k: v for k, v in vars(args).items() if k != "assign_case"},
               "inference": [], "train": [], "assign": [], "hungarian": []}
    print(f"benchmark on {results['env']['device']} ({results['env'].get('cpu')}), "
          f"{results['env']['threads']} threads", flush=True)
    if {"infer", "train"} & set(args.sections):
        run_models(args, results)
    if "assign" in args.sections:
        run_assign(args, results)
    if "hungarian" in args.sections:
        run_hungarian(args, results)
    text = report(results, args)
    print("\n" + text)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

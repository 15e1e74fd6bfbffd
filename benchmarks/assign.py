"""``assign`` section: target assignment alone, time and peak memory.

One image of ``--assign-size`` with five levels (strides 8..128) and ``--gt-counts`` random GT
boxes (default 10/100/1000/3000), for every ``--assigners`` entry (:mod:`benchmarks.models`); the
dense ones (dense-FCOS, d2-FCOS, d2-RetinaNet) only up to ``--dense-max-gt``. Every case runs in
a fresh subprocess (``python -m benchmarks.detectors --assign-case JSON``, :func:`run_assign_case`) so that
no case inherits another's allocations. Peak memory is that of the first call (inputs already
built, nothing freed before it that the call could reuse), measured as :mod:`benchmarks.memory`
says; the time is summarized over ``--assign-runs`` further calls. ``--threads`` is passed on to
every subprocess. :func:`baseline_summary` compares the chunked FCOSAssigner with the dense
baseline at ``--baseline-gt`` against the targets ``TARGET_TIME`` and ``TARGET_MEM``.
"""
import json
import os
import subprocess
import sys
import time
from typing import Dict, List, Optional

import torch

from . import REPO
from .inputs import assign_inputs, parse_size
from .memory import first_call_peak
from .models import DENSE_ASSIGNERS, make_assign_fn
from .timing import summarize, synchronize

TARGET_TIME, TARGET_MEM = 0.5, 0.25  # chunked FCOSAssigner vs dense baseline at 1000 GT


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
            proc = subprocess.run([sys.executable, "-m", "benchmarks.detectors", "--assign-case",
                                   json.dumps(spec)], capture_output=True, text=True, cwd=REPO)
            try:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                row = {"assigner": name, "num_gt": num_gt, "size": args.assign_size,
                       "error": (proc.stderr.strip().splitlines() or ["no output"])[-1]}
            results["assign"].append(row)
            t = row.get("time_ms", {}).get("median")
            print(f"  assign {name:13s} G={num_gt:5d} " + (f"{t:9.1f} ms {row['peak_mem_mb']:8.1f} MB"
                                                         if t is not None else row["error"]), flush=True)


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

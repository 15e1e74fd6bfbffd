"""What the benchmark prints and records besides the timings: the run's environment, one
progress line per timed model, and the Markdown tables of every section (times in ms as
"median [min-max]", ratios to detectron2's RetinaNet and FCOS on the same backbone and input
size, "-" where a value is missing, a model's error in place of its numbers)."""
import math
import platform
import time
from typing import Dict, List, Optional

import torch

from . import cpu_description
from .assign import TARGET_MEM, TARGET_TIME, baseline_summary


def environment(args) -> Dict:
    import detectron2

    info = {"python": platform.python_version(), "torch": torch.__version__,
            "detectron2": detectron2.__version__, "device": args.device,
            "threads": torch.get_num_threads(), "machine": platform.machine(),
            "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    info.update(cpu_description())
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def fmt(x, digits=1):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def markdown_table(header: List[str], rows: List[List[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def spread(s: Dict) -> str:
    if not s:
        return "-"
    return f"{s['median']:.1f} [{s['min']:.1f}-{s['max']:.1f}]"


def ratio(a: Optional[float], b: Optional[float]) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def median_of(row: Dict, key: str = "total") -> Optional[float]:
    return row.get(key, {}).get("median") if "error" not in row else None


def print_progress(section: str, row: Dict):
    total = row.get("total", {}).get("median") if "error" not in row else None
    status = f"{total:.1f} ms" if total is not None else row.get("error", "?")
    print(f"  {section:5s} {row['backbone']:4s} {row['size']:>9s} {row['model']:13s} {status}", flush=True)


def model_table(results: List[Dict], parts: List[str], header: List[str], iqr: bool, cuda: bool) -> str:
    """Table of the ``infer`` or ``train`` rows: model, backbone, input, the median of each of
    ``parts``, the total's spread (and IQR), its ratios to d2-RetinaNet and d2-FCOS on the same
    backbone and input; on CUDA images/s and peak memory. ``header`` names the columns."""
    header = header + (["img/s", "peak MB"] if cuda else [])
    rows = []
    for r in results:
        ref = {m["model"]: median_of(m) for m in results if m["backbone"] == r["backbone"] and m["size"] == r["size"]}
        if "error" in r:
            rows.append([r["model"], r["backbone"], r["size"], r["error"][:60]] + ["-"] * (len(header) - 4))
            continue
        t = median_of(r)
        row = [r["model"], r["backbone"], r["size"]] + [fmt(r[p]["median"]) for p in parts] + [spread(r["total"])]
        row += [f"{r['total']['p25']:.1f}-{r['total']['p75']:.1f}"] if iqr else []
        row += [ratio(t, ref.get("d2-RetinaNet")), ratio(t, ref.get("d2-FCOS"))]
        if cuda:
            row += [fmt(r.get("images_per_s")), fmt(r.get("peak_mem_mb"), 0)]
        rows.append(row)
    return markdown_table(header, rows)


def report(results: Dict, args) -> str:
    """The Markdown tables of every section run; also stores ``results["baseline"]`` (see
    :func:`benchmarks.assign.baseline_summary`) when the assignment section ran."""
    out = []
    cuda = args.device.startswith("cuda")
    if results["inference"]:
        out.append(f"### Inference, per image (batch {args.batch}, {args.runs} runs after {args.warmup} warm-up, "
                   f"score threshold {args.score_thresh})\n\n"
                   + model_table(results["inference"], ["preprocess", "backbone_fpn", "head", "post"],
                                 ["model", "backbone", "input", "pre ms", "backbone+FPN ms", "head ms", "post ms",
                                  "total ms median [min-max]", "IQR", "x RetinaNet", "x d2-FCOS"], True, cuda))
    if results["train"]:
        out.append(f"### Training step (batch {args.train_batch}, {args.train_gt} GT/image, "
                   f"{args.train_runs} runs after {args.warmup_train} warm-up)\n\n"
                   + model_table(results["train"], ["forward", "assign", "losses", "backward"],
                                 ["model", "backbone", "input", "forward ms", "assign ms", "losses ms", "backward ms",
                                  "step ms median [min-max]", "x RetinaNet", "x d2-FCOS"], False, cuda))
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

#!/usr/bin/env python
"""Fixed-budget accuracy comparison on the bundled tree-crown split (trees_train -> trees_val):
our tiny detectors and detectron2's RetinaNet, each trained from scratch on the CPU through
``train_net.py`` with the same backbone (R-18 + FPN-64 from ``build_fcos_resnet_fpn_backbone``),
input sizes, batch, iterations, LR schedule and seed (configs/tiny/Base-Tiny.yaml), then
evaluated with detectron2's COCOEvaluator (COCO AP at up to ``TEST.COCO_MAX_DETS_PER_IMAGE``
detections per image).

    python tools/compare_accuracy.py                      # all models, full schedule (hours on CPU)
    python tools/compare_accuracy.py --only FCOS,RetinaNet --iters 300
    python tools/compare_accuracy.py --iters 2 --only FCOS    # smoke run
    python tools/compare_accuracy.py --table-only            # re-print the table from earlier runs

Models (``--only``): FCOS, ATSS, GFL, VFNet, DeFCN (NMS-free), DeFCN+NMS (the DeFCN weights
evaluated with class-aware NMS at ``MODEL.DENSE.NMS_THRESH_TEST``: NMS only changes inference, so
this is an ``--eval-only`` run of the DeFCN checkpoint; DeFCN is trained first if needed), TOOD,
the YAML-only compositions of configs/compositions/ (FCOS+ATSS, and the NMS-free FCOS+POTO,
GFL+POTO+3DMF+Aux and VFNet+POTO+3DMF+Aux, each also evaluated with NMS: "+NMS") and RetinaNet
(detectron2's, configs/tiny/RetinaNet_tiny_R_18_cpu.yaml).

``--iters N`` overrides ``SOLVER.MAX_ITER`` and scales ``SOLVER.STEPS`` and
``SOLVER.WARMUP_ITERS`` by N / MAX_ITER of the config, so every model gets the same (shortened)
schedule shape. Without it the configs' schedule is used (1800 iterations).

For each model the tool writes ``<out-dir>/<name>/`` (train_net.py's output: checkpoints,
metrics.json, log.txt, inference/trees_val/coco_instances_results.json), ``stdout.txt`` (the
subprocess' output) and ``summary.json``; then ``<out-dir>/compare_accuracy.json`` and
``compare_accuracy.md`` with one row per model found in ``<out-dir>`` (runs made separately with
``--only`` are gathered into one table). Columns:

* AP, AP50, AP75, APs, APm, APl: COCO bbox metrics (percent) on trees_val.
* train s: detectron2's "Total training time" (the training loop, without the final
  evaluation); s/it: its "Overall training speed" (absent for runs shorter than 4 iterations);
  wall s: the whole subprocess (start-up, training, evaluation).
* dets/img: detections per val image with score > ``--dup-score``; dup pairs/img: pairs of those
  detections of the same class with IoU > ``--dup-iou`` (default 0.7), i.e. the duplicates that
  NMS would remove; what NMS-free DeFCN must avoid by itself.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASET = "trees_val"

# name -> (config file, extra opts, evaluated from the checkpoint of another run or None)
RUNS = {
    "FCOS": ("configs/FCOS/FCOS_tiny_R_18_cpu.yaml", [], None),
    "ATSS": ("configs/ATSS/ATSS_tiny_R_18_cpu.yaml", [], None),
    "GFL": ("configs/GFL/GFL_tiny_R_18_cpu.yaml", [], None),
    "VFNet": ("configs/VFNet/VFNet_tiny_R_18_cpu.yaml", [], None),
    "DeFCN": ("configs/DeFCN/DeFCN_tiny_R_18_cpu.yaml", ["MODEL.DENSE.POSTPROCESS", "topk"], None),
    "DeFCN+NMS": ("configs/DeFCN/DeFCN_tiny_R_18_cpu.yaml", ["MODEL.DENSE.POSTPROCESS", "nms"], "DeFCN"),
    "TOOD": ("configs/TOOD/TOOD_tiny_R_18_cpu.yaml", [], None),
    # Compositions from YAML alone (configs/compositions/)
    "FCOS+ATSS": ("configs/compositions/FCOS_ATSS_tiny_R_18_cpu.yaml", [], None),
    "FCOS+POTO": ("configs/compositions/FCOS_POTO_tiny_R_18_cpu.yaml", [], None),
    "FCOS+POTO+NMS": ("configs/compositions/FCOS_POTO_tiny_R_18_cpu.yaml", ["MODEL.DENSE.POSTPROCESS", "nms"],
                      "FCOS+POTO"),
    "GFL+POTO+3DMF+Aux": ("configs/compositions/GFL_POTO_3DMF_Aux_tiny_R_18_cpu.yaml", [], None),
    "GFL+POTO+3DMF+Aux+NMS": ("configs/compositions/GFL_POTO_3DMF_Aux_tiny_R_18_cpu.yaml",
                              ["MODEL.DENSE.POSTPROCESS", "nms"], "GFL+POTO+3DMF+Aux"),
    "VFNet+POTO+3DMF+Aux": ("configs/compositions/VFNet_POTO_3DMF_Aux_tiny_R_18_cpu.yaml", [], None),
    "VFNet+POTO+3DMF+Aux+NMS": ("configs/compositions/VFNet_POTO_3DMF_Aux_tiny_R_18_cpu.yaml",
                                ["MODEL.DENSE.POSTPROCESS", "nms"], "VFNet+POTO+3DMF+Aux"),
    # NMS-free by dual assignment: one-to-many + one-to-one branches, inference from the one-to-one
    "GFL+Dual": ("configs/compositions/GFL_Dual_tiny_R_18_cpu.yaml", [], None),
    "GFL+Dual+NMS": ("configs/compositions/GFL_Dual_tiny_R_18_cpu.yaml", ["MODEL.DENSE.POSTPROCESS", "nms"],
                     "GFL+Dual"),
    "GFL+Dual/o2m+NMS": ("configs/compositions/GFL_Dual_tiny_R_18_cpu.yaml",
                         ["MODEL.DUAL.INFERENCE_BRANCH", "one_to_many", "MODEL.DENSE.POSTPROCESS", "nms"], "GFL+Dual"),
    "GFL+DualTAL": ("configs/compositions/GFL_Dual_TAL_tiny_R_18_cpu.yaml", [], None),
    "GFL+DualTAL+NMS": ("configs/compositions/GFL_Dual_TAL_tiny_R_18_cpu.yaml", ["MODEL.DENSE.POSTPROCESS", "nms"],
                        "GFL+DualTAL"),
    "GFL+DualTAL/o2m+NMS": ("configs/compositions/GFL_Dual_TAL_tiny_R_18_cpu.yaml",
                            ["MODEL.DUAL.INFERENCE_BRANCH", "one_to_many", "MODEL.DENSE.POSTPROCESS", "nms"],
                            "GFL+DualTAL"),
    "GFL+DualShared": ("configs/compositions/GFL_Dual_shared_tiny_R_18_cpu.yaml", [], None),
    "GFL+DualShared+NMS": ("configs/compositions/GFL_Dual_shared_tiny_R_18_cpu.yaml",
                           ["MODEL.DENSE.POSTPROCESS", "nms"], "GFL+DualShared"),
    "GFL+DualShared/o2m+NMS": ("configs/compositions/GFL_Dual_shared_tiny_R_18_cpu.yaml",
                               ["MODEL.DUAL.INFERENCE_BRANCH", "one_to_many", "MODEL.DENSE.POSTPROCESS", "nms"],
                               "GFL+DualShared"),
    "RetinaNet": ("configs/tiny/RetinaNet_tiny_R_18_cpu.yaml", [], None),
}
METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def run_dir(out_dir: str, name: str) -> str:
    return os.path.join(out_dir, name.replace("+", "_"))


def load_config(config_file: str):
    """The merged yacs config of ``config_file`` (to read its schedule)."""
    from detectron2.config import get_cfg

    from d2_anchorfree import add_anchorfree_config

    cfg = get_cfg()
    add_anchorfree_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, config_file))
    return cfg


def schedule_opts(cfg, iters: Optional[int]) -> List[str]:
    """``SOLVER.*`` overrides giving ``iters`` iterations with the config's schedule shape.

    STEPS and WARMUP_ITERS are scaled by iters / MAX_ITER; steps that do not fall strictly
    inside (0, iters) or repeat are dropped (detectron2 requires increasing milestones below
    MAX_ITER). No intermediate checkpoints (only model_final.pth).
    """
    opts = ["SOLVER.CHECKPOINT_PERIOD", "100000000"]
    if iters is None:
        return opts
    scale = iters / cfg.SOLVER.MAX_ITER
    steps = []
    for s in cfg.SOLVER.STEPS:
        v = int(round(s * scale))
        if 0 < v < iters and (not steps or v > steps[-1]):
            steps.append(v)
    warmup = min(cfg.SOLVER.WARMUP_ITERS, max(1, int(round(cfg.SOLVER.WARMUP_ITERS * scale))))
    return opts + ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", str(tuple(steps)),
                   "SOLVER.WARMUP_ITERS", str(warmup)]


def parse_hms(text: str) -> float:
    """"H:MM:SS" or "H:MM:SS.ff" -> seconds."""
    h, m, s = text.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def parse_log(text: str) -> Dict:
    """COCO bbox metrics (detectron2's "copypaste" lines) and training times from a log."""
    out: Dict = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if "copypaste: Task: bbox" in line and i + 2 < len(lines):
            names = lines[i + 1].split("copypaste:")[1].strip().split(",")
            values = lines[i + 2].split("copypaste:")[1].strip().split(",")
            # nan (e.g. no large objects in val) -> None, so that the JSON stays strict
            out["metrics"] = {n: (None if float(v) != float(v) else float(v)) for n, v in zip(names, values)}
    m = re.search(r"Overall training speed: (\d+) iterations in ([\d:.]+) \(([\d.]+) s / it\)", text)
    if m:
        out["s_per_it"] = float(m.group(3))
    m = re.search(r"Total training time: ([\d:.]+)", text)
    if m:
        out["train_s"] = parse_hms(m.group(1))
    m = re.search(r"Total inference time: ([\d:.]+)", text)
    if m:
        out["eval_s"] = parse_hms(m.group(1))
    return out


def box_iou_xywh(boxes):
    """Pairwise IoU of [N, 4] (x, y, w, h) boxes -> [N, N]."""
    import torch
    from torchvision.ops import box_iou

    b = torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    xyxy = torch.cat([b[:, :2], b[:, :2] + b[:, 2:]], dim=1)
    return box_iou(xyxy, xyxy)


def count_duplicates(results: List[Dict], image_ids: List[int], score: float, iou: float) -> Dict:
    """Duplicate detections in a COCO results list.

    Args:
        results: COCO detections (image_id, category_id, bbox [x, y, w, h] px, score).
        image_ids: all evaluated images (images without detections count as 0).
        score: only detections with score > ``score`` are considered.
        iou: a pair of same-class detections with IoU > ``iou`` is a duplicate pair.

    Returns:
        dict: ``dets_per_image`` (score > threshold), ``dup_pairs_per_image``, ``dup_pairs``,
        ``images``.
    """
    import torch

    groups = defaultdict(list)
    for r in results:
        if r["score"] > score:
            groups[(r["image_id"], r["category_id"])].append(r["bbox"])
    pairs = 0
    dets = 0
    for boxes in groups.values():
        dets += len(boxes)
        if len(boxes) > 1:
            ious = box_iou_xywh(boxes)
            pairs += int(torch.triu(ious > iou, diagonal=1).sum())
    n = max(len(image_ids), 1)
    return {"dets_per_image": dets / n, "dup_pairs_per_image": pairs / n, "dup_pairs": pairs,
            "images": len(image_ids)}


def val_image_ids() -> List[int]:
    with open(os.path.join(REPO, "datasets", "trees", "val.json")) as f:
        return [im["id"] for im in json.load(f)["images"]]


def run_one(name: str, args) -> Dict:
    """Train (or, for DeFCN+NMS, evaluate) one model through train_net.py; return its summary."""
    config, extra, eval_of = RUNS[name]
    out = run_dir(args.out_dir, name)
    cfg = load_config(config)
    iters = args.iters if args.iters is not None else cfg.SOLVER.MAX_ITER
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", os.path.join(REPO, config)]
    opts = ["OUTPUT_DIR", out, "SEED", str(args.seed)] + schedule_opts(cfg, args.iters) + extra
    if eval_of is not None:
        weights = os.path.join(run_dir(args.out_dir, eval_of), "model_final.pth")
        base_summary = read_summary(args.out_dir, eval_of)
        if not os.path.exists(weights) or base_summary is None or base_summary["iters"] != iters:
            print(f"== {name} needs {eval_of}'s checkpoint ({iters} iterations): training {eval_of} first")
            run_one(eval_of, args)
        cmd += ["--eval-only"]
        opts += ["MODEL.WEIGHTS", weights]
    cmd += opts
    env = dict(os.environ)
    if args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
    if args.dry_run:
        return {}
    os.makedirs(out, exist_ok=True)
    start = time.time()
    with open(os.path.join(out, "stdout.txt"), "w") as log:
        proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.time() - start
    with open(os.path.join(out, "stdout.txt")) as f:
        text = f.read()
    if proc.returncode != 0:
        tail = "\n".join(text.splitlines()[-15:])
        raise RuntimeError(f"{name}: train_net.py exited with {proc.returncode}; end of {out}/stdout.txt:\n{tail}")
    parsed = parse_log(text)
    if "metrics" not in parsed:
        raise RuntimeError(f"{name}: no 'copypaste: Task: bbox' evaluation in {out}/stdout.txt")
    summary = {"name": name, "config": config, "opts": opts, "iters": iters, "eval_only_of": eval_of,
               "wall_s": wall, **parsed}
    if eval_of is not None:  # same training as the base run
        base = read_summary(args.out_dir, eval_of) or {}
        summary.update({k: base.get(k) for k in ("train_s", "s_per_it")})
    results_file = os.path.join(out, "inference", DATASET, "coco_instances_results.json")
    with open(results_file) as f:
        detections = json.load(f)
    summary["duplicates"] = count_duplicates(detections, val_image_ids(), args.dup_score, args.dup_iou)
    summary["duplicates"].update(score_thresh=args.dup_score, iou_thresh=args.dup_iou)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def read_summary(out_dir: str, name: str) -> Optional[Dict]:
    path = os.path.join(run_dir(out_dir, name), "summary.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def fmt(x, digits=1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def write_table(out_dir: str) -> str:
    """Gather every model's summary.json under ``out_dir`` into compare_accuracy.{json,md}."""
    rows = [s for s in (read_summary(out_dir, n) for n in RUNS) if s is not None]
    header = ["model", "iters", *METRICS, "train s", "s/it", "wall s", "dets/img", "dup pairs/img"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for s in rows:
        m, d = s.get("metrics", {}), s.get("duplicates", {})
        name = s["name"] + (" (eval of " + s["eval_only_of"] + ")" if s.get("eval_only_of") else "")
        lines.append("| " + " | ".join([
            name, str(s["iters"]), *[fmt(m.get(k)) for k in METRICS], fmt(s.get("train_s"), 0),
            fmt(s.get("s_per_it"), 2), fmt(s.get("wall_s"), 0), fmt(d.get("dets_per_image")),
            fmt(d.get("dup_pairs_per_image"), 2)]) + " |")
    dup = rows[0]["duplicates"] if rows else {}
    text = ("COCO bbox AP (%) on trees_val; duplicates: same-class pairs with IoU > "
            f"{dup.get('iou_thresh', '-')} among detections with score > {dup.get('score_thresh', '-')}\n\n"
            + "\n".join(lines))
    with open(os.path.join(out_dir, "compare_accuracy.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out_dir, "compare_accuracy.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return text


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(RUNS), help=f"comma list of {','.join(RUNS)} (default: all)")
    p.add_argument("--iters", type=int, default=None, help="training iterations (default: the configs' MAX_ITER)")
    p.add_argument("--seed", type=int, default=42, help="SEED for every run (default 42, as Base-Tiny.yaml)")
    p.add_argument("--threads", type=int, default=None, help="OMP/MKL_NUM_THREADS of the training processes")
    p.add_argument("--out-dir", default="output/compare_accuracy", help="where runs and tables go")
    p.add_argument("--dup-score", type=float, default=0.3, help="score threshold of the duplicate count")
    p.add_argument("--dup-iou", type=float, default=0.7, help="IoU above which two detections are duplicates")
    p.add_argument("--skip-existing", action="store_true",
                   help="reuse a model's summary.json when it exists with the same number of iterations")
    p.add_argument("--table-only", action="store_true", help="only gather existing summaries into the table")
    p.add_argument("--dry-run", action="store_true", help="print the train_net.py commands, run nothing")
    args = p.parse_args(argv)
    args.only = [n for n in args.only.split(",") if n]
    unknown = [n for n in args.only if n not in RUNS]
    if unknown:
        p.error(f"unknown model(s) {unknown}; known: {list(RUNS)}")
    if args.iters is not None and args.iters < 1:
        p.error(f"--iters must be >= 1, got {args.iters}")
    args.out_dir = os.path.abspath(args.out_dir)
    return args


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.out_dir, exist_ok=True)
    if not args.table_only:
        for name in args.only:
            existing = read_summary(args.out_dir, name)
            want = args.iters if args.iters is not None else load_config(RUNS[name][0]).SOLVER.MAX_ITER
            if args.skip_existing and existing is not None and existing["iters"] == want:
                print(f"== {name}: reusing {run_dir(args.out_dir, name)}/summary.json")
                continue
            run_one(name, args)
    if args.dry_run:
        return
    print("\n" + write_table(args.out_dir))
    print(f"\nwrote {os.path.join(args.out_dir, 'compare_accuracy.md')} and compare_accuracy.json")


if __name__ == "__main__":
    main()

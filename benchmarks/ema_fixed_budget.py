"""Model EMA at a fixed training budget: COCO AP of the trained weights and of their exponential
moving average, after the same run, for the tiny CPU configs on the bundled tree crowns.

    python -m benchmarks.ema_fixed_budget                      # FCOS, GFL, DeFCN; 300 iterations each
    python -m benchmarks.ema_fixed_budget --max-iter 4 --configs configs/FCOS/FCOS_tiny_R_18_cpu.yaml

The average does not change the trained weights' trajectory, so one run per detector gives both:
it trains with ``MODEL_EMA.ENABLED True`` (``train_net.py``, no evaluation during training), then
evaluates ``model_final.pth``'s ``"model"`` (the average) and its ``"model_raw"`` (the trained
weights, written to ``model_final_raw.pth``) with ``train_net.py --eval-only`` on ``trees_val``,
and prints one table row per detector (bbox AP and AP50 of both, and the difference). The load
average before and after each run is printed too: the numbers compare only on a quiet machine.

Needs the bundled data (``make data``, or ``--trees`` pointing at a prepared folder). About 10
minutes of CPU training per detector at 300 iterations on two idle cores.
"""
import argparse
import os
import re
import subprocess
import sys
import time
from typing import Dict, List

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["configs/FCOS/FCOS_tiny_R_18_cpu.yaml", "configs/GFL/GFL_tiny_R_18_cpu.yaml",
           "configs/DeFCN/DeFCN_tiny_R_18_cpu.yaml"]
# detectron2's print_csv_format: "copypaste: AP,AP50,..." then "copypaste: 12.3456,..." for each task.
_COPYPASTE = re.compile(r"copypaste: Task: bbox\s.*?copypaste: (AP,[^\n]*)\n.*?copypaste: ([-\d.,nan]+)", re.S)


def argument_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=CONFIGS,
                   help="tiny configs to train (default: FCOS, GFL, DeFCN)")
    p.add_argument("--max-iter", type=int, default=300,
                   help="SOLVER.MAX_ITER of every run (default: 300, the configs')")
    p.add_argument("--decay", type=float, default=0.98,
                   help="MODEL_EMA.DECAY (default 0.98: an average over ~50 of the 300 iterations)")
    p.add_argument("--warmup", type=int, default=30,
                   help="MODEL_EMA.WARMUP (default 30: the full decay from about iteration 150)")
    p.add_argument("--trees", default="datasets/trees", help="the prepared tree-crown data (make data)")
    p.add_argument("--output", default="output/ema_fixed_budget", help="one OUTPUT_DIR per config below this")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="more config overrides for every run, KEY VALUE ...")
    return p


def _run(cmd: List[str], log_path: str) -> str:
    """Run ``cmd`` in the checkout's root; its output goes to ``log_path`` and is returned.

    Raises:
        RuntimeError: a non-zero exit, naming the log.
    """
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    with open(log_path, "w") as f:
        f.write(result.stdout + result.stderr)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {result.returncode}); see {log_path}")
    return result.stdout + result.stderr


def bbox_ap(log: str) -> Dict[str, float]:
    """{"AP": ..., "AP50": ...} (percent) from detectron2's "copypaste" lines of an evaluation log.

    Raises:
        ValueError: the log has no bbox results.
    """
    match = _COPYPASTE.search(log)
    if not match:
        raise ValueError("no 'copypaste: Task: bbox' results in the evaluation output")
    return dict(zip(match.group(1).split(","), (float(v) for v in match.group(2).split(","))))


def data_opts(trees: str) -> List[str]:
    """DATASETS.REGISTER_COCO for the configs' dataset names at ``trees``."""
    trees = os.path.abspath(trees)
    if not os.path.isfile(os.path.join(trees, "val.json")):
        raise FileNotFoundError(f"no prepared tree-crown data in {trees}: run `make data` or pass --trees")
    return ["DATASETS.REGISTER_COCO",
            str([f"{name},{trees}/{name.split('_')[1]}.json,{trees}/images" for name in ("trees_train", "trees_val")])]


def measure(config: str, args, extra: List[str]) -> Dict[str, float]:
    """Train ``config`` with EMA, evaluate the average and the trained weights; returns the row."""
    out = os.path.abspath(os.path.join(args.output, os.path.splitext(os.path.basename(config))[0]))
    os.makedirs(out, exist_ok=True)
    train_net = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", config]
    row = {"load_before": os.getloadavg()[0]}
    start = time.monotonic()
    _run(train_net + extra + ["OUTPUT_DIR", out, "SOLVER.MAX_ITER", str(args.max_iter), "TEST.EVAL_PERIOD", "0",
                              "DATASETS.TEST", "()", "MODEL_EMA.ENABLED", "True", "MODEL_EMA.DECAY", str(args.decay),
                              "MODEL_EMA.WARMUP", str(args.warmup)], os.path.join(out, "train.log"))
    row["train_s"] = time.monotonic() - start
    raw = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=True)
    raw["model"] = raw.pop("model_raw")  # the same file with the trained weights as "model"
    torch.save(raw, os.path.join(out, "model_final_raw.pth"))
    for name, weights in (("ema", "model_final.pth"), ("raw", "model_final_raw.pth")):
        log = _run(train_net + ["--eval-only"] + extra + ["MODEL.WEIGHTS", os.path.join(out, weights),
                                                          "OUTPUT_DIR", os.path.join(out, f"eval_{name}")],
                   os.path.join(out, f"eval_{name}.log"))
        for metric, value in bbox_ap(log).items():
            row[f"{name}_{metric}"] = value
    row["load_after"] = os.getloadavg()[0]
    return row


def main(argv=None) -> int:
    args = argument_parser().parse_args(argv)
    extra = data_opts(args.trees) + list(args.opts)
    print(f"MODEL_EMA.DECAY {args.decay}, MODEL_EMA.WARMUP {args.warmup}, SOLVER.MAX_ITER {args.max_iter}; "
          f"load average {os.getloadavg()}", flush=True)
    rows = {}
    for config in args.configs:
        rows[config] = measure(config, args, extra)
        print(f"{config}: done, {rows[config]['train_s']:.0f} s of training", flush=True)
    print("\n| config | AP trained | AP EMA | AP EMA - trained | AP50 trained | AP50 EMA | train s "
          "| load before/after |")
    print("|---|---|---|---|---|---|---|---|")
    for config, r in rows.items():
        print(f"| {os.path.basename(config)} | {r['raw_AP']:.2f} | {r['ema_AP']:.2f} "
              f"| {r['ema_AP'] - r['raw_AP']:+.2f} | {r['raw_AP50']:.2f} | {r['ema_AP50']:.2f} | {r['train_s']:.0f} | "
              f"{r['load_before']:.1f}/{r['load_after']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

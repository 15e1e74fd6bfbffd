"""Speed, memory and scaling of the d2_anchorfree detectors next to detectron2's own dense
detectors (RetinaNet and FCOS), in one run, on the same backbone, input size, device, thread
count and batch. Prints Markdown tables and writes everything to a JSON file.

    d2af benchmark                                  # everything, CPU (tens of minutes)
    d2af benchmark --quick                          # smoke run (about a minute)
    d2af benchmark --sections assign,hungarian      # assignment only
    d2af benchmark --backbones tiny --sizes 512x512 --sections infer,train
    d2af benchmark --device cuda --threads 8 --out output/bench_cuda.json

(``python tools/benchmark.py`` and ``python -m benchmarks.detectors`` take the same arguments.)
This file is the command line; what each part measures, and how, is in the docstrings of
benchmarks/ (see benchmarks/__init__.py):

* ``--sections``: ``infer`` (benchmarks/inference.py: latency per image, split into
  preprocess / backbone+FPN / head / post-processing), ``train`` (benchmarks/training.py: one
  training step split into forward / assignment / losses / backward), ``assign``
  (benchmarks/assign.py: target assignment alone for many GT counts, time and peak memory,
  each case in a fresh subprocess) and ``hungarian`` (benchmarks/hungarian.py: POTO's
  one-to-one matching by both exact solvers).
* ``--models`` / ``--backbones`` / ``--assigners``: benchmarks/models.py. Every model of a
  backbone is built once; ``infer`` and ``train`` time the models round-robin
  (benchmarks/timing.py). Ratios "x RetinaNet" / "x d2-FCOS" divide a model's time by
  detectron2's on the same backbone and size (benchmarks/report.py).

With ``--device cuda`` every timed region is bracketed by ``torch.cuda.synchronize()``, the
tables add images/s and the peak CUDA memory of the call (benchmarks/memory.py).
``--threads N`` calls ``torch.set_num_threads(N)`` in this process and in every assignment
subprocess.
"""
import argparse
import gc
import json
from typing import Dict

import torch

from benchmarks import write_json_report
from benchmarks.assign import run_assign, run_assign_case
from benchmarks.hungarian import run_hungarian
from benchmarks.inference import run_inference
from benchmarks.inputs import parse_size
from benchmarks.models import ASSIGNERS, CONFIGS, D2_MODELS, OUR_MODELS, build_entries, import_library
from benchmarks.report import environment, report
from benchmarks.training import run_training


def parse_args(argv=None, prog=None):
    """Command-line arguments (see the module docstring); ``prog``: the program name of the usage."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
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


def run_models(args, results: Dict):
    """The ``infer`` and ``train`` sections: every model of a backbone is built once, then timed
    on every ``--sizes`` input."""
    sections = set(args.sections)
    for backbone in args.backbones:
        entries = build_entries(args, backbone, results)
        for size in args.sizes:
            h, w = parse_size(size)
            base = {"backbone": backbone, "size": size}
            if "infer" in sections:
                run_inference(args, entries, base, h, w, results)
            if "train" in sections:
                run_training(args, entries, base, h, w, results)
        del entries
        gc.collect()


def main(argv=None, prog=None):
    """Run the benchmark (see the module docstring); returns None (errors raise).

    Args:
        argv (list[str], optional): the arguments (default: ``sys.argv[1:]``).
        prog (str, optional): the program name shown in the usage (default: the script's name).
    """
    args = parse_args(argv, prog)
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
    write_json_report(args.out, results, prefix="\n")


if __name__ == "__main__":
    main()

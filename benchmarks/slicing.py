"""Whole-image accuracy and time of sliced inference and TTA, and peak memory of sliced inference
on a huge image, side by side in one run. Prints Markdown tables and writes a JSON file.

    python tools/compare_accuracy.py --only FCOS,ATSS,DeFCN --iters 300   # the weights (CPU, ~35 min)
    d2af benchmark slicing --models FCOS,ATSS,DeFCN         # run from the repository root
    d2af benchmark slicing --sections memory --memory-sizes 6000 --batch-sizes 1,4,8
    d2af benchmark slicing --quick          # smoke run: FCOS only, untrained if needed

(``python tools/benchmark_slicing.py`` and ``python -m benchmarks.slicing`` take the same
arguments.)

``accuracy``: every model of ``--models`` (``MODELS``: its tiny config; weights
``<runs-dir>/<name>/model_final.pth`` as written by tools/compare_accuracy.py, or
untrained with ``--allow-untrained``) is evaluated on ``--dataset`` (default
``trees_val_whole``: the val regions of the tree data whole, up to 400 x 2472 pixels) by
detectron2's ``inference_on_dataset`` + our COCO evaluator, exactly what ``d2af evaluate``
does, in these modes (``MODES``: the config opts of each):

* ``resized``: plain inference, the whole image resized by ``INPUT.MIN_SIZE_TEST`` /
  ``MAX_SIZE_TEST`` as today (400 / 640 in the tiny configs: a 400 x 2472 strip becomes 104 x 640);
* ``full-res``: plain inference on the whole image at full resolution (``MAX_SIZE_TEST`` 4000),
  feasible for these strips, not for an orthophoto of 6000 x 6000 (memory grows with the image);
* ``sliced``: ``TEST.SLICE`` 400 px windows, 100 px overlap, batches of 4, merge "nmm";
* ``sliced+tta``: the same, each window with ``TEST.AUG`` sizes (320, 400, 480) x flip, merged
  by NMS across augmentations, then across windows;
* ``sliced+tta-wbf``: as above with weighted boxes fusion (``TEST.AUG.MERGE wbf``).

"s/img" is the wall time of the (wrapped) model's forward per image, data loading and COCO
evaluation excluded, with ``torch.set_num_threads(--threads)``; "CPU s/img" the CPU time of this
process in it (all threads), less sensitive to other jobs on a shared machine.

``memory``: sliced inference (``SlicedDetector.predict``, 400 px windows, 100 px overlap, batch
``--batch-sizes``) of FCOS on a ``--memory-sizes`` square image made by tiling the real
2299 x 2472 orthophoto of the tree data (deepforest wheel, as ``d2af prepare-data`` reads it;
random pixels when the wheel is absent), each case in a fresh subprocess; peak memory is the
resident-set high-water mark during the call minus the resident set before it (image and weights
already loaded; benchmarks/memory.py), plus the process' absolute peak.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List

import torch
from torch import nn

from benchmarks import REPO

MODELS = {
    "FCOS": "configs/FCOS/FCOS_tiny_R_18_cpu.yaml",
    "ATSS": "configs/ATSS/ATSS_tiny_R_18_cpu.yaml",
    "GFL": "configs/GFL/GFL_tiny_R_18_cpu.yaml",
    "VFNet": "configs/VFNet/VFNet_tiny_R_18_cpu.yaml",
    "TOOD": "configs/TOOD/TOOD_tiny_R_18_cpu.yaml",
    "DeFCN": "configs/DeFCN/DeFCN_tiny_R_18_cpu.yaml",
}
SLICE = ["TEST.SLICE.ENABLED", "True", "TEST.SLICE.SIZE", "400", "TEST.SLICE.OVERLAP", "100",
         "TEST.SLICE.BATCH_SIZE", "4", "TEST.SLICE.MERGE", "nmm"]
TTA = ["TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(320, 400, 480)", "TEST.AUG.MAX_SIZE", "4000",
       "TEST.AUG.FLIP", "True"]
MODES = {
    "resized": [],
    "full-res": ["INPUT.MAX_SIZE_TEST", "4000"],
    "sliced": SLICE,
    "sliced+tta": SLICE + TTA + ["TEST.AUG.MERGE", "nms"],
    "sliced+tta-wbf": SLICE + TTA + ["TEST.AUG.MERGE", "wbf", "TEST.AUG.MERGE_IOU", "0.55"],
}


class Timed(nn.Module):
    """Wraps a model: accumulates the wall time and this process' CPU time of its forward calls
    and the images they saw."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seconds, self.cpu_seconds, self.images = model, 0.0, 0.0, 0

    def forward(self, batched_inputs):
        start, cpu = time.perf_counter(), time.process_time()
        out = self.model(batched_inputs)
        self.seconds += time.perf_counter() - start
        self.cpu_seconds += time.process_time() - cpu
        self.images += len(batched_inputs)
        return out


def build_cfg(config: str, opts: List[str]):
    from d2_anchorfree.engine import setup_cfg

    args = argparse.Namespace(config_file=os.path.join(REPO, config), opts=list(opts))
    return setup_cfg(args, default_setup_logging=False)


def evaluate(name: str, weights: str, dataset: str, modes: List[str], out_dir: str, allow_untrained: bool) -> List[Dict]:
    """Every mode of one model on ``dataset``: COCO AP/AP50 and s/img (see the module docstring)."""
    from detectron2.evaluation import inference_on_dataset

    from d2_anchorfree.checkpoint import load_inference_weights
    from d2_anchorfree.engine import AnchorFreeTrainer
    from d2_anchorfree.inference import build_inference_model

    rows, model = [], None
    for mode in modes:
        cfg = build_cfg(MODELS[name], ["DATASETS.TEST", f"('{dataset}',)", "OUTPUT_DIR",
                                       os.path.join(out_dir, name, mode), *MODES[mode]])
        if model is None:  # one model per detector; the modes only change the test-time wrapper
            model = AnchorFreeTrainer.build_model(cfg)
            load_inference_weights(model, weights, allow_untrained=allow_untrained)
            model.eval()
        loader = AnchorFreeTrainer.build_test_loader(cfg, dataset)
        evaluator = AnchorFreeTrainer.build_evaluator(cfg, dataset)
        timed = Timed(build_inference_model(cfg, model))
        results = inference_on_dataset(timed, loader, evaluator)["bbox"]
        row = {"model": name, "mode": mode, "AP": results["AP"], "AP50": results["AP50"],
               "s_per_img": timed.seconds / max(timed.images, 1),
               "cpu_s_per_img": timed.cpu_seconds / max(timed.images, 1), "images": timed.images,
               "opts": MODES[mode]}
        print(f"[benchmark_slicing] {name:6s} {mode:15s} AP {row['AP']:5.1f} AP50 {row['AP50']:5.1f} "
              f"{row['s_per_img']:.2f} s/img ({row['cpu_s_per_img']:.2f} CPU s/img)", flush=True)
        rows.append(row)
    return rows


def big_image(size: int) -> torch.Tensor:
    """[3, size, size] uint8 (BGR): the real 2299 x 2472 tree orthophoto tiled (mirrored to
    avoid seams), or random pixels without the deepforest wheel."""
    import numpy as np

    wheel = os.path.join(os.path.expanduser("~"), ".cache", "d2_anchorfree", "deepforest-2.1.0-py3-none-any.whl")
    if os.path.isfile(wheel):
        from d2_anchorfree.data import trees

        (item,) = trees.read_wheel_images(wheel, stems=["2019_YELL_2_528000_4978000_image_crop2"])
        rgb = np.asarray(item.image)
        reps = (size // rgb.shape[0] + 1, size // rgb.shape[1] + 1, 1)
        tile = np.concatenate([rgb, rgb[::-1]], axis=0)
        tile = np.concatenate([tile, tile[:, ::-1]], axis=1)
        big = np.tile(tile, (reps[0] // 2 + 1, reps[1] // 2 + 1, 1))[:size, :size, ::-1]
        source = "tiled orthophoto"
    else:
        big = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
        source = "random pixels"
    return torch.as_tensor(np.ascontiguousarray(big.transpose(2, 0, 1))), source


def memory_case(size: int, batch: int, weights: str, allow_untrained: bool) -> Dict:
    """One sliced inference of a size x size image (run in a fresh process by :func:`main`)."""
    from benchmarks.memory import first_call_peak, proc_status_kib

    from d2_anchorfree.checkpoint import load_inference_weights
    from d2_anchorfree.engine import AnchorFreeTrainer
    from d2_anchorfree.inference import build_inference_model
    from d2_anchorfree.inference.slicing import slice_windows

    cfg = build_cfg(MODELS["FCOS"], ["DATASETS.REGISTER_COCO", "()", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
                                     *SLICE, "TEST.SLICE.BATCH_SIZE", str(batch),
                                     "TEST.SLICE.DETECTIONS_PER_IMAGE", "100000"])
    model = AnchorFreeTrainer.build_model(cfg)
    load_inference_weights(model, weights, allow_untrained=allow_untrained)
    model.eval()
    sliced = build_inference_model(cfg, model)
    image, source = big_image(size)
    with torch.no_grad():
        out, seconds, peak, upper_bound, method = first_call_peak(lambda: sliced.predict(image), "cpu")
    return {"size": size, "batch": batch, "windows": len(slice_windows(size, size, 400, 100)),
            "detections": len(out), "seconds": seconds, "peak_extra_mb": peak / 2**20,
            "peak_is_upper_bound": upper_bound, "method": method,
            "process_peak_mb": proc_status_kib("VmHWM") / 1024, "image_mb": image.numel() / 2**20,
            "image": source}


def markdown(rows: List[Dict], memory: List[Dict]) -> str:
    lines = []
    if rows:
        lines += ["| model | inference | AP | AP50 | s/img | CPU s/img |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['mode']} | {r['AP']:.1f} | {r['AP50']:.1f} | {r['s_per_img']:.2f} | "
                  f"{r['cpu_s_per_img']:.2f} |" for r in rows]
    if memory:
        lines += ["", "| image | windows | batch | detections | s | peak extra RSS MB | process peak MB |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {m['size']}x{m['size']} | {m['windows']} | {m['batch']} | {m['detections']} | "
                  f"{m['seconds']:.0f} | {m['peak_extra_mb']:.0f}{' (upper bound)' if m['peak_is_upper_bound'] else ''} | "
                  f"{m['process_peak_mb']:.0f} |" for m in memory]
    return "\n".join(lines)


def main(argv=None, prog=None) -> int:
    """Run the benchmark (see the module docstring).

    Args:
        argv (list[str], optional): the arguments (default: ``sys.argv[1:]``).
        prog (str, optional): the program name shown in the usage (default: the script's name).

    Returns:
        int: 0.

    Raises:
        FileNotFoundError: a model's weights are missing (without ``--allow-untrained``).
        RuntimeError: a memory case's subprocess failed (with its error output).
    """
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="accuracy,memory")
    parser.add_argument("--models", default="FCOS,ATSS,DeFCN", help=f"of {sorted(MODELS)}")
    parser.add_argument("--modes", default=",".join(MODES), help=f"of {list(MODES)}")
    parser.add_argument("--runs-dir", default="output/compare_accuracy",
                        help="<runs-dir>/<model>/model_final.pth (tools/compare_accuracy.py's output)")
    parser.add_argument("--dataset", default="trees_val_whole")
    parser.add_argument("--allow-untrained", action="store_true", help="models without weights: untrained")
    parser.add_argument("--memory-sizes", default="3000,6000", help="square image sides, pixels")
    parser.add_argument("--batch-sizes", default="1,4,8", help="TEST.SLICE.BATCH_SIZE values (6000 px image)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="FCOS, resized and sliced, 1500 px memory case")
    parser.add_argument("--out", default="output/benchmark_slicing.json")
    parser.add_argument("--work-dir", default="output/benchmark_slicing",
                        help="evaluator outputs (detections) of every model and mode")
    parser.add_argument("--memory-case", nargs=2, type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    fcos_weights = os.path.join(args.runs_dir, "FCOS", "model_final.pth")
    if args.memory_case:  # child process of the memory section
        weights = fcos_weights if os.path.isfile(fcos_weights) else ""
        print(json.dumps(memory_case(*args.memory_case, weights, allow_untrained=not weights)))
        return 0
    if args.quick:
        args.models, args.modes, args.memory_sizes, args.batch_sizes = "FCOS", "resized,sliced", "1500", "4"
    sections = args.sections.split(",")
    rows, memory = [], []
    load_before = os.getloadavg()
    if "accuracy" in sections:
        for name in args.models.split(","):
            weights = os.path.join(args.runs_dir, name, "model_final.pth")
            if not os.path.isfile(weights):
                if not (args.allow_untrained or args.quick):
                    raise FileNotFoundError(f"{weights} not found (train it with tools/compare_accuracy.py "
                                            f"--only {name}, or pass --allow-untrained)")
                weights = ""
            rows += evaluate(name, weights, args.dataset, args.modes.split(","), args.work_dir,
                             allow_untrained=not weights)
    if "memory" in sections:
        sizes = [int(s) for s in args.memory_sizes.split(",")]
        cases = [(s, b) for s in sizes for b in ([int(b) for b in args.batch_sizes.split(",")]
                                                 if s == max(sizes) else [4])]
        for size, batch in cases:
            cmd = [sys.executable, "-m", "benchmarks.slicing", "--memory-case", str(size), str(batch),
                   "--runs-dir", args.runs_dir, "--threads", str(args.threads)]
            run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
            if run.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{run.stderr[-3000:]}")
            memory.append(json.loads(run.stdout.strip().splitlines()[-1]))
            m = memory[-1]
            print(f"[benchmark_slicing] {size}x{size} batch {batch}: {m['windows']} windows, {m['seconds']:.0f} s, "
                  f"peak extra {m['peak_extra_mb']:.0f} MB, process peak {m['process_peak_mb']:.0f} MB", flush=True)
    table = markdown(rows, memory)
    print(table)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        # the 1-minute load average before and after: timings on a shared machine are only
        # comparable within one run
        json.dump({"threads": args.threads, "torch": torch.__version__, "cpu_count": os.cpu_count(),
                   "loadavg_before_after": [load_before[0], os.getloadavg()[0]], "accuracy": rows,
                   "memory": memory, "markdown": table}, f, indent=1)
    print(f"[benchmark_slicing] wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

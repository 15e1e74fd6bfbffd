"""Time and peak memory of windowed sliced inference on a synthetic orthomosaic GeoTIFF.

    python -m benchmarks.raster                          # 30000 x 30000, written once to output/
    python -m benchmarks.raster --size 6000 --strip-rows 1000 --weights model_final.pth

(``d2af benchmark raster`` takes the same arguments.)

1. **The raster** (``--size`` square, default 30000 x 30000 px, 3 x uint8, EPSG:32612, 0.1 m
   pixels): a tiled (512 px), deflate-compressed (level 1) GeoTIFF written block row by block
   row, so making it holds one 512-row strip in memory (about 44 MB at 30000 px). Its pixels are
   the tree data's 400 px val tiles (or noise without them) laid out with a per-block shift, so
   that the detector sees tree crowns everywhere. Reused when it exists with the same size.
2. **read**: every window of sliced inference (``TEST.SLICE`` 400 px, 100 px overlap) read by
   ``RasterWindows`` with the nodata check, as ``predict_windows`` does, no model: the I/O
   cost over the whole raster.
3. **predict**: ``AnchorFreePredictor.predict_windows`` (tiny FCOS, batch ``--batch``) over the
   top ``--strip-rows`` rows of the raster at full width, read window by window from the same
   file. The whole raster would take ``time per Mpx x size^2 / 1e6`` (reported as an
   extrapolation: on 2 shared CPU cores the full 30000 x 30000 pass is hours).

Each measurement runs in a fresh process; peak memory is that process' resident-set
high-water mark (``VmHWM``) and its increase during the call (``benchmarks.memory``).
Prints a Markdown table and writes ``output/benchmark_raster.json``.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict

import numpy as np

from benchmarks import REPO

CONFIG = "configs/FCOS/FCOS_tiny_R_18_cpu.yaml"
WINDOW, OVERLAP = 400, 100
BLOCK = 512


def source_tile(seed: int = 0) -> np.ndarray:
    """A 512 x 512 x 3 uint8 RGB tile: the tree data's val tiles side by side when prepared
    (``tests`` use ``~/.cache/d2af/trees``), else noise."""
    from PIL import Image

    for root in (os.path.join(REPO, "datasets", "trees"), os.path.expanduser("~/.cache/d2af/trees")):
        val = os.path.join(root, "val.json")
        if os.path.isfile(val):
            files = [im["file_name"] for im in json.load(open(val))["images"]][:4]
            tiles = [np.asarray(Image.open(os.path.join(root, "images", f)).convert("RGB"))[:256, :256] for f in files]
            if len(tiles) == 4 and all(t.shape == (256, 256, 3) for t in tiles):
                return np.concatenate([np.concatenate(tiles[:2], 1), np.concatenate(tiles[2:], 1)], 0)
    return np.random.default_rng(seed).integers(0, 256, (BLOCK, BLOCK, 3), dtype=np.uint8)


def write_raster(path: str, size: int) -> float:
    """Write the synthetic ``size`` x ``size`` GeoTIFF (module docstring) block row by block row;
    returns the seconds it took."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    tile = source_tile()
    start = time.perf_counter()
    profile = dict(driver="GTiff", width=size, height=size, count=3, dtype="uint8", crs="EPSG:32612",
                   transform=from_origin(528000.0, 4978000.0, 0.1, 0.1), tiled=True, blockxsize=BLOCK,
                   blockysize=BLOCK, compress="deflate", zlevel=1, photometric="RGB", BIGTIFF="YES")
    tmp = path + ".part"
    with rasterio.open(tmp, "w", **profile) as dst:
        for row in range(0, size, BLOCK):
            h = min(BLOCK, size - row)
            shift = (row // BLOCK * 97) % BLOCK  # every block row shifted: no two rows identical
            strip = np.tile(np.roll(tile, shift, axis=1), (1, size // BLOCK + 2, 1))[:h, :size]
            dst.write(strip.transpose(2, 0, 1), window=Window(0, row, size, h))
    os.replace(tmp, path)
    return time.perf_counter() - start


def read_case(path: str) -> Dict:
    """Read every window of sliced inference over the whole raster (no model)."""
    from benchmarks.memory import first_call_peak, proc_status_kib

    from d2_anchorfree.data.raster import RasterWindows
    from d2_anchorfree.inference.slicing import slice_windows

    with RasterWindows(path) as raster:
        windows = slice_windows(raster.height, raster.width, WINDOW, OVERLAP).tolist()

        def run():
            checked = not raster.all_valid
            total = 0
            for win in windows:
                if checked and not raster.valid(win).any():
                    continue
                total += int(raster.read(win)[0, 0, 0])
            return total

        _, seconds, peak, upper, method = first_call_peak(run, "cpu")
        mpx = raster.height * raster.width / 1e6
    return {"case": "read", "mpx": mpx, "windows": len(windows), "seconds": seconds, "s_per_mpx": seconds / mpx,
            "peak_extra_mb": peak / 2**20, "process_peak_mb": proc_status_kib("VmHWM") / 1024, "detections": None}


def predict_case(path: str, strip_rows: int, batch: int, weights: str, threads: int) -> Dict:
    """``predict_windows`` over the top ``strip_rows`` rows of the raster, full width."""
    import torch

    from benchmarks.memory import first_call_peak, proc_status_kib

    from d2_anchorfree.config import add_anchorfree_config
    from d2_anchorfree.data.raster import RasterWindows
    from d2_anchorfree.engine import build_predictor
    from d2_anchorfree.inference.slicing import slice_windows
    from detectron2.config import get_cfg

    torch.set_num_threads(threads)
    cfg = get_cfg()
    add_anchorfree_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, CONFIG))
    cfg.merge_from_list(["DATASETS.REGISTER_COCO", "()", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
                         "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", weights, "TEST.SLICE.ENABLED", "True",
                         "TEST.SLICE.SIZE", str(WINDOW), "TEST.SLICE.OVERLAP", str(OVERLAP),
                         "TEST.SLICE.BATCH_SIZE", str(batch), "TEST.SLICE.DETECTIONS_PER_IMAGE", "1000000"])
    predictor = build_predictor(cfg, allow_untrained=not weights)

    class Strip:  # the raster's top rows: same file, same reads
        def __init__(self, raster, rows):
            self.raster, self.height, self.width = raster, min(rows, raster.height), raster.width
            self.all_valid = raster.all_valid
            self.read, self.valid = raster.read, raster.valid

    with RasterWindows(path) as raster:
        strip = Strip(raster, strip_rows)
        out, seconds, peak, upper, method = first_call_peak(lambda: predictor.predict_windows(strip), "cpu")
        mpx = strip.height * strip.width / 1e6
        n = len(slice_windows(strip.height, strip.width, WINDOW, OVERLAP))
    return {"case": f"predict, batch {batch}", "mpx": mpx, "windows": n, "seconds": seconds,
            "s_per_mpx": seconds / mpx, "peak_extra_mb": peak / 2**20,
            "process_peak_mb": proc_status_kib("VmHWM") / 1024, "detections": len(out["instances"]),
            "weights": weights or "untrained", "threads": threads}


def _child(args_list) -> Dict:
    r = subprocess.run([sys.executable, "-m", "benchmarks.raster", *args_list], cwd=REPO, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")})
    if r.returncode != 0:
        raise RuntimeError(f"benchmark case {args_list} failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None, prog=None) -> int:
    """Run the benchmark (see the module docstring); returns 0. ``prog``: the usage's program name."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=30000, help="side of the square raster, pixels")
    p.add_argument("--raster", default="", help="raster path (default output/benchmark_raster_<size>.tif)")
    p.add_argument("--strip-rows", type=int, default=400, help="rows of the raster the predict case covers")
    p.add_argument("--batch", default="4", help="TEST.SLICE.BATCH_SIZE values, comma-separated")
    p.add_argument("--weights", default="", help="tiny FCOS weights (default: untrained)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sections", default="read,predict")
    p.add_argument("--case", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    raster = args.raster or os.path.join(REPO, "output", f"benchmark_raster_{args.size}.tif")
    if args.case == "read":
        print(json.dumps(read_case(raster)))
        return 0
    if args.case.startswith("predict"):
        print(json.dumps(predict_case(raster, args.strip_rows, int(args.case.split(":")[1]), args.weights,
                                      args.threads)))
        return 0
    os.makedirs(os.path.dirname(raster), exist_ok=True)
    made = None
    if not os.path.isfile(raster):
        made = write_raster(raster, args.size)
        print(f"wrote {raster} ({os.path.getsize(raster) / 2**20:.0f} MiB) in {made:.0f} s", file=sys.stderr)
    rows = []
    common = ["--size", str(args.size), "--raster", raster, "--strip-rows", str(args.strip_rows),
              "--weights", args.weights, "--threads", str(args.threads)]
    if "read" in args.sections:
        rows.append(_child(common + ["--case", "read"]))
    if "predict" in args.sections:
        for b in args.batch.split(","):
            rows.append(_child(common + ["--case", f"predict:{int(b)}"]))
    load = os.getloadavg()
    report = {"size": args.size, "raster": raster, "raster_mib": os.path.getsize(raster) / 2**20,
              "write_seconds": made, "loadavg": load, "rows": rows}
    print(f"\n{args.size} x {args.size} GeoTIFF ({report['raster_mib']:.0f} MiB, deflate), load average "
          f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}\n")
    print("| case | Mpx | windows | detections | s | s / Mpx | peak extra RSS MiB | process peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['mpx']:.0f} | {r['windows']} | {r['detections'] if r['detections'] is not None else '-'} "
              f"| {r['seconds']:.0f} | {r['s_per_mpx']:.2f} | {r['peak_extra_mb']:.0f} | {r['process_peak_mb']:.0f} |")
    with open(os.path.join(REPO, "output", "benchmark_raster.json"), "w") as f:
        json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

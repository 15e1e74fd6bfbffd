"""COCO bbox evaluation side by side: pycocotools vs faster-coco-eval vs detectron2's C++ COCOeval.

Runs every available implementation on the same ground truth and detections, one after the other
in one process, and reports (a) the wall time of each phase (loadRes, evaluate, accumulate,
summarize) and (b) whether the numbers equal pycocotools' (the reference, COCO's official code):
the 12 summary stats (AP, AP50, AP75, APs/m/l, AR@maxDets[0..2], ARs/m/l) and the whole
precision [T, R, K, A, M] and recall [T, K, A, M] arrays of ``accumulate()``, to ``--atol``.

Implementations (each skipped, with the reason in the output, when not importable):
  * ``pycocotools``: ``pycocotools.cocoeval.COCOeval``; for ``maxDets[2] != 100`` detectron2's
    ``COCOevalMaxDets`` (pycocotools' summarize hard-codes 100), exactly what ``COCOEvaluator`` runs.
  * ``faster_coco_eval``: ``faster_coco_eval.COCOeval_faster`` with ``faster_coco_eval.COCO``.
  * ``detectron2_C``: ``detectron2.evaluation.fast_eval_api.COCOeval_opt`` (needs ``detectron2._C``;
    only for ``maxDets[2] == 100``, the only case where ``COCOEvaluator`` uses it).

Data: by default a synthetic COCO-sized set (``make_synthetic_coco``: 5,000 images, 80 classes,
100 detections per image, fixed seed); or ``--gt`` / ``--dt`` COCO json files (e.g. a val json and
the ``coco_instances_results.json`` that ``COCOEvaluator`` writes).

Usage (``python tools/benchmark_cocoeval.py`` and ``python -m benchmarks.cocoeval`` take the same
arguments):
  d2af benchmark cocoeval --out docs/benchmarks/cocoeval_synthetic_5000.json
  d2af benchmark cocoeval --images 200 --dets 20          # quick
  d2af benchmark cocoeval --gt val.json --dt results.json --max-dets 1 10 300
Exit status 1 when an implementation's numbers differ from pycocotools' by more than ``--atol``.
"""
import argparse
import contextlib
import copy
import io
import json
import os
import platform
import sys
import time

import numpy as np

from benchmarks import write_json_report

STAT_NAMES = ["AP", "AP50", "AP75", "APs", "APm", "APl",
              "AR@maxDets0", "AR@maxDets1", "AR@maxDets2", "ARs", "ARm", "ARl"]


def make_synthetic_coco(num_images: int = 5000, num_classes: int = 80, dets_per_image: int = 100,
                        seed: int = 0):
    """A synthetic COCO ground truth and detection list, deterministic for a given seed.

    Ground truth: per image (width, height in [480, 640] px) 1 to 20 boxes, class uniform in
    [1, num_classes], side lengths log-uniform in [4, 400] px (so COCO's small / medium / large
    ranges are all populated), clipped to the image; 1% are ``iscrowd`` (exercises the crowd
    matching rules). Detections: per image exactly ``dets_per_image`` boxes, half of them GT boxes
    jittered by up to 20% of their size (80% with the right class), the rest random boxes; scores
    uniform in (0, 1), rounded to 1e-4 so that ties occur (they test the order of equal scores).

    Args:
        num_images, num_classes, dets_per_image: >= 1.
        seed: numpy seed.

    Returns:
        (gt, dets): ``gt`` a COCO dataset dict (images, annotations with XYWH ``bbox`` and ``area``
        in px, categories); ``dets`` a list of result dicts (image_id, category_id, XYWH ``bbox``
        px, score), as ``COCO.loadRes`` takes. Build a fresh list per implementation:
        ``loadRes`` adds fields to the dicts it is given.

    Raises:
        ValueError: a count below 1, naming it.
    """
    for name, value in (("num_images", num_images), ("num_classes", num_classes),
                        ("dets_per_image", dets_per_image)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    rng = np.random.default_rng(seed)
    images, annotations, dets = [], [], []
    for image_id in range(1, num_images + 1):
        w, h = (int(v) for v in rng.integers(480, 641, size=2))
        images.append({"id": image_id, "width": w, "height": h, "file_name": f"{image_id:06d}.jpg"})
        n_gt = int(rng.integers(1, 21))
        sizes = np.exp(rng.uniform(np.log(4), np.log(400), size=(n_gt, 2)))
        x0 = rng.uniform(0, w - 2, size=n_gt)
        y0 = rng.uniform(0, h - 2, size=n_gt)
        bw = np.minimum(sizes[:, 0], w - x0)
        bh = np.minimum(sizes[:, 1], h - y0)
        classes = rng.integers(1, num_classes + 1, size=n_gt)
        crowd = rng.random(n_gt) < 0.01
        for j in range(n_gt):
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": int(classes[j]),
                "bbox": [float(x0[j]), float(y0[j]), float(bw[j]), float(bh[j])],
                "area": float(bw[j] * bh[j]), "iscrowd": int(crowd[j]),
            })
        n_near = dets_per_image // 2
        src = rng.integers(0, n_gt, size=n_near)
        jitter = rng.uniform(-0.2, 0.2, size=(n_near, 4))
        near = np.stack([x0[src] + jitter[:, 0] * bw[src], y0[src] + jitter[:, 1] * bh[src],
                         bw[src] * (1 + jitter[:, 2]), bh[src] * (1 + jitter[:, 3])], axis=1)
        near_cls = np.where(rng.random(n_near) < 0.8, classes[src],
                            rng.integers(1, num_classes + 1, size=n_near))
        n_far = dets_per_image - n_near
        far_wh = np.exp(rng.uniform(np.log(4), np.log(400), size=(n_far, 2)))
        far = np.stack([rng.uniform(0, w, n_far), rng.uniform(0, h, n_far),
                        far_wh[:, 0], far_wh[:, 1]], axis=1)
        far_cls = rng.integers(1, num_classes + 1, size=n_far)
        boxes = np.concatenate([near, far])
        cls = np.concatenate([near_cls, far_cls])
        scores = np.round(rng.uniform(1e-4, 1.0, size=dets_per_image), 4)
        for b, c, s in zip(boxes.tolist(), cls.tolist(), scores.tolist()):
            dets.append({"image_id": image_id, "category_id": int(c), "bbox": b, "score": float(s)})
    categories = [{"id": c, "name": f"class{c}"} for c in range(1, num_classes + 1)]
    return {"images": images, "annotations": annotations, "categories": categories}, dets


def _fresh(dets):
    """A copy of the result dicts (``loadRes`` mutates them) with fresh bbox lists."""
    return [{"image_id": d["image_id"], "category_id": d["category_id"], "bbox": list(d["bbox"]),
             "score": d["score"]} for d in dets]


def available_implementations():
    """{name: None if usable, else the reason it is not} for the three implementations."""
    out = {}
    try:
        import pycocotools.cocoeval  # noqa: F401
        out["pycocotools"] = None
    except ImportError as e:
        out["pycocotools"] = f"not importable: {e}"
    try:
        import faster_coco_eval  # noqa: F401
        out["faster_coco_eval"] = None
    except ImportError as e:
        out["faster_coco_eval"] = f"not importable: {e}"
    try:
        from detectron2 import _C  # noqa: F401
        from detectron2.evaluation.fast_eval_api import COCOeval_opt  # noqa: F401
        out["detectron2_C"] = None
    except ImportError as e:
        out["detectron2_C"] = f"detectron2._C not importable: {e}"
    return out


def run_one(name: str, gt: dict, dets: list, max_dets):
    """Evaluate ``dets`` against ``gt`` with implementation ``name`` (bbox, ``max_dets``).

    Returns:
        (stats [12] float64, precision array, recall array, {phase: seconds}). Summary printing
        of the libraries is swallowed.
    """
    times = {}
    gt = copy.deepcopy(gt)  # a library may add fields to the ground truth it is given
    with contextlib.redirect_stdout(io.StringIO()):
        t = time.perf_counter()
        if name == "faster_coco_eval":
            from faster_coco_eval import COCO, COCOeval_faster
            coco_gt = COCO(gt)
            coco_dt = coco_gt.loadRes(_fresh(dets))
            ev = COCOeval_faster(coco_gt, coco_dt, "bbox", print_function=lambda *a: None)
        else:
            from pycocotools.coco import COCO
            coco_gt = COCO()
            coco_gt.dataset = gt
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(_fresh(dets))
            if name == "detectron2_C":
                from detectron2.evaluation.fast_eval_api import COCOeval_opt as cls
            elif max_dets[2] != 100:
                from detectron2.evaluation.coco_evaluation import COCOevalMaxDets as cls
            else:
                from pycocotools.cocoeval import COCOeval as cls
            ev = cls(coco_gt, coco_dt, "bbox")
        ev.params.maxDets = list(max_dets)
        times["load"] = time.perf_counter() - t
        for phase in ("evaluate", "accumulate", "summarize"):
            t = time.perf_counter()
            getattr(ev, phase)()
            times[phase] = time.perf_counter() - t
    times["total"] = sum(times.values())
    stats = np.asarray(ev.stats[:12], dtype=np.float64)
    return stats, np.asarray(ev.eval["precision"]), np.asarray(ev.eval["recall"]), times


def compare(ref, other):
    """Max abs differences between two ``run_one`` results: (stats, precision, recall)."""
    return tuple(float(np.max(np.abs(a - b))) if a.shape == b.shape else float("inf")
                 for a, b in zip(ref[:3], other[:3]))


def main(argv=None, prog=None):
    """Run the comparison (see the module docstring).

    Args:
        argv (list[str], optional): the arguments (default: ``sys.argv[1:]``).
        prog (str, optional): the program name shown in the usage (default: the script's name).

    Returns:
        int: 0, or 1 when an implementation's numbers differ from pycocotools'.
    """
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--dets", type=int, default=100, help="detections per image")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gt", help="COCO ground-truth json (instead of synthetic data)")
    parser.add_argument("--dt", help="COCO results json (with --gt)")
    parser.add_argument("--max-dets", type=int, nargs=3, default=[1, 10, 100])
    parser.add_argument("--atol", type=float, default=1e-6)
    parser.add_argument("--only", nargs="+", choices=["pycocotools", "faster_coco_eval", "detectron2_C"])
    parser.add_argument("--out", help="write the report as json here")
    args = parser.parse_args(argv)
    if bool(args.gt) != bool(args.dt):
        parser.error("--gt and --dt go together")

    t = time.perf_counter()
    if args.gt:
        with open(args.gt) as f:
            gt = json.load(f)
        with open(args.dt) as f:
            dets = json.load(f)
        data = {"gt": os.path.abspath(args.gt), "dt": os.path.abspath(args.dt)}
    else:
        gt, dets = make_synthetic_coco(args.images, args.classes, args.dets, args.seed)
        data = {"synthetic": {"images": args.images, "classes": args.classes,
                              "dets_per_image": args.dets, "seed": args.seed}}
    data.update(num_images=len(gt["images"]), num_gt=len(gt["annotations"]), num_dets=len(dets),
                prepare_s=round(time.perf_counter() - t, 2))
    print(f"data: {data}", flush=True)

    avail = available_implementations()
    if avail["pycocotools"] is not None:
        raise SystemExit(f"pycocotools (the reference) is required: {avail['pycocotools']}")
    names = [n for n in ("pycocotools", "faster_coco_eval", "detectron2_C")
             if n == "pycocotools" or not args.only or n in args.only]
    results, report = {}, {}
    if args.max_dets[2] != 100 and avail["detectron2_C"] is None:
        avail["detectron2_C"] = ("maxDets[2] != 100: detectron2's COCOEvaluator uses pycocotools' "
                                 "COCOevalMaxDets there, not its C++ COCOeval")
    for name in names:
        if avail[name] is not None:
            report[name] = {"skipped": avail[name]}
            print(f"{name:>17}: skipped ({avail[name]})", flush=True)
            continue
        results[name] = run_one(name, gt, dets, args.max_dets)
        stats, _, _, times = results[name]
        report[name] = {"seconds": {k: round(v, 3) for k, v in times.items()},
                        "stats": dict(zip(STAT_NAMES, stats.tolist()))}
        print(f"{name:>17}: " + "  ".join(f"{k} {v:.2f}s" for k, v in times.items()), flush=True)

    ref = results["pycocotools"]
    all_equal = True
    for name, res in results.items():
        if name == "pycocotools":
            continue
        d_stats, d_prec, d_rec = compare(ref, res)
        equal = max(d_stats, d_prec, d_rec) <= args.atol
        all_equal &= equal
        report[name].update(
            speedup_vs_pycocotools=round(ref[3]["total"] / res[3]["total"], 2),
            max_abs_diff={"stats": d_stats, "precision": d_prec, "recall": d_rec},
            equal_to_pycocotools=equal)
        print(f"{name:>17}: speed-up x{report[name]['speedup_vs_pycocotools']}, max |diff| stats "
              f"{d_stats:.3g} precision {d_prec:.3g} recall {d_rec:.3g} -> "
              f"{'EQUAL' if equal else 'DIFFERENT'} (atol {args.atol})", flush=True)
    print("stats (pycocotools): " + ", ".join(f"{k} {v:.6f}" for k, v in zip(STAT_NAMES, ref[0])))

    if args.out:
        from importlib import metadata

        versions = {"python": platform.python_version(), "numpy": np.__version__}
        for dist in ("pycocotools", "faster-coco-eval", "torch"):
            try:
                versions[dist] = metadata.version(dist)
            except metadata.PackageNotFoundError:
                pass
        try:
            import detectron2
            versions["detectron2"] = {"version": detectron2.__version__, "path": detectron2.__file__,
                                      "with_C": avail["detectron2_C"] is None}
        except ImportError:
            pass
        out = {"command": "python tools/benchmark_cocoeval.py " + " ".join(argv or sys.argv[1:]),
               "max_dets": args.max_dets, "atol": args.atol, "data": data,
               "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine()},
               "versions": versions, "results": report, "all_equal": all_equal}
        write_json_report(args.out, out, indent=2)
    return 0 if all_equal else 1


if __name__ == "__main__":
    sys.exit(main())

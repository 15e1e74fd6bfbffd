"""``hungarian`` section: POTO's one-to-one matching alone.

For ``--hungarian-gt`` GTs per image (default 10/100/500/1000/3000) on one ``--assign-size``
image: the in-prior (point, GT) pairs and their quality are computed once, then timed over
``--assign-runs`` runs after ``--warmup``: the matching by both exact solvers of
``match_one_to_one`` (dense ``linear_sum_assignment`` on the [G x in-prior columns] matrix,
sparse LAPJVsp on the in-prior pairs), and the whole POTO assigner. Also reported: the problem
size, whether both solvers give the same matching, and which one POTOAssigner picks at that
size (all through :class:`benchmarks.models.PotoMatching`).
"""
import time
import traceback
from typing import Dict

import torch

from .inputs import assign_inputs, parse_size
from .models import PotoMatching
from .report import fmt
from .timing import summarize, synchronize


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

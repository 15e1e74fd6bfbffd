"""Evaluation report of a detector's results: where it fails and which score threshold to deploy.

    d2af report --results output/fcos_tiny/inference/trees_val/coco_instances_results.json \\
        --coco-json datasets/trees/val.json --out output/fcos_tiny/report/trees_val --max-dets 300

``--results``: a COCO-style results list, as detectron2's ``COCOEvaluator`` writes it
(``OUTPUT_DIR/inference/<dataset>/coco_instances_results.json``) or ``d2af predict``'s
``results.json`` (its ``file_name`` entries are matched to the images of ``--coco-json``).
Writes ``<out>/report.json`` and ``summary.png``, ``pr_curves.png``, ``f1_curves.png``,
``confusion_matrix.png``, ``recall_by_size.png``, and prints the per-class AP table with the best-F1
score thresholds. ``--weights`` saves the best-F1 threshold beside that weights file (the one the
results came from) for ``d2af predict --min-score best`` and ``d2af export``. Training and
``d2af evaluate`` write the same report by themselves (``TEST.REPORT``).
See ``d2_anchorfree.evaluation.report`` for what is computed.
"""
import argparse
import sys

from d2_anchorfree.checkpoint.score_threshold import save_best_f1
from d2_anchorfree.evaluation.report import (DEFAULT_MAX_DETS, build_report, load_coco_json, load_results,
                                             summary_lines, write_report)


def _unit_interval(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def main(argv=None, prog=None) -> int:
    """Command-line entry point (see the module docstring).

    Args:
        argv (list[str], optional): the arguments (default: ``sys.argv[1:]``).
        prog (str, optional): the program name shown in the usage.

    Returns:
        int: 0; 1 with an ``error:`` line when the inputs are wrong (missing file, ids that the
        COCO json does not have, a bad value), or when ``--weights`` is given and no threshold exists.
    """
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    p.add_argument("--results", required=True, help="COCO results json (coco_instances_results.json, results.json)")
    p.add_argument("--coco-json", required=True, help="COCO json of the ground truth of those images")
    p.add_argument("--out", required=True, help="folder for report.json and the PNGs")
    p.add_argument("--max-dets", type=int, default=DEFAULT_MAX_DETS,
                   help="detections per image and class that count, COCOeval's last maxDets "
                        f"(TEST.COCO_MAX_DETS_PER_IMAGE of the model; default {DEFAULT_MAX_DETS})")
    p.add_argument("--iou", type=_unit_interval, default=0.5, help="IoU of the confusion matrix (default 0.5)")
    p.add_argument("--score-threshold", type=_unit_interval, default=None,
                   help="score threshold of the confusion matrix and recall by size (default: the best-F1 one)")
    p.add_argument("--weights", default="",
                   help="the weights file the results came from: save the best-F1 threshold beside it "
                        "(<weights>.best_f1.json)")
    p.add_argument("--no-plots", action="store_true", help="write report.json only")
    args = p.parse_args(argv)
    try:
        gt = load_coco_json(args.coco_json)
        results = load_results(args.results, gt, gt_source=args.coco_json)
        report = build_report(gt, results, max_dets=args.max_dets, iou=args.iou, score_threshold=args.score_threshold,
                              sources={"results": args.results, "coco_json": args.coco_json, "weights": args.weights})
        written = write_report(report, args.out, plots=not args.no_plots)
        print("\n".join(summary_lines(report)))
        cm = report["confusion_matrix"]
        print(f"confusion matrix at IoU {cm['iou']:g}, score >= {cm['score_threshold']:.3f}; "
              f"wrote {', '.join(written)}")
        if args.weights:
            print(f"saved the best-F1 threshold in {save_best_f1(args.weights, report, args.coco_json)}")
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The evaluation report of training and ``--eval-only`` runs (``TEST.REPORT``): after the final
evaluation, per ``DATASETS.TEST`` dataset, ``OUTPUT_DIR/report/<dataset>/`` gets ``report.json``
and PNGs (``d2_anchorfree.evaluation.report``), read from the evaluator's
``OUTPUT_DIR/inference/<dataset>/coco_instances_results.json`` and the dataset's COCO json, and the
weights get the best-F1 score threshold of ``DATASETS.TEST[0]`` beside them
(``d2_anchorfree.checkpoint.score_threshold``)."""
import logging
import os
from typing import Dict, Optional, Tuple

from detectron2.data import MetadataCatalog
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..checkpoint.score_threshold import save_best_f1
from ..evaluation.report import build_report, load_coco_json, load_results, summary_lines, write_report

__all__ = ["EvaluationReportHook", "check_report_config", "report_inputs", "write_evaluation_reports"]

logger = logging.getLogger("d2_anchorfree")


def check_report_config(cfg) -> None:
    """Reject ``TEST.REPORT`` values that cannot work.

    Raises:
        ValueError: ``TEST.REPORT.ENABLED`` not a bool, or ``TEST.REPORT.CONFUSION_IOU`` not a
            number in (0, 1], naming the key and value.
    """
    if not isinstance(cfg.TEST.REPORT.ENABLED, bool):
        raise ValueError(f"TEST.REPORT.ENABLED = {cfg.TEST.REPORT.ENABLED!r}: must be True or False")
    iou = cfg.TEST.REPORT.CONFUSION_IOU
    if isinstance(iou, bool) or not isinstance(iou, (int, float)) or not 0 < iou <= 1:
        raise ValueError(f"TEST.REPORT.CONFUSION_IOU = {iou!r}: must be an IoU in (0, 1] (default 0.5)")


def report_inputs(cfg, dataset_name: str) -> Tuple[Optional[Tuple[str, str]], str]:
    """(results json, COCO json) of the last evaluation of ``dataset_name``, or (None, why not).

    The results are ``AnchorFreeTrainer.build_evaluator``'s ``OUTPUT_DIR/inference/<dataset>/
    coco_instances_results.json``; the ground truth is the dataset's ``json_file`` (COCO-format
    datasets), else the COCO json detectron2's ``COCOEvaluator`` converted next to the results.
    """
    folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    results = os.path.join(folder, "coco_instances_results.json")
    if not os.path.isfile(results):
        return None, f"no {results}"
    gt = getattr(MetadataCatalog.get(dataset_name), "json_file", None)
    if not (gt and os.path.isfile(gt)):
        gt = os.path.join(folder, f"{dataset_name}_coco_format.json")
    if not os.path.isfile(gt):
        return None, f"dataset '{dataset_name}' has no COCO json (no json_file, no {gt})"
    return (results, gt), ""


def write_evaluation_reports(cfg, weights: str, storage=None) -> Dict[str, str]:
    """Write the report of every ``DATASETS.TEST`` dataset (main process only; nothing when
    ``TEST.REPORT.ENABLED`` is False) and save ``DATASETS.TEST[0]``'s best-F1 threshold beside
    ``weights`` when it is a local file. A dataset without inputs (:func:`report_inputs`) is
    skipped with a warning.

    Args:
        cfg: the config (``OUTPUT_DIR``, ``DATASETS.TEST``, ``TEST.COCO_MAX_DETS_PER_IMAGE``, ``TEST.REPORT``).
        weights: the evaluated weights file ("" or not a file: no threshold is saved).
        storage: a detectron2 ``EventStorage`` (training): ``report/<dataset>/best_f1`` and
            ``report/<dataset>/best_f1_score_threshold`` go into it (metrics.json, TensorBoard).

    Returns:
        dict: dataset name -> report folder.

    Raises:
        ValueError: bad ``TEST.REPORT`` values; results that do not fit the dataset's json
            (``evaluation.report.load_results``).
    """
    check_report_config(cfg)
    if not cfg.TEST.REPORT.ENABLED or not comm.is_main_process():
        return {}
    written = {}
    for i, name in enumerate(cfg.DATASETS.TEST):
        inputs, why = report_inputs(cfg, name)
        if inputs is None:
            logger.warning("No evaluation report for %s: %s", name, why)
            continue
        results_path, gt_path = inputs
        gt = load_coco_json(gt_path)
        results = load_results(results_path, gt, gt_source=gt_path)
        report = build_report(gt, results, max_dets=cfg.TEST.COCO_MAX_DETS_PER_IMAGE, iou=cfg.TEST.REPORT.CONFUSION_IOU,
                              sources={"dataset": name, "results": results_path, "coco_json": gt_path,
                                       "weights": weights})
        out = os.path.join(cfg.OUTPUT_DIR, "report", name)
        write_report(report, out)
        written[name] = out
        logger.info("Evaluation report of %s in %s:\n%s", name, out, "\n".join(summary_lines(report)))
        best = report["best_f1"]
        if storage is not None and best["score_threshold"] is not None:
            storage.put_scalars(**{f"report/{name}/best_f1": best["f1"],
                                   f"report/{name}/best_f1_score_threshold": best["score_threshold"]},
                                smoothing_hint=False)
        if i == 0 and weights and os.path.isfile(weights) and best["score_threshold"] is not None:
            path = save_best_f1(weights, report, name)
            logger.info("Best-F1 score threshold %.3f (F1 %.3f on %s) saved in %s (d2af predict --min-score best)",
                        best["score_threshold"], best["f1"], name, path)
    return written


class EvaluationReportHook(HookBase):
    """After the final evaluation of training (detectron2's ``EvalHook.after_train``, when the run
    reached ``SOLVER.MAX_ITER``; not after early stopping, which skips it), write the reports of
    :func:`write_evaluation_reports` for ``OUTPUT_DIR/model_final.pth``. Place it after the
    ``EvalHook`` and before the ``PeriodicWriter``, whose final write then carries its scalars.
    A failure is logged with its traceback and training ends normally: the weights and metrics
    are already written."""

    def after_train(self):
        if self.trainer.iter + 1 < self.trainer.max_iter:
            return
        cfg = self.trainer.cfg
        try:
            write_evaluation_reports(cfg, os.path.join(cfg.OUTPUT_DIR, "model_final.pth"), self.trainer.storage)
        except Exception:  # noqa: BLE001 - the trained weights are saved; the report is not worth a failed run
            logger.exception("The evaluation report failed (training itself finished; rerun it with d2af report)")

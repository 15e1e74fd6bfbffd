"""COCO evaluation (``AnchorFreeCOCOEvaluator``, ``coco.py``) and the evaluation report: per-class
AP, precision-recall and F1 curves, the best-F1 score threshold, a confusion matrix and recall by
object size (``report.py``, ``d2af report``)."""
from .coco import AnchorFreeCOCOEvaluator, evaluate_bbox_with_faster_coco_eval

__all__ = ["AnchorFreeCOCOEvaluator", "evaluate_bbox_with_faster_coco_eval"]

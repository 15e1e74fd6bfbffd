"""Config keys of evaluation and of the inference wrappers (read by ``evaluation``,
``inference.slicing`` and ``inference.tta``)."""
from detectron2.config import CfgNode as CN


def add_inference_config(cfg):
    """Add ``TEST.COCO_MAX_DETS_PER_IMAGE`` and ``TEST.REPORT`` (evaluation), ``TEST.SLICE`` (sliced inference) and
    ``TEST.AUG.MERGE`` / ``MERGE_IOU`` (test-time augmentation; detectron2 has the other ``TEST.AUG`` keys).

    Args:
        cfg (CfgNode): a detectron2 config; modified in place (called by
            ``d2_anchorfree.config.add_anchorfree_config``, which adds every section).

    Returns:
        CfgNode: the same ``cfg``.
    """
    _C = cfg
    # ---- evaluation
    # COCOeval maxDets becomes [1, 10, this]; AP is computed at this many detections per image.
    # Raise it (with TEST.DETECTIONS_PER_IMAGE) for crowded images such as tree-crown tiles.
    _C.TEST.COCO_MAX_DETS_PER_IMAGE = 100
    # The evaluation report (d2_anchorfree.evaluation.report; engine.hooks.write_evaluation_reports):
    # after training's final evaluation and with --eval-only, per DATASETS.TEST dataset with a COCO
    # json, OUTPUT_DIR/report/<dataset>/ gets report.json and PNGs (per-class AP, PR and F1 curves,
    # confusion matrix, recall by size), and the weights get their best-F1 score threshold
    # (<weights>.best_f1.json, from DATASETS.TEST[0]; used by d2af predict --min-score best).
    _C.TEST.REPORT = CN()
    _C.TEST.REPORT.ENABLED = True
    # IoU at which the confusion matrix matches detections to ground truth, in (0, 1].
    _C.TEST.REPORT.CONFUSION_IOU = 0.5

    # ---- sliced inference (d2_anchorfree.inference.slicing): large images in overlapping windows
    # Evaluation (train_net.py --eval-only, AnchorFreeTrainer.test), build_predictor and
    # tools/predict.py (--slice) run the detector on SIZE x SIZE windows cut from the image at its
    # full resolution (no INPUT.MIN/MAX_SIZE_TEST resize of the whole image; each window gets
    # that resize, as a tile would), BATCH_SIZE windows per forward, then map boxes back and merge.
    _C.TEST.SLICE = CN()
    _C.TEST.SLICE.ENABLED = False
    _C.TEST.SLICE.SIZE = 400  # window side, pixels (a smaller image is one window of its size)
    # Minimum overlap of neighbouring windows, pixels, in [0, SIZE); windows are spread evenly so
    # the last one ends at the image edge. Make it >= the largest object to see each one whole.
    _C.TEST.SLICE.OVERLAP = 100
    _C.TEST.SLICE.BATCH_SIZE = 4  # windows per model forward (bounds memory)
    # Merge of detections from different windows (never within one window: the detector's own NMS,
    # or its NMS-free one-to-one output, already decided those): "nmm" (greedy non-maximum merge:
    # the highest score keeps its box but takes each side that it has cut by a window edge from
    # the best box not cut there) or "nms" (class-aware NMS across windows). Two detections match
    # when their parts inside the two windows' common region have IoU >= MERGE_IOU.
    _C.TEST.SLICE.MERGE = "nmm"
    _C.TEST.SLICE.MERGE_IOU = 0.5
    # Detections kept per whole image after the merge (0: TEST.DETECTIONS_PER_IMAGE).
    _C.TEST.SLICE.DETECTIONS_PER_IMAGE = 0

    # ---- test-time augmentation (d2_anchorfree.inference.tta) for every dense detector, with
    # detectron2's TEST.AUG keys: ENABLED, MIN_SIZES (shortest-edge sizes), MAX_SIZE, FLIP.
    # Merge of the augmented outputs (only between different augmentations): "nms" (class-aware,
    # at MERGE_IOU) or "wbf" (weighted boxes fusion, ensemble-boxes; Solovyev et al. 2021).
    _C.TEST.AUG.MERGE = "nms"
    _C.TEST.AUG.MERGE_IOU = 0.6
    return cfg

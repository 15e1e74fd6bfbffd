"""``AnchorFreeCOCOEvaluator``: detectron2's ``COCOEvaluator`` with the fastest COCOeval that gives
pycocotools' numbers (detectron2's C++ one, faster-coco-eval, or pycocotools itself)."""
import logging
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.evaluation import coco_evaluation

from ..compat import COCO_EVAL_BACKENDS, coco_eval_backend

logger = logging.getLogger("d2_anchorfree")


def evaluate_bbox_with_faster_coco_eval(coco_gt, coco_results, iou_type, kpt_oks_sigmas=None,
                                        img_ids=None, max_dets_per_image=None, *, fallback,
                                        **version_specific):
    """Drop-in for detectron2's ``_evaluate_predictions_on_coco`` that evaluates boxes with
    ``faster_coco_eval.COCOeval_faster`` (C++ evaluate + accumulate, the pycocotools algorithm).

    Args:
        coco_gt: the ground truth as a pycocotools ``COCO`` (``COCOEvaluator._coco_api``); its
            ``dataset`` dict is indexed again by faster-coco-eval.
        coco_results: list of result dicts (image_id, category_id, XYWH bbox px, score).
        iou_type: "bbox"; other types are passed to ``fallback`` unchanged.
        kpt_oks_sigmas: unused for boxes (passed to ``fallback``).
        img_ids: optional list of image ids to evaluate (``params.imgIds``).
        max_dets_per_image: ``maxDets`` list of >= 3 (default [1, 10, 100]); AP, APs/m/l and
            ARs/m/l are taken at its last value, AR at each (as detectron2's ``COCOevalMaxDets``).
        fallback: the original detectron2 function. version_specific: its other keyword
            arguments (v0.6 ``use_fast_impl``, main ``cocoeval_fn``), used only by ``fallback``.

    Returns:
        the evaluated ``COCOeval_faster``: ``stats`` [12+] (pycocotools' order first) and
        ``eval["precision"]`` [T, R, K, A, M], which ``COCOEvaluator._derive_coco_results`` reads.

    Raises:
        ValueError: ``max_dets_per_image`` with fewer than 3 values.
    """
    if iou_type != "bbox":
        return fallback(coco_gt, coco_results, iou_type, kpt_oks_sigmas=kpt_oks_sigmas,
                        img_ids=img_ids, max_dets_per_image=max_dets_per_image, **version_specific)
    from faster_coco_eval import COCO, COCOeval_faster

    max_dets = [1, 10, 100] if max_dets_per_image is None else list(max_dets_per_image)
    if len(max_dets) < 3:
        raise ValueError(f"COCO evaluation needs at least 3 maxDets, got {max_dets}")
    gt = COCO(coco_gt.dataset, use_deepcopy=True)  # never modify the evaluator's own dataset
    dt = gt.loadRes(coco_results)
    coco_eval = COCOeval_faster(gt, dt, "bbox", print_function=logger.info)
    coco_eval.params.maxDets = max_dets
    if img_ids is not None:
        coco_eval.params.imgIds = img_ids
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval


class AnchorFreeCOCOEvaluator(COCOEvaluator):
    """detectron2's ``COCOEvaluator`` (bbox task) whose COCOeval is chosen by
    ``compat.coco_eval_backend``: detectron2's C++ ``COCOeval_opt`` when ``detectron2._C`` is
    there (``use_fast_impl=True``), else ``faster-coco-eval`` when installed, else pycocotools.
    Everything else (json export, category-id mapping, ``_derive_coco_results``) is detectron2's.
    A dataset registered with ``DATASETS.AREA_CHECK recompute`` whose corrected json is not written
    yet is loaded first (its loader writes it).
    """

    def __init__(self, dataset_name, *, backend=None, max_dets_per_image=None, **kwargs):
        """
        Args:
            dataset_name: a registered dataset with COCO-format ground truth.
            backend: one of ``compat.COCO_EVAL_BACKENDS``; ``None`` picks automatically.
            max_dets_per_image: the last ``maxDets`` (``TEST.COCO_MAX_DETS_PER_IMAGE``);
                ``None`` = 100.
            kwargs: the other ``COCOEvaluator`` arguments (``use_fast_impl`` is set here).

        Raises:
            ValueError: an unknown ``backend``, or "detectron2_C" without ``detectron2._C``.
        """
        if backend is None:
            backend = coco_eval_backend(100 if max_dets_per_image is None else max_dets_per_image)
        if backend not in COCO_EVAL_BACKENDS:
            raise ValueError(f"backend must be one of {COCO_EVAL_BACKENDS}, got {backend!r}")
        if backend == "detectron2_C":
            from ..compat import detectron2_has_C

            if not detectron2_has_C():
                raise ValueError("backend 'detectron2_C' needs detectron2._C, which does not import")
        kwargs["use_fast_impl"] = backend == "detectron2_C"
        meta = MetadataCatalog.get(dataset_name)
        if getattr(meta, "areas_recomputed", False) and not os.path.isfile(meta.json_file):
            DatasetCatalog.get(dataset_name)  # DATASETS.AREA_CHECK recompute: the loader writes json_file
        super().__init__(dataset_name, max_dets_per_image=max_dets_per_image, **kwargs)
        self.backend = backend
        self._logger.info("COCO evaluation of %s with %s", dataset_name, backend)

    def _eval_predictions(self, predictions, img_ids=None):
        """detectron2's, with ``coco_evaluation._evaluate_predictions_on_coco`` replaced by
        :func:`evaluate_bbox_with_faster_coco_eval` for the duration of the call when the
        backend is faster-coco-eval (restored afterwards, also on error)."""
        if self.backend != "faster_coco_eval":
            return super()._eval_predictions(predictions, img_ids=img_ids)
        original = coco_evaluation._evaluate_predictions_on_coco

        def evaluate(*args, **kwargs):
            return evaluate_bbox_with_faster_coco_eval(*args, fallback=original, **kwargs)

        coco_evaluation._evaluate_predictions_on_coco = evaluate
        try:
            return super()._eval_predictions(predictions, img_ids=img_ids)
        finally:
            coco_evaluation._evaluate_predictions_on_coco = original

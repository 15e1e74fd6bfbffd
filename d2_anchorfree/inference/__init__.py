"""Inference beyond one forward: sliced inference over large images (``slicing``), test-time
augmentation (``tta``) and the merging of their detections (``merge``).

:func:`build_inference_model` is the one place that wraps a detector according to
``TEST.SLICE.ENABLED`` / ``TEST.AUG.ENABLED``; evaluation (``AnchorFreeTrainer.test``), the
predictor (``build_predictor``) and ``tools/predict.py`` all call it.
"""
from .merge import MERGE_METHODS, fuse_clusters, greedy_clusters
from .slicing import SlicedDetector, merge_windows, slice_windows, window_origins
from .tta import TTA_MERGE_METHODS, DenseTTA, hflip_boxes, merge_augmentations

__all__ = ["build_inference_model", "needs_full_resolution", "SlicedDetector", "DenseTTA",
           "slice_windows", "window_origins", "merge_windows", "merge_augmentations", "hflip_boxes",
           "greedy_clusters", "fuse_clusters", "MERGE_METHODS", "TTA_MERGE_METHODS"]


def needs_full_resolution(cfg) -> bool:
    """Whether inference takes the image at full resolution (``TEST.SLICE.ENABLED`` or
    ``TEST.AUG.ENABLED``: the wrapper resizes windows / augmentations itself), so the test data
    loader must not apply ``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``."""
    return bool(cfg.TEST.SLICE.ENABLED or cfg.TEST.AUG.ENABLED)


def build_inference_model(cfg, model, progress: bool = False):
    """``model`` wrapped for the inference that ``cfg`` asks for.

    * neither key: ``model`` itself;
    * ``TEST.AUG.ENABLED``: :class:`DenseTTA` (multi-scale + flip, ``TEST.AUG.*``);
    * ``TEST.SLICE.ENABLED``: :class:`SlicedDetector` (``TEST.SLICE.*``);
    * both: sliced inference whose windows each get the TTA (then windows are merged).

    All take ``[{"image" [C, H, W] uint8 at full resolution, "height", "width"}]`` and return
    ``[{"instances"}]`` in ``height`` x ``width`` pixels, like the model.

    Args:
        cfg: the config. model: a built detector (eval mode is the caller's business).
        progress: a tqdm bar over the windows of each image (sliced inference).

    Raises:
        ValueError: a bad ``TEST.SLICE.*`` / ``TEST.AUG.*`` value, naming the key.
    """
    tta = DenseTTA(cfg, model) if cfg.TEST.AUG.ENABLED else None
    if cfg.TEST.SLICE.ENABLED:
        return SlicedDetector(cfg, model, window_model=tta, progress=progress)
    return tta if tta is not None else model

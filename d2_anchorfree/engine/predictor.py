"""detectron2's ``DefaultPredictor`` with the weight checks of evaluation."""
from detectron2.engine import DefaultPredictor

from ..checkpoint import load_inference_weights

__all__ = ["build_predictor"]


def build_predictor(cfg, allow_untrained: bool = False) -> DefaultPredictor:
    """A ``DefaultPredictor`` for ``cfg`` whose ``MODEL.WEIGHTS`` must set every model tensor.

    detectron2's ``DefaultPredictor(cfg)`` silently keeps random weights when ``MODEL.WEIGHTS``
    is empty or matches nothing; here that is an error (see
    ``d2_anchorfree.checkpoint.load_inference_weights``).

    Args:
        cfg (CfgNode): the config (not modified).
        allow_untrained: accept an empty ``MODEL.WEIGHTS`` (untrained model, with a warning).

    Raises:
        ValueError, WeightsMismatchError, UnsafeWeightFileError: see ``load_inference_weights``.
    """
    weights = cfg.MODEL.WEIGHTS
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = ""  # loaded below, with the checks
    cfg.freeze()
    predictor = DefaultPredictor(cfg)
    load_inference_weights(predictor.model, weights, allow_untrained=allow_untrained)
    return predictor

"""detectron2's ``DefaultPredictor`` with the weight checks of evaluation, and sliced inference /
test-time augmentation when the config enables them."""
import numpy as np
import torch

from detectron2.engine import DefaultPredictor

from ..checkpoint import load_inference_weights
from ..inference import build_inference_model

__all__ = ["build_predictor", "AnchorFreePredictor"]


class AnchorFreePredictor(DefaultPredictor):
    """``DefaultPredictor`` (``predictor(bgr_image) -> {"instances"}`` in image pixels) that runs
    ``build_inference_model(cfg, model)``: plain inference (exactly ``DefaultPredictor``'s), or,
    with ``TEST.SLICE.ENABLED`` / ``TEST.AUG.ENABLED``, sliced inference and/or TTA on the image at
    full resolution (the wrapper resizes each window / augmentation itself).

    Attributes:
        model: the detector. inference_model: ``model`` or its wrapper.
    """

    def __init__(self, cfg, progress: bool = False):
        """
        Args:
            cfg: the config (``MODEL.WEIGHTS`` is loaded by detectron2's checkpointer, as in
                ``DefaultPredictor``; :func:`build_predictor` loads with our checks instead).
            progress: a tqdm bar over the windows of each image.
        """
        super().__init__(cfg)
        self.inference_model = build_inference_model(cfg, self.model, progress=progress)

    def __call__(self, original_image: np.ndarray) -> dict:
        """
        Args:
            original_image: [H, W, 3] uint8 in BGR (``cv2.imread``'s order, as ``DefaultPredictor``).

        Returns:
            ``{"instances": Instances}`` of (H, W): ``pred_boxes`` XYXY pixels, ``scores``, ``pred_classes``.
        """
        if self.inference_model is self.model:
            return super().__call__(original_image)
        with torch.no_grad():
            if self.input_format == "RGB":
                original_image = original_image[:, :, ::-1]
            height, width = original_image.shape[:2]
            image = torch.as_tensor(np.ascontiguousarray(original_image.transpose(2, 0, 1)))
            return self.inference_model([{"image": image, "height": height, "width": width}])[0]


def build_predictor(cfg, allow_untrained: bool = False, progress: bool = False) -> AnchorFreePredictor:
    """An :class:`AnchorFreePredictor` for ``cfg`` whose ``MODEL.WEIGHTS`` must set every model tensor.

    detectron2's ``DefaultPredictor(cfg)`` silently keeps random weights when ``MODEL.WEIGHTS``
    is empty or matches nothing; here that is an error (see
    ``d2_anchorfree.checkpoint.load_inference_weights``). ``TEST.SLICE.ENABLED`` /
    ``TEST.AUG.ENABLED`` switch on sliced inference / TTA (``d2_anchorfree.inference``).

    Args:
        cfg (CfgNode): the config (not modified).
        allow_untrained: accept an empty ``MODEL.WEIGHTS`` (untrained model, with a warning).
        progress: a tqdm bar over the windows of each image (sliced inference).

    Raises:
        ValueError, WeightsMismatchError, UnsafeWeightFileError: see ``load_inference_weights``;
        ValueError: a bad ``TEST.SLICE.*`` / ``TEST.AUG.*`` value.
    """
    weights = cfg.MODEL.WEIGHTS
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = ""  # loaded below, with the checks
    cfg.freeze()
    predictor = AnchorFreePredictor(cfg, progress=progress)
    load_inference_weights(predictor.model, weights, allow_untrained=allow_untrained)
    return predictor

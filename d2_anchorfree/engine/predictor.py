"""detectron2's ``DefaultPredictor`` with the weight checks of evaluation, and sliced inference /
test-time augmentation when the config enables them."""
from typing import Optional

import numpy as np
import torch

from detectron2.engine import DefaultPredictor

from ..checkpoint import CLASSES_KEY, check_classes, classes_metadata, dataset_classes, load_inference_weights
from ..data.datasets import config_num_classes
from ..inference import build_inference_model
from ..modeling.layout import to_channels_last

__all__ = ["build_predictor", "AnchorFreePredictor", "model_classes"]


class AnchorFreePredictor(DefaultPredictor):
    """``DefaultPredictor`` (``predictor(bgr_image) -> {"instances"}`` in image pixels) that runs
    ``build_inference_model(cfg, model)``: plain inference (exactly ``DefaultPredictor``'s), or,
    with ``TEST.SLICE.ENABLED`` / ``TEST.AUG.ENABLED``, sliced inference and/or TTA on the image at
    full resolution (the wrapper resizes each window / augmentation itself).

    Attributes:
        model: the detector. inference_model: ``model`` or its wrapper. classes, metadata: the
        class names (set by :func:`build_predictor`; ``classes`` None until then).
    """

    def __init__(self, cfg, progress: bool = False):
        """
        Args:
            cfg: the config (``MODEL.WEIGHTS`` is loaded by detectron2's checkpointer, as in
                ``DefaultPredictor``; :func:`build_predictor` loads with our checks instead).
            progress: a tqdm bar over the windows of each image.

        Raises:
            ValueError: ``MODEL.CHANNELS_LAST`` is not a bool (honoured for every meta-architecture:
                :func:`~d2_anchorfree.modeling.layout.to_channels_last`).
        """
        super().__init__(cfg)
        to_channels_last(self.model, cfg.MODEL.CHANNELS_LAST)  # detectron2's meta-architectures too
        self.classes = None
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


    def predict_windows(self, raster) -> dict:
        """Sliced inference reading only the windows it runs on (``TEST.SLICE.ENABLED`` required):
        peak memory is one batch of windows (``TEST.SLICE.BATCH_SIZE``) and the detections, not
        the image. Windows without a valid pixel (nodata, alpha 0) are skipped.

        Args:
            raster: a :class:`~d2_anchorfree.data.raster.RasterWindows` (or any object with
                ``height``, ``width``, ``read(window) -> [h, w, 3] uint8 RGB``, ``valid(window)
                -> [h, w] bool`` and ``all_valid``).

        Returns:
            ``{"instances": Instances}`` of (raster.height, raster.width), pixels of the raster.

        Raises:
            ValueError: sliced inference is not enabled (``TEST.SLICE.ENABLED``).
        """
        from ..inference.slicing import SlicedDetector

        if not isinstance(self.inference_model, SlicedDetector):
            raise ValueError("reading an image window by window needs sliced inference: set TEST.SLICE.ENABLED True "
                             "(d2af predict --slice)")
        check_all = not raster.all_valid

        def read(window):
            if check_all and not raster.valid(window).any():
                return None
            rgb = raster.read(window)
            pixels = rgb if self.input_format == "RGB" else rgb[:, :, ::-1]
            return torch.as_tensor(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

        with torch.no_grad():
            return {"instances": self.inference_model.predict_windows(raster.height, raster.width, read)}


def model_classes(cfg, checkpoint: dict, source: str = "MODEL.WEIGHTS") -> Optional[dict]:
    """The class names and category ids of a loaded model: the checkpoint's ``"classes"`` (written
    by training, see ``d2_anchorfree.checkpoint.classes``), else those of an already loaded
    ``DATASETS.TEST`` dataset (no dataset is loaded here), else None.

    Args:
        cfg: the config (its class count is checked against the checkpoint's names).
        checkpoint: the entries of the weights file other than the model (``load_inference_weights``).
        source: the weights file, for the messages.

    Returns:
        dict or None: ``{"thing_classes": [str] (K), "category_ids": [int] (K)}``.

    Raises:
        ValueError: the checkpoint's entry is malformed or names another number of classes than
            the config's model has.
    """
    if CLASSES_KEY in checkpoint:
        return check_classes(checkpoint[CLASSES_KEY], source, config_num_classes(cfg))
    return dataset_classes(cfg.DATASETS.TEST)


def build_predictor(cfg, allow_untrained: bool = False, progress: bool = False) -> AnchorFreePredictor:
    """An :class:`AnchorFreePredictor` for ``cfg`` whose ``MODEL.WEIGHTS`` must set every model tensor.

    detectron2's ``DefaultPredictor(cfg)`` silently keeps random weights when ``MODEL.WEIGHTS``
    is empty or matches nothing; here that is an error (see
    ``d2_anchorfree.checkpoint.load_inference_weights``). ``TEST.SLICE.ENABLED`` /
    ``TEST.AUG.ENABLED`` switch on sliced inference / TTA (``d2_anchorfree.inference``).
    The datasets the config names are not read: the class names come from the weights file.

    Args:
        cfg (CfgNode): the config (not modified).
        allow_untrained: accept an empty ``MODEL.WEIGHTS`` (untrained model, with a warning).
        progress: a tqdm bar over the windows of each image (sliced inference).

    Returns:
        AnchorFreePredictor: with ``classes`` (:func:`model_classes`: a dict, or None when
        neither the checkpoint nor a loaded test dataset names them) and ``metadata`` (a detectron2
        ``Metadata`` with ``thing_classes`` and ``thing_dataset_id_to_contiguous_id`` of
        ``classes`` when known, else DefaultPredictor's, that of ``DATASETS.TEST[0]``).

    Raises:
        ValueError, WeightsMismatchError, UnsafeWeightFileError: see ``load_inference_weights``;
        ValueError: a bad ``TEST.SLICE.*`` / ``TEST.AUG.*`` value; class names in the weights file
        that do not fit the model (:func:`model_classes`).
    """
    weights = cfg.MODEL.WEIGHTS
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = ""  # loaded below, with the checks
    cfg.freeze()
    predictor = AnchorFreePredictor(cfg, progress=progress)
    checkpoint = load_inference_weights(predictor.model, weights, allow_untrained=allow_untrained)
    predictor.classes = model_classes(cfg, checkpoint, weights)
    if predictor.classes is not None:
        predictor.metadata = classes_metadata(predictor.classes, name=weights or "untrained model")
    return predictor

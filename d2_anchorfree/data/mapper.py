"""Dataset mappers: a detectron2 ``DatasetMapper`` that reads images with
:func:`d2_anchorfree.data.image_io.read_image` (the reader shared with ``tools/predict.py``), whose
failures name the file, and its mosaic variant (``INPUT.MOSAIC``: 4 dataset images per training
image, :mod:`d2_anchorfree.data.mosaic`); :func:`build_train_mapper` picks one from the config."""
import copy
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from detectron2.config import configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from detectron2.structures import BoxMode

from .augmentation import build_train_augmentations
from .image_io import read_image
from .mosaic import (MOSAIC_FILL, check_mosaic_args, crop_side, mosaic4, resize_longer_side, sample_mosaic_center,
                     sample_mosaic_scale)

__all__ = ["CheckedDatasetMapper", "MosaicDatasetMapper", "build_train_mapper"]


class CheckedDatasetMapper(DatasetMapper):
    """detectron2's ``DatasetMapper`` (same constructor, ``@configurable``: build it with
    ``CheckedDatasetMapper(cfg, is_train)`` or explicit arguments), with a clear error when an image
    cannot be read.

    Behaviour is that of ``DatasetMapper.__call__`` of detectron2 v0.6: read the image in
    ``image_format``, check its size against the dict's ``height``/``width``, apply the
    augmentations, return ``"image"`` as a uint8 tensor [C, H, W]; in training, annotations are
    transformed into ``"instances"`` (``gt_boxes`` XYXY pixels, ``gt_classes``) by the parent's
    ``_transform_annotations``, which drops ``iscrowd`` annotations; at test time they are removed.
    Three things differ: reading (:meth:`read_image`, the shared reader of training, evaluation
    and ``tools/predict.py``, which refuses truncated files and 16-bit/float images); boxes are
    made floats before they are transformed (detectron2 truncates whole-number boxes when it resizes
    them, :func:`_float_box`); and, built from a config, the training augmentations are
    :func:`~d2_anchorfree.data.augmentation.build_train_augmentations` (detectron2's list unless
    ``INPUT.SCALE_JITTER`` or ``INPUT.HSV`` is enabled).
    """

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        if is_train:
            ret["augmentations"] = build_train_augmentations(cfg)
        return ret

    def read_image(self, dataset_dict: dict) -> np.ndarray:
        """Read ``dataset_dict["file_name"]`` as an [H, W, C] uint8 array in ``self.image_format``
        ("BGR", "RGB" or "L") with :func:`~d2_anchorfree.data.image_io.read_image`: the whole file
        is decoded, EXIF orientation applied, only 8-bit images accepted.

        Raises:
            FileNotFoundError: the file does not exist (naming it).
            ValueError: the file exists but cannot be decoded (corrupt, truncated, not an image,
                16-bit/float), ``"cannot read image <path>: <reason>"``.
        """
        return read_image(dataset_dict["file_name"], format=self.image_format)

    def __call__(self, dataset_dict: dict) -> dict:
        """Map one detectron2 dataset dict to model input (see the class docstring).

        Raises:
            FileNotFoundError / ValueError: from :meth:`read_image`.
            detectron2's ``SizeMismatchError``: the image size differs from the dict's
                ``height``/``width`` (its message names the file).
        """
        dataset_dict = copy.deepcopy(dataset_dict)
        image = self.read_image(dataset_dict)
        utils.check_image_size(dataset_dict, image)
        if "sem_seg_file_name" in dataset_dict:
            sem_seg_gt = utils.read_image(dataset_dict.pop("sem_seg_file_name"), "L").squeeze(2)
        else:
            sem_seg_gt = None
        return self.augment(dataset_dict, image, sem_seg_gt)

    def augment(self, dataset_dict: dict, image: np.ndarray, sem_seg_gt: Optional[np.ndarray] = None) -> dict:
        """The steps after reading: apply the augmentations to ``image`` ([H, W, C] uint8) and
        ``sem_seg_gt``, put ``"image"`` (uint8 [C, H, W] tensor) into ``dataset_dict`` (modified in
        place and returned), transform proposals and, in training, the annotations into
        ``"instances"`` (at test time the annotations are removed)."""
        aug_input = T.AugInput(image, sem_seg=sem_seg_gt)
        transforms = self.augmentations(aug_input)
        image, sem_seg_gt = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]  # (h, w)
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg_gt.astype("long"))
        if self.proposal_topk is not None:
            utils.transform_proposals(dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk)

        if not self.is_train:
            dataset_dict.pop("annotations", None)
            dataset_dict.pop("sem_seg_file_name", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            for annotation in dataset_dict["annotations"]:
                if "bbox" in annotation:
                    annotation["bbox"] = _float_box(annotation["bbox"])
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict


def _float_box(box):
    """``box`` (4 or 5 numbers) as floats. detectron2's annotation transform (v0.6 and main) turns an
    all-integer ``bbox`` (COCO files written with whole pixels) into an integer array, and resizing
    it then truncates every coordinate toward zero (XYXY (4, 2, 12, 8) halved gives (2, 1, 6, 4)
    only by luck, (4, 2, 12, 8) x 0.4 gives (1, 0, 4, 3) instead of (1.6, 0.8, 4.8, 3.2))."""
    if isinstance(box, np.ndarray):
        return box.astype(np.float64)
    return [float(v) for v in box]


class MosaicDatasetMapper(CheckedDatasetMapper):
    """:class:`CheckedDatasetMapper` whose training samples are, with probability ``mosaic_prob``,
    mosaics of 4 dataset images (``INPUT.MOSAIC``; YOLO's mosaic, DEIM's dense one-to-one
    positives); build it with ``MosaicDatasetMapper(cfg, is_train, dataset_dicts=dicts)`` or explicit
    arguments (``@configurable``).

    A mosaic sample: the sampled dict is image 0 (top left); images 1 to 3 are drawn uniformly,
    with repetition, from ``dataset_dicts`` (the training loader's dicts, so after
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``). Each is read with :meth:`read_image`, checked against
    its dict's size, resized so that its longer side is ``mosaic_size`` (S) pixels and laid around a
    random centre on a 2S x 2S canvas (:func:`~.mosaic.mosaic4`); the result (S x S for "crop",
    2S x 2S for "full") then goes through the ordinary augmentations and annotation transform
    exactly like a plain image (so ``"image"`` and ``"instances"`` are those of the mosaic, and
    ``"height"``/``"width"`` the mosaic's size before the augmentations). Annotations are those of
    the four images that stay visible (``mosaic_min_visible``, :func:`~.mosaic.mosaic4`), with
    ``bbox`` XYXY pixels of the mosaic and every other field kept; crowd annotations move the same
    way and are then dropped by the annotation transform, as for a plain image. A mosaic whose
    images hold no boxes, or whose boxes are all cut away, gives empty ``"instances"``.

    Boxes only: ``"segmentation"`` and ``"keypoints"`` of the annotations are dropped (as the
    parent does when masks and keypoints are off); a mapper that would use masks, keypoints,
    semantic segmentation or precomputed proposals is refused.

    With ``mosaic_scale`` other than (1, 1) ("crop" only), the crop window is the round(S / s) middle
    of the canvas, s drawn uniformly in the range, resized to S x S with its boxes (objects at s
    times their size; Ultralytics' ``RandomPerspective`` scale without translation).

    Randomness (whether a sample is a mosaic, the 3 other images, the centre, the scale when the
    range is not one value) is drawn from numpy's
    global generator, before the augmentations draw theirs: the generator that the resumable
    training loader seeds per sample position, so a resumed run sees the same mosaics. At test time
    (``is_train`` False) the mapper is the parent's.
    """

    @configurable
    def __init__(self, is_train: bool, *, dataset_dicts: Sequence[dict], mosaic_prob: float = 1.0,
                 mosaic_size: int = 416, mosaic_output: str = "crop", mosaic_min_visible: float = 0.25,
                 mosaic_scale: Tuple[float, float] = (1.0, 1.0), **kwargs):
        """
        Args:
            is_train: training (mosaics) or test (the parent's mapping).
            dataset_dicts: the dicts images 1 to 3 are drawn from (detectron2 format, at least one).
            mosaic_prob, mosaic_size, mosaic_output, mosaic_min_visible: ``INPUT.MOSAIC.PROB``,
                ``SIZE`` (pixels), ``OUTPUT`` and ``MIN_VISIBLE``.
            mosaic_scale: (``INPUT.MOSAIC.MIN_SCALE``, ``MAX_SCALE``): with "crop", each mosaic shows
                the round(S / s) middle of the canvas resized to S x S, s uniform in the range.
            **kwargs: the arguments of detectron2's ``DatasetMapper`` (``augmentations``,
                ``image_format``, ...).

        Raises:
            ValueError: a bad mosaic value (naming its ``INPUT.MOSAIC`` key and value), no dataset
                dicts, or masks / keypoints / semantic segmentation / proposals in use.
        """
        super().__init__(is_train, **kwargs)
        check_mosaic_args(mosaic_prob, mosaic_size, mosaic_output, mosaic_min_visible, *mosaic_scale)
        if dataset_dicts is None or len(dataset_dicts) == 0:
            raise ValueError("INPUT.MOSAIC.ENABLED: the mosaic draws its images from the training dataset, "
                             "which has no images")
        refused = [name for name, used in (("MODEL.MASK_ON (instance masks)", self.use_instance_mask),
                                           ("MODEL.KEYPOINT_ON (keypoints)", self.use_keypoint),
                                           ("MODEL.LOAD_PROPOSALS (proposals)", self.proposal_topk is not None))
                   if used]
        if any("sem_seg_file_name" in d for d in dataset_dicts):
            refused.append("semantic segmentation (sem_seg_file_name in the dataset)")
        if refused:
            raise ValueError(f"INPUT.MOSAIC.ENABLED: the mosaic moves boxes only; it cannot be combined with "
                             f"{', '.join(refused)}; set INPUT.MOSAIC.ENABLED False")
        self.dataset_dicts = dataset_dicts
        self.mosaic_prob = float(mosaic_prob)
        self.mosaic_size = int(mosaic_size)
        self.mosaic_output = mosaic_output
        self.mosaic_min_visible = float(mosaic_min_visible)
        self.mosaic_scale = (float(mosaic_scale[0]), float(mosaic_scale[1]))

    @classmethod
    def from_config(cls, cfg, is_train: bool = True, dataset_dicts: Optional[Sequence[dict]] = None):
        ret = super().from_config(cfg, is_train)
        mosaic = cfg.INPUT.MOSAIC
        ret.update(dataset_dicts=dataset_dicts, mosaic_prob=mosaic.PROB, mosaic_size=mosaic.SIZE,
                   mosaic_output=mosaic.OUTPUT, mosaic_min_visible=mosaic.MIN_VISIBLE,
                   mosaic_scale=(mosaic.MIN_SCALE, mosaic.MAX_SCALE))
        return ret

    def __call__(self, dataset_dict: dict) -> dict:
        """Map one dataset dict: a mosaic with probability ``mosaic_prob`` in training (see the class
        docstring), else as :class:`CheckedDatasetMapper`.

        Raises:
            FileNotFoundError / ValueError / ``SizeMismatchError``: as the parent, for any of the
                four images.
        """
        if not self.is_train or not np.random.rand() < self.mosaic_prob:
            return super().__call__(dataset_dict)
        dataset_dict = copy.deepcopy(dataset_dict)
        others = np.random.randint(len(self.dataset_dicts), size=3)
        center = sample_mosaic_center(self.mosaic_size)
        scale = sample_mosaic_scale(*self.mosaic_scale)
        records = [dataset_dict] + [self.dataset_dicts[int(i)] for i in others]
        images, boxes, annotations = [], [], []
        for record in records:
            image = self.read_image(record)
            utils.check_image_size(dict(record), image)  # a copy: the shared dicts stay as loaded
            image, (sx, sy) = resize_longer_side(image, self.mosaic_size)
            annos = record.get("annotations", [])
            xyxy = [BoxMode.convert(list(a["bbox"]), a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos]
            images.append(image)
            boxes.append(np.asarray(xyxy, dtype=np.float64).reshape(-1, 4) * [sx, sy, sx, sy])
            annotations.append(annos)
        window = crop_side(self.mosaic_size, scale) if self.mosaic_output == "crop" else None
        result = mosaic4(images, boxes, center, self.mosaic_size, self.mosaic_output, self.mosaic_min_visible,
                         fill=MOSAIC_FILL, crop_size=window)
        if window is not None and window != self.mosaic_size:  # the scaled crop back to S x S
            result = result._replace(image=resize_longer_side(result.image, self.mosaic_size)[0],
                                     boxes=result.boxes * (self.mosaic_size / window))
        dataset_dict["annotations"] = [
            _moved_annotation(annotations[i][j], box)
            for i, j, box in zip(result.image_index.tolist(), result.box_index.tolist(), result.boxes.tolist())]
        dataset_dict["height"], dataset_dict["width"] = result.image.shape[:2]
        return self.augment(dataset_dict, result.image)


def _moved_annotation(annotation: dict, box_xyxy: List[float]) -> dict:
    """A copy of ``annotation`` with ``bbox`` = ``box_xyxy`` (XYXY_ABS) and without the fields the
    mosaic does not move (segmentation, keypoints)."""
    moved = {k: copy.deepcopy(v) for k, v in annotation.items() if k not in ("bbox", "bbox_mode", "segmentation",
                                                                             "keypoints")}
    moved["bbox"] = box_xyxy
    moved["bbox_mode"] = BoxMode.XYXY_ABS
    return moved


def build_train_mapper(cfg, dataset_dicts: Optional[Sequence[dict]] = None) -> CheckedDatasetMapper:
    """The training mapper of ``cfg``: :class:`MosaicDatasetMapper` over ``dataset_dicts`` (the
    training loader's dicts) when ``INPUT.MOSAIC.ENABLED``, else :class:`CheckedDatasetMapper`.

    Raises:
        ValueError: see :class:`MosaicDatasetMapper` (``dataset_dicts`` empty or None with mosaic on).
    """
    if cfg.INPUT.MOSAIC.ENABLED:
        return MosaicDatasetMapper(cfg, is_train=True, dataset_dicts=dataset_dicts)
    return CheckedDatasetMapper(cfg, is_train=True)

"""A detectron2 ``DatasetMapper`` that reads images with :func:`d2_anchorfree.data.image_io.read_image`
(the reader shared with ``tools/predict.py``), whose failures name the file."""
import copy
from typing import Optional

import numpy as np
import torch

from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T

from .image_io import read_image

__all__ = ["CheckedDatasetMapper"]


class CheckedDatasetMapper(DatasetMapper):
    """detectron2's ``DatasetMapper`` (same constructor, ``@configurable``: build it with
    ``CheckedDatasetMapper(cfg, is_train)`` or explicit arguments), with a clear error when an image
    cannot be read.

    Behaviour is that of ``DatasetMapper.__call__`` of detectron2 v0.6: read the image in
    ``image_format``, check its size against the dict's ``height``/``width``, apply the
    augmentations, return ``"image"`` as a uint8 tensor [C, H, W]; in training, annotations are
    transformed into ``"instances"`` (``gt_boxes`` XYXY pixels, ``gt_classes``) by the parent's
    ``_transform_annotations``, which drops ``iscrowd`` annotations; at test time they are removed.
    Only the reading step differs (:meth:`read_image`): the shared reader of training, evaluation
    and ``tools/predict.py``, which refuses truncated files and 16-bit/float images.
    """

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
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict

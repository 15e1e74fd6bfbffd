"""Plumbing shared by the anchor-free meta-architectures (on top of detectron2's DenseDetector)."""
from typing import Dict, List

import torch
import torch.distributed as dist

from detectron2.modeling.meta_arch.dense_detector import DenseDetector, permute_to_N_HWA_K
from detectron2.structures import Instances
from detectron2.utils import comm


def reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Average a scalar tensor over all workers (identity with one process).

    Used for loss normalizers: the number of positives "averaged over GPUs" (FCOS code,
    ``reduce_sum(num_pos) / num_gpus``), so that every worker divides by the same number and
    the DDP-averaged gradient equals the single-process gradient of the whole batch.
    """
    world = comm.get_world_size()
    if world == 1:
        return value
    value = value.detach().clone().float()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / world


def loss_normalizer(total: torch.Tensor, floor: float = 1.0) -> float:
    """Loss normalizer: ``total`` (e.g. the number of positives, or a sum of IoU weights)
    averaged over workers, floored at ``floor / world_size``.

    Each worker divides its loss by max(sum over workers, floor) / world_size, so after DDP
    averages the gradients (1 / world_size) the result equals one process on the whole batch
    dividing by max(sum, floor) -- also when the floor is active (a batch with fewer positives
    than workers, or small weights early in training). Returns a Python float (no gradient).
    """
    return max(reduce_mean(total.detach().float()).item(), floor / comm.get_world_size())


def flatten_levels(per_level: List[torch.Tensor], dim: int) -> torch.Tensor:
    """[N, dim, H_i, W_i] per level -> [N, sum_i H_i W_i, dim] (row-major per level)."""
    return torch.cat([permute_to_N_HWA_K(x, dim) for x in per_level], dim=1)


def check_gt_instances(gt_instances: List[Instances], num_classes: int):
    """Reject ground truth that would silently train the wrong thing.

    Raises:
        ValueError: a class id outside [0, num_classes), or a box with x1 <= x0 or y1 <= y0,
            naming the image index and the offending value.
    """
    for i, gt in enumerate(gt_instances):
        if len(gt) == 0:
            continue
        classes = gt.gt_classes
        bad = (classes < 0) | (classes >= num_classes)
        if bad.any():
            raise ValueError(
                f"image {i} of the batch has gt class {classes[bad][0].item()} outside "
                f"[0, {num_classes}); check MODEL.*.NUM_CLASSES against the dataset"
            )
        boxes = gt.gt_boxes.tensor
        degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if degenerate.any():
            raise ValueError(
                f"image {i} of the batch has a degenerate gt box {boxes[degenerate][0].tolist()} "
                "(x1 <= x0 or y1 <= y0 after augmentation)"
            )


class AnchorFreeDetector(DenseDetector):
    """A detectron2 ``DenseDetector`` with a shift generator and dense-inference settings.

    Subclasses implement ``forward_training(images, features, predictions, gt_instances)`` and
    ``forward_inference(images, features, predictions)``; ``DenseDetector.forward`` handles
    preprocessing (normalize, pad to ``size_divisibility``) and rescaling of the outputs.
    """

    def __init__(self, *, backbone, head, head_in_features, shift_generator, num_classes: int,
                 pixel_mean, pixel_std, input_format: str = "BGR", test_score_thresh: float = 0.05,
                 test_topk_candidates: int = 1000, test_nms_thresh: float = 0.6,
                 max_detections_per_image: int = 100):
        super().__init__(backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std)
        self.shift_generator = shift_generator
        self.num_classes = num_classes
        self.input_format = input_format
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image

    @staticmethod
    def common_config(cfg, backbone, head_in_features) -> Dict:
        """Constructor arguments shared by every anchor-free detector (from ``cfg``)."""
        from ..shift_generator import build_shift_generator

        shapes = backbone.output_shape()
        missing = [f for f in head_in_features if f not in shapes]
        if missing:
            raise ValueError(f"IN_FEATURES {missing} not produced by the backbone ({sorted(shapes)})")
        feature_shapes = [shapes[f] for f in head_in_features]
        return {
            "backbone": backbone,
            "head_in_features": list(head_in_features),
            "shift_generator": build_shift_generator(cfg, feature_shapes),
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
        }

    @property
    def strides(self) -> List[int]:
        return self.shift_generator.strides

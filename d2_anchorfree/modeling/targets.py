"""Training targets of a batch, built once from the assigners' output and shared by every loss
term: positives, their GT boxes as ltrb, the assigners' soft targets and the exact normalizers."""
from typing import List, NamedTuple, Optional

import torch
import torch.distributed as dist

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


def floored_positives_per_image(pos: torch.Tensor) -> torch.Tensor:
    """GFL's classification normalizer before the worker average: the sum over the batch's
    images of max(positives of the image, 1).

    Source: MMDetection 3.3.0 ``mmdet/models/dense_heads/gfl_head.py``: ``get_targets`` sums
    ``SamplingResult.avg_factor`` over the images (lines 536-537), which is
    ``max(pos_inds.numel(), 1)`` per image (``task_modules/samplers/sampling_result.py`` line 96;
    ``PseudoSampler`` sets ``avg_factor_with_neg=False``), and ``loss_by_feat`` averages it over
    workers (lines 374-375) and divides the QFL by it (the GFL authors' mmdet 2.x code:
    ``num_total_pos = sum(max(inds.numel(), 1) ...)``). An image without positives thus counts 1,
    unlike max(positives of the batch, 1).

    Args:
        pos: [N, R] bool, the positives of each image.

    Returns:
        Tensor: float32 scalar >= N (no gradient); pass it to :func:`loss_normalizer`.

    Raises:
        ValueError: ``pos`` not 2-D [N, R].
    """
    if pos.dim() != 2:
        raise ValueError(f"floored_positives_per_image: pos must be [N, R], got {tuple(pos.shape)}")
    return pos.sum(dim=1).clamp(min=1).sum().float()


def check_gt_instances(gt_instances: List[Instances], num_classes: int):
    """Reject ground truth that would silently train the wrong thing.

    Raises:
        ValueError: a class id outside [0, num_classes), a non-finite box coordinate, or a box
            with x1 <= x0 or y1 <= y0, naming the image index and the offending value.
    """
    for i, gt in enumerate(gt_instances):
        if len(gt) == 0:
            continue
        classes = gt.gt_classes
        bad = (classes < 0) | (classes >= num_classes)
        if bad.any():
            raise ValueError(
                f"image {i} of the batch has gt class {classes[bad][0].item()} outside "
                f"[0, {num_classes}); check MODEL.DENSE.NUM_CLASSES against the dataset"
            )
        boxes = gt.gt_boxes.tensor
        finite = torch.isfinite(boxes).all(dim=1)
        if not finite.all():
            raise ValueError(f"image {i} of the batch has a non-finite gt box {boxes[~finite][0].tolist()}")
        degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if degenerate.any():
            raise ValueError(
                f"image {i} of the batch has a degenerate gt box {boxes[degenerate][0].tolist()} "
                "(x1 <= x0 or y1 <= y0 after augmentation)"
            )


class PositiveTargets(NamedTuple):
    """Targets of a batch gathered from an assigner's ``matched`` indices (see
    :func:`gather_positive_targets`). P = number of positives over the batch, in the row-major
    order of ``pos`` (the order of ``x[pos]`` for any [N, R, ...] tensor ``x``).

    labels: [N, R] long, the GT class id of positives, K (= num_classes) for BACKGROUND and IGNORE.
    pos: [N, R] bool, matched >= 0. valid: [N, R] bool, matched >= -1 (False for IGNORE).
    pos_img, pos_point: [P] long, image and point index of each positive (``pos.nonzero()``).
    gt_boxes: [P, 4] float32 XYXY pixels, the matched GT box of each positive.
    gt_classes: [P] long, its class id.
    """

    labels: torch.Tensor
    pos: torch.Tensor
    valid: torch.Tensor
    pos_img: torch.Tensor
    pos_point: torch.Tensor
    gt_boxes: torch.Tensor
    gt_classes: torch.Tensor


def gather_positive_targets(gt_instances: List[Instances], matched: torch.Tensor,
                            num_classes: int) -> PositiveTargets:
    """Class labels and matched GT boxes of every positive location of a batch, in one gather.

    Args:
        gt_instances: N ``Instances`` with ``gt_boxes`` (XYXY pixels) and ``gt_classes`` [G_i] long.
        matched: [N, R] long, per image the GT index of each point, BACKGROUND (-1) or IGNORE (-2)
            (an assigner's output, see ``assigners.base``).
        num_classes: K, the label of non-positive locations.

    Returns:
        :class:`PositiveTargets` (shapes in its docstring).
    """
    pos = matched >= 0
    pos_img, pos_point = pos.nonzero(as_tuple=True)
    all_boxes = torch.cat([gt.gt_boxes.tensor for gt in gt_instances]).float()
    all_classes = torch.cat([gt.gt_classes for gt in gt_instances])
    offsets = torch.tensor([0] + [len(gt) for gt in gt_instances][:-1], device=matched.device).cumsum(0)
    gt_idx = matched[pos] + offsets[pos_img]  # index into the batch's concatenated GTs
    gt_classes = all_classes[gt_idx]
    labels = torch.full_like(matched, num_classes)
    labels[pos] = gt_classes
    return PositiveTargets(labels, pos, matched >= -1, pos_img, pos_point, all_boxes[gt_idx], gt_classes)


class DenseTargets(NamedTuple):
    """Everything the loss terms need about the targets of a batch (P positives).

    points: [R, 2] pixels; point_strides: [R] pixels.
    main: :class:`PositiveTargets` of the (one-to-one or one-to-many) assigner.
    gt_ltrb: [P, 4] pixels, (l, t, r, b) from each positive's point to its GT box.
    quality: [N, R] float soft targets of the assigner (``AssignResult.quality``), or ``None``.
    num_pos: max(positives averaged over workers, 1 / world) (:func:`loss_normalizer`).
    aux: :class:`PositiveTargets` of the auxiliary (one-to-many) assigner, or ``None``.
    """

    points: torch.Tensor
    point_strides: torch.Tensor
    main: PositiveTargets
    gt_ltrb: torch.Tensor
    quality: Optional[torch.Tensor]
    num_pos: float
    aux: Optional[PositiveTargets] = None

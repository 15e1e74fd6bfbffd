"""Plumbing shared by the anchor-free meta-architectures (on top of detectron2's DenseDetector)."""
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.distributed as dist

from detectron2.layers import ShapeSpec
from detectron2.modeling import build_backbone
from detectron2.modeling.meta_arch.dense_detector import DenseDetector, permute_to_N_HWA_K
from detectron2.structures import Instances
from detectron2.utils import comm

from ..postprocessing import dense_inference


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
    """[N, dim, H_i, W_i] per level -> [N, sum_i H_i W_i, dim] float32 (row-major per level).

    float32 whatever the head's dtype: under AMP (autocast) the head runs in fp16/bf16, and
    everything after it (assignment, box decoding, losses) is computed in float32.
    """
    return torch.cat([permute_to_N_HWA_K(x, dim).float() for x in per_level], dim=1)


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
                f"[0, {num_classes}); check MODEL.*.NUM_CLASSES against the dataset"
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
    """Targets of a batch gathered from the assigners' ``matched`` indices (see
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


def permute(x: torch.Tensor, dim: int) -> torch.Tensor:
    """[dim, H, W] (one image of one level) -> [H * W, dim] float32, row-major like
    :func:`flatten_levels` (inference decodes in float32 under autocast too)."""
    return x.reshape(dim, -1).t().float()


class AnchorFreeDetector(DenseDetector):
    """A detectron2 ``DenseDetector`` with a shift generator and dense inference.

    ``DenseDetector.forward`` handles preprocessing (normalize, pad to ``size_divisibility``),
    runs backbone and head, then calls ``forward_training`` (training) or
    :meth:`forward_inference` and rescales the outputs to the requested size. Subclasses
    implement ``forward_training(images, features, predictions, gt_instances)`` and
    :meth:`per_image_scores_and_ltrb`; the shared inference loop is :meth:`forward_inference`.
    """

    def __init__(self, *, backbone, head, head_in_features, shift_generator, num_classes: int,
                 pixel_mean, pixel_std, input_format: str = "BGR", test_score_thresh: float = 0.05,
                 test_topk_candidates: int = 1000, test_nms_thresh: float = 0.6,
                 max_detections_per_image: int = 100):
        """
        Args:
            backbone: a detectron2 ``Backbone`` (e.g. ResNet-FPN with P6/P7).
            head: module mapping the ``head_in_features`` maps to per-level predictions.
            head_in_features: backbone feature names fed to the head, finest first.
            shift_generator: module mapping those features to per-level points (pixels), see
                ``shift_generator.ShiftGenerator``.
            num_classes: K >= 1.
            pixel_mean, pixel_std: per-channel normalization of the input image (``input_format``
                channel order, 0-255 scale).
            input_format: "BGR" or "RGB" (``INPUT.FORMAT``).
            test_score_thresh: in [0, 1); a (point, class) pair is a detection candidate when its
                *candidate score* is strictly above it. The candidate score is the ranking score
                by default; a subclass may gate on another score (FCOS: the class probability,
                ranking by (p * centerness) ** SCORE_EXPONENT; see :meth:`per_image_scores_and_ltrb`).
                ``MODEL.FCOS.SCORE_THRESH_TEST``.
            test_topk_candidates: >= 1, candidates kept per level before NMS
                (``MODEL.FCOS.TOPK_CANDIDATES_TEST``).
            test_nms_thresh: in (0, 1], class-aware NMS IoU threshold
                (``MODEL.FCOS.NMS_THRESH_TEST``).
            max_detections_per_image: >= 1 (``TEST.DETECTIONS_PER_IMAGE``).

        Raises:
            ValueError: a test-time setting outside its range, naming the config key.
        """
        super().__init__(backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std)
        if test_topk_candidates < 1:
            raise ValueError(f"MODEL.FCOS.TOPK_CANDIDATES_TEST must be >= 1, got {test_topk_candidates}")
        if not 0.0 <= test_score_thresh < 1.0:
            raise ValueError(f"MODEL.FCOS.SCORE_THRESH_TEST must be in [0, 1), got {test_score_thresh}")
        if not 0.0 < test_nms_thresh <= 1.0:
            raise ValueError(f"MODEL.FCOS.NMS_THRESH_TEST must be in (0, 1], got {test_nms_thresh}")
        if max_detections_per_image < 1:
            raise ValueError(f"TEST.DETECTIONS_PER_IMAGE must be >= 1, got {max_detections_per_image}")
        self.shift_generator = shift_generator
        self.num_classes = num_classes
        self.input_format = input_format
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image

    @staticmethod
    def common_config(cfg) -> Tuple[Dict, List[ShapeSpec], List[int]]:
        """Constructor arguments shared by every anchor-free detector, from ``cfg``.

        Builds the backbone (``MODEL.BACKBONE.NAME``) and the shift generator for the levels
        ``MODEL.FCOS.IN_FEATURES``.

        Returns:
            (args, shapes, strides): ``args`` holds backbone, head_in_features, shift_generator,
            num_classes (``MODEL.FCOS.NUM_CLASSES``), pixel_mean/std, input_format, the test
            settings ``MODEL.FCOS.SCORE_THRESH_TEST / TOPK_CANDIDATES_TEST / NMS_THRESH_TEST``
            and ``TEST.DETECTIONS_PER_IMAGE``; ``shapes`` the per-level ``ShapeSpec`` of the head's
            inputs (to build the head); ``strides`` their strides in pixels (to build assigners).

        Raises:
            ValueError: a feature of ``MODEL.FCOS.IN_FEATURES`` that the backbone does not produce.
        """
        from ..shift_generator import build_shift_generator

        c = cfg.MODEL.FCOS
        backbone = build_backbone(cfg)
        head_in_features = list(c.IN_FEATURES)
        output_shapes = backbone.output_shape()
        missing = [f for f in head_in_features if f not in output_shapes]
        if missing:
            raise ValueError(f"IN_FEATURES {missing} not produced by the backbone ({sorted(output_shapes)})")
        shapes = [output_shapes[f] for f in head_in_features]
        args = {
            "backbone": backbone,
            "head_in_features": head_in_features,
            "shift_generator": build_shift_generator(cfg, shapes),
            "num_classes": c.NUM_CLASSES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "test_score_thresh": c.SCORE_THRESH_TEST,
            "test_topk_candidates": c.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": c.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
        }
        return args, shapes, [s.stride for s in shapes]

    @staticmethod
    def assign_batch(assigner, shifts: List[torch.Tensor], gt_instances: List[Instances],
                     pred_logits: Optional[torch.Tensor] = None,
                     pred_boxes: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Run ``assigner`` on every image of the batch.

        Args:
            assigner: an assigner (see ``assigners.base``). shifts: per level [R_i, 2] pixels.
            gt_instances: N ``Instances``.
            pred_logits: optional [N, R, K] class logits, pred_boxes: optional [N, R, 4] XYXY
                pixels; detached here and passed per image to prediction-aware assigners (POTO).

        Returns:
            Tensor [N, R] long: GT index, BACKGROUND (-1) or IGNORE (-2) per point.
        """
        if pred_logits is None:
            return torch.stack([assigner(shifts, gt) for gt in gt_instances])
        pred_logits, pred_boxes = pred_logits.detach(), pred_boxes.detach()
        return torch.stack([
            assigner(shifts, gt, pred_logits=pred_logits[i], pred_boxes=pred_boxes[i])
            for i, gt in enumerate(gt_instances)
        ])

    @property
    def strides(self) -> List[int]:
        """Stride in pixels of each level the head sees, finest first (e.g. [8, 16, 32, 64, 128])."""
        return self.shift_generator.strides

    def forward_training(self, images, features: List[torch.Tensor], predictions,
                         gt_instances: List[Instances]) -> Dict[str, torch.Tensor]:
        """Assign targets per image and compute the losses (implemented by each detector).

        Args:
            images: ``ImageList`` of the N preprocessed images (unused; kept for detectron2's API).
            features: per level l [N, C, H_l, W_l] (only sizes and device are used, for the points).
            predictions: the head's output (lists over levels, see each detector).
            gt_instances: N ``Instances`` with ``gt_boxes`` (XYXY pixels of the network input),
                ``gt_classes`` [G_i] long in [0, K), optionally ``gt_is_crowd`` [G_i] bool.

        Returns:
            dict of named scalar losses, already normalized and weighted (summed by the trainer).

        Raises:
            ValueError: a GT class outside [0, K) or a non-finite / degenerate GT box
                (:func:`check_gt_instances`), or an assigner error.
        """
        raise NotImplementedError

    @property
    def inference_nms_thresh(self) -> Optional[float]:
        """Class-aware NMS IoU threshold of :meth:`forward_inference`; ``None``: NMS-free."""
        return self.test_nms_thresh

    def per_image_scores_and_ltrb(self, predictions, i: int) -> Tuple[
            List[torch.Tensor], List[torch.Tensor], Optional[List[torch.Tensor]]]:
        """Decode image ``i`` of the head's ``predictions`` for :meth:`forward_inference`.

        Args:
            predictions: the head's output for the batch (lists over levels of [N, C, H_l, W_l]).
            i: image index in the batch.

        Returns:
            (scores, ltrb, candidate_scores): per level l, ``scores`` [R_l, K] ranking scores in
            [0, 1], ``ltrb`` [R_l, 4] distances (l, t, r, b) in pixels from the level's points,
            and ``candidate_scores`` per level [R_l, K] scores that ``test_score_thresh``
            applies to, or ``None`` to threshold ``scores`` (see
            ``postprocessing.dense_inference``). R_l = H_l * W_l, row-major.
        """
        raise NotImplementedError

    def forward_inference(self, images, features: List[torch.Tensor], predictions) -> List[Instances]:
        """Dense inference, per image: :meth:`per_image_scores_and_ltrb`, then per level the
        candidates above ``test_score_thresh`` (at most ``test_topk_candidates``), decoding, and
        class-aware NMS at :attr:`inference_nms_thresh` (NMS-free when ``None``), keeping
        ``max_detections_per_image`` (``postprocessing.dense_inference``).

        Args:
            images: ``ImageList`` of the N preprocessed (padded) images.
            features: per level [N, C, H_l, W_l] (only sizes and device are used).
            predictions: the head's output.

        Returns:
            N ``Instances`` of the network input size (``images.image_sizes``): ``pred_boxes``
            (XYXY pixels of the network input, clipped), ``scores`` [D] in [0, 1],
            ``pred_classes`` [D] long; D <= max_detections_per_image, sorted by score.
            ``DenseDetector.forward`` rescales them to the requested output size.
        """
        shifts = self.shift_generator(features)
        results = []
        for i, image_size in enumerate(images.image_sizes):
            scores, ltrb, candidate_scores = self.per_image_scores_and_ltrb(predictions, i)
            results.append(dense_inference(
                scores, ltrb, shifts, image_size, self.test_score_thresh, self.test_topk_candidates,
                self.inference_nms_thresh, self.max_detections_per_image,
                candidate_scores=candidate_scores))
        return results

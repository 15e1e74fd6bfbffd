"""The one dense anchor-free detector: backbone + head + criterion (assigners, training phases,
loss terms; ``criterion.py``) + post-processing, each chosen by name in the config.

Training step (``forward_training``)::

    features P3..P7 -> Points (shift generator, per level [H_l W_l, 2] px, concatenated, strides)
    -> head -> DenseOutputs (logits [N, R, K], ltrb [N, R, 4] px, extras, ClassScores)
    -> criterion(out, points, gt) -> named losses (see ``criterion.DenseCriterion``)

Inference (``forward_inference``): the head's scoring rule, per level the candidates above the
score threshold (top-k per level), decoding, then class-aware NMS or NMS-free top-k
(``postprocessing.dense_detections``).
"""
from typing import Dict, List, Optional, Tuple

import torch

from detectron2.config import configurable
from detectron2.modeling import build_backbone
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Instances

from .components import apply_preset, check_unused_keys, recording_view
from .criterion import DenseCriterion, DualCriterion
from .geometry import Points
from .heads import build_dual_head, build_head
from .heads.dual_head import ONE_TO_ONE
from .layout import to_channels_last
from .postprocessing import TOPK_BY, check_peak_args, dense_detections, detections_to_instances, peak_factors
from .shift_generator import build_shift_generator


class AnchorFreeDetector(DenseDetector):
    """A dense anchor-free detector composed of registered parts.

    ``DenseDetector.forward`` handles preprocessing (normalize, pad to ``size_divisibility``),
    runs backbone and head, then calls :meth:`forward_training` or :meth:`forward_inference` and
    rescales the outputs to the requested size. The named detectors (FCOS, ATSS, GFL, VFNet,
    DeFCN, TOOD) are presets: subclasses in ``presets.py`` that only choose components.
    """

    #: the preset: config key -> value, set where the config leaves the key at its default (see
    #: ``presets.py`` and ``components.apply_preset``); None for the bare detector
    PRESET: Optional[Dict[str, object]] = None

    @configurable
    def __init__(self, *, backbone, head, head_in_features, shift_generator, criterion: DenseCriterion,
                 num_classes: int, pixel_mean, pixel_std, input_format: str = "BGR",
                 test_score_thresh: float = 0.05, test_topk_candidates: int = 1000,
                 test_nms_thresh: Optional[float] = 0.6, max_detections_per_image: int = 100,
                 test_topk_by: str = "score", test_topk_within_points: bool = False,
                 test_score_voting_sigma: Optional[float] = None,
                 test_peak_kernel: Optional[int] = None, test_non_peak_factor: float = 0.3,
                 channels_last: bool = False):
        """
        Args:
            backbone: a detectron2 ``Backbone`` (e.g. ResNet-FPN with P6/P7).
            head: a :class:`~d2_anchorfree.modeling.heads.DenseHead`, or a
                :class:`~d2_anchorfree.modeling.heads.DualAssignmentHead` (``MODEL.DUAL``).
            head_in_features: backbone feature names fed to the head, finest first.
            shift_generator: module mapping those features to per-level points (pixels).
            criterion: the training criterion (:class:`~.criterion.DenseCriterion`: assigners,
                training phases, loss terms; :class:`~.criterion.DualCriterion` for a dual head).
            num_classes: K >= 1.
            pixel_mean, pixel_std: per-channel normalization (``input_format`` order, 0-255).
            input_format: "BGR" or "RGB" (``INPUT.FORMAT``).
            test_score_thresh: in [0, 1), candidate score threshold (``MODEL.DENSE.SCORE_THRESH_TEST``;
                the head's scoring rule says which score it applies to).
            test_topk_candidates: >= 1, candidates kept per level (``MODEL.DENSE.TOPK_CANDIDATES_TEST``).
            test_nms_thresh: in (0, 1], class-aware NMS IoU threshold, or None for NMS-free
                inference (``MODEL.DENSE.NMS_THRESH_TEST`` / ``POSTPROCESS``).
            max_detections_per_image: >= 1 (``TEST.DETECTIONS_PER_IMAGE``).
            test_topk_by: "score" or "candidate", which score picks the candidates of a level
                (``MODEL.DENSE.TOPK_CANDIDATES_BY``, see ``postprocessing.select_candidates``).
            test_topk_within_points: a level keeps at most min(test_topk_candidates, its number of
                points) candidates (``MODEL.DENSE.TOPK_CANDIDATES_WITHIN_POINTS``; DeFCN's code).
            test_score_voting_sigma: > 0, score voting of the boxes kept by NMS with this sigma
                (``MODEL.DENSE.SCORE_VOTING_SIGMA``, PAA; see ``postprocessing.score_voting``),
                or None (off; the key's 0.0). Needs ``test_nms_thresh``.
            test_peak_kernel: odd >= 3: NMS-free inference by score peaks (``MODEL.DENSE.POSTPROCESS``
                "peaks", ``PEAK_KERNEL``; ``postprocessing.peak_factors``) before the top-k; None: off.
                Needs ``test_nms_thresh`` None.
            test_non_peak_factor: in [0, 1), what a non-peak's score is multiplied by
                (``MODEL.DENSE.NON_PEAK_SCORE_FACTOR``); used with ``test_peak_kernel``.
            channels_last: store every 4-D weight channels-last (``MODEL.CHANNELS_LAST``): the
                convolutions then compute in NHWC, which oneDNN runs faster on CPUs (training and
                eager inference; see docs/results.md "Channels-last training"). Outputs equal the
                default layout's within float rounding. Loading weights, ``.to(device)`` and the
                EMA copy keep the layout.

        The test-time settings are the detector's attributes under detectron2's names
        (``RetinaNet`` / ``FCOS``: ``test_score_thresh``, ``test_nms_thresh``, ...), read by
        :meth:`detect_image` at every call.

        Raises:
            ValueError: a test-time setting outside its range, naming the config key; score
                voting with NMS-free inference (``test_nms_thresh`` None); score peaks with NMS;
                ``channels_last`` not a bool.
        """
        super().__init__(backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std)
        if test_topk_candidates < 1:
            raise ValueError(f"MODEL.DENSE.TOPK_CANDIDATES_TEST must be >= 1, got {test_topk_candidates}")
        if not 0.0 <= test_score_thresh < 1.0:
            raise ValueError(f"MODEL.DENSE.SCORE_THRESH_TEST must be in [0, 1), got {test_score_thresh}")
        if test_nms_thresh is not None and not 0.0 < test_nms_thresh <= 1.0:
            raise ValueError(f"MODEL.DENSE.NMS_THRESH_TEST must be in (0, 1], got {test_nms_thresh}")
        if max_detections_per_image < 1:
            raise ValueError(f"TEST.DETECTIONS_PER_IMAGE must be >= 1, got {max_detections_per_image}")
        if test_topk_by not in TOPK_BY:
            raise ValueError(f"MODEL.DENSE.TOPK_CANDIDATES_BY must be one of {TOPK_BY}, got {test_topk_by!r}")
        if test_score_voting_sigma is not None:
            if not test_score_voting_sigma > 0:
                raise ValueError(f"MODEL.DENSE.SCORE_VOTING_SIGMA must be > 0 (0.0: off), got {test_score_voting_sigma}")
            if test_nms_thresh is None:
                raise ValueError(f"MODEL.DENSE.SCORE_VOTING_SIGMA {test_score_voting_sigma}: score voting averages "
                                 "the boxes that NMS suppressed, it needs MODEL.DENSE.POSTPROCESS 'nms', got NMS-free "
                                 "inference ('topk' or 'peaks'); set it to 0.0")
        if test_peak_kernel is not None:
            check_peak_args(test_peak_kernel, test_non_peak_factor)
            if test_nms_thresh is not None:
                raise ValueError(f"NMS-free score peaks (MODEL.DENSE.POSTPROCESS 'peaks') with NMS at "
                                 f"{test_nms_thresh}: pass test_nms_thresh None")
        self.shift_generator = shift_generator
        self.criterion = criterion
        self.num_classes = num_classes
        self.input_format = input_format
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.test_topk_by = test_topk_by
        self.test_topk_within_points = test_topk_within_points
        self.test_score_voting_sigma = test_score_voting_sigma
        self.test_peak_kernel = test_peak_kernel
        self.test_non_peak_factor = test_non_peak_factor
        to_channels_last(self, channels_last)

    @classmethod
    def from_config(cls, cfg):
        """Build every component named (or left to the preset) in ``cfg``: the preset fills a
        copy of ``cfg`` (``components.apply_preset``), the components are built from a view of
        it that records the keys they read, and a key the config sets that none read is an error.

        Raises:
            ValueError: a feature of ``MODEL.DENSE.IN_FEATURES`` that the backbone does not
                produce, a missing component choice, a composition that
                ``criterion.check_composition`` rejects, NMS-free post-processing
                (``POSTPROCESS`` "topk") of a branch not trained one-to-one, a dual head whose
                one-to-one assigner is not one-to-one, or a key that no component of the
                detector reads (``components.check_unused_keys``).
            KeyError: a component name that is not registered.
        """
        resolved = apply_preset(cfg, cls.PRESET, cfg.MODEL.META_ARCHITECTURE)
        view, reads = recording_view(resolved)
        backbone = build_backbone(view)
        d = view.MODEL.DENSE
        head_in_features = list(d.IN_FEATURES)
        output_shapes = backbone.output_shape()
        missing = [f for f in head_in_features if f not in output_shapes]
        if missing:
            raise ValueError(f"MODEL.DENSE.IN_FEATURES {missing} not produced by the backbone ({sorted(output_shapes)})")
        shapes = [output_shapes[f] for f in head_in_features]
        strides = [s.stride for s in shapes]
        if view.MODEL.DUAL.ENABLED:
            head = build_dual_head(view, shapes, d.HEAD)
            criterion = DualCriterion(view, head, strides)
            one_to_one = head.inference_branch == ONE_TO_ONE
        else:
            head = build_head(view, shapes, d.HEAD, aux_classifier=d.AUX_ASSIGNER != "none")
            criterion = DenseCriterion(view, head, strides)
            one_to_one = bool(getattr(criterion.assigner, "one_to_one", False))
        peaks = d.POSTPROCESS == "peaks"
        if d.POSTPROCESS == "topk" and not one_to_one:
            raise ValueError(
                "MODEL.DENSE.POSTPROCESS 'topk' (NMS-free) needs a branch trained one-to-one: a one-to-one "
                f"MODEL.DENSE.ASSIGNER (POTOAssigner), or MODEL.DUAL.ENABLED with INFERENCE_BRANCH "
                f"'one_to_one'; this detector's inference branch is trained by "
                f"{type(criterion.phase.assigner).__name__} (one-to-many): use 'nms', or 'peaks' "
                "(NMS-free by score peaks)")
        settings = {
            "head_in_features": head_in_features,
            "shift_generator": build_shift_generator(view, shapes),
            "num_classes": d.NUM_CLASSES,
            "test_score_thresh": d.SCORE_THRESH_TEST,
            "test_topk_candidates": d.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": d.NMS_THRESH_TEST if d.POSTPROCESS == "nms" else None,
            "test_topk_by": d.TOPK_CANDIDATES_BY,
            "test_topk_within_points": d.TOPK_CANDIDATES_WITHIN_POINTS,
            "test_score_voting_sigma": d.SCORE_VOTING_SIGMA if d.SCORE_VOTING_SIGMA != 0 else None,
        }
        if peaks:  # read only here: set without "peaks", they are unused keys (an error below)
            settings["test_peak_kernel"] = d.PEAK_KERNEL
            settings["test_non_peak_factor"] = d.NON_PEAK_SCORE_FACTOR
        check_unused_keys(cfg, reads, [head, *criterion.components])
        return {
            "backbone": backbone,
            "head": head,
            "criterion": criterion,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "channels_last": cfg.MODEL.CHANNELS_LAST,
            **settings,
        }

    @property
    def strides(self) -> List[int]:
        """Stride in pixels of each level the head sees, finest first (e.g. [8, 16, 32, 64, 128])."""
        return self.shift_generator.strides

    def points(self, features: List[torch.Tensor]) -> Points:
        """The points of ``features`` (per level [N, C, H_l, W_l]; only sizes and device are
        used): per level and concatenated, with their strides (``geometry.Points``)."""
        return Points.from_levels(self.shift_generator(features), self.strides)

    def forward_training(self, images, features: List[torch.Tensor], predictions,
                         gt_instances: List[Instances]) -> Dict[str, torch.Tensor]:
        """The head's outputs flattened and scored, then the criterion's losses.

        Args:
            images: ``ImageList`` of the N preprocessed images (unused; kept for detectron2's API).
            features: per level l [N, C, H_l, W_l] (only sizes and device are used, for the points).
            predictions: the head's per-level output (``DenseHead.forward``).
            gt_instances: N ``Instances`` with ``gt_boxes`` (XYXY pixels of the network input),
                ``gt_classes`` [G_i] long in [0, K), optionally ``gt_is_crowd`` [G_i] bool.

        Returns:
            dict of named scalar losses, already normalized and weighted (summed by the trainer).

        Raises:
            ValueError: see :meth:`DenseCriterion.__call__`.
        """
        points = self.points(features)
        return self.criterion(self.head.training_outputs(predictions, points.point_strides), points, gt_instances)

    def forward_inference(self, images, features: List[torch.Tensor], predictions) -> List[Instances]:
        """Dense inference, per image: the head's scoring rule (``inference_scores``), then per
        level the candidates above ``test_score_thresh`` (at most ``test_topk_candidates``),
        decoding, and class-aware NMS at ``test_nms_thresh`` (NMS-free top-k when None, after the
        score-peak rule with ``test_peak_kernel``), keeping ``max_detections_per_image``
        (``postprocessing.dense_detections``).

        Args:
            images: ``ImageList`` of the N preprocessed (padded) images.
            features: per level [N, C, H_l, W_l] (only sizes and device are used).
            predictions: the head's per-level output.

        Returns:
            N ``Instances`` of the network input size (``images.image_sizes``): ``pred_boxes``
            (XYXY pixels of the network input, clipped), ``scores`` [D] in [0, 1],
            ``pred_classes`` [D] long; D <= max_detections_per_image, sorted by score.
            ``DenseDetector.forward`` rescales them to the requested output size.
        """
        shifts = self.shift_generator(features)
        return [detections_to_instances(image_size, *self.detect_image(predictions, i, shifts, image_size))
                for i, image_size in enumerate(images.image_sizes)]

    def detect_image(self, predictions, image: int, shifts: List[torch.Tensor],
                     image_size: Tuple) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Detections of one image of the batch as plain tensors: the head's scoring rule per
        level, with ``test_peak_kernel`` the scores of points in the padding set to 0 and the
        non-peaks' scores (and the score the threshold applies to, if the head's is another)
        multiplied by ``test_non_peak_factor`` (``postprocessing.peak_factors``),
        then ``postprocessing.dense_detections``. No data-dependent Python branch, so
        the traced export (``d2_anchorfree.export``) runs this very code.

        Args:
            predictions: the head's per-level output for the batch.
            image: index of the image in the batch.
            shifts: per level [R_l, 2] points in pixels (``shift_generator(features)``).
            image_size: (height, width) of the image before padding, in pixels: ints eagerly,
                0-dim tensors (``ImageList.image_sizes`` of a traced input) while tracing.

        Returns:
            (boxes [D, 4] XYXY pixels of the network input, clipped unless the head's
            ``clip_boxes_before_nms`` is False (TOOD: detectron2's ``detector_postprocess``
            clips them after rescaling); scores [D] in [0, 1];
            classes [D] long), D <= max_detections_per_image, sorted by score.

        Raises:
            FloatingPointError: a NaN or infinite score or distance (eager only).
        """
        # The scoring rule runs per image and level on [R_l, ...] views of the head's maps:
        # element-wise kernels then see the same tensor sizes and layout whatever the batch
        # (vectorized loops and their scalar tails round sigmoid / pow differently in the last
        # bit), so a detection does not depend on the other images of its batch.
        scores, ltrb, gates = [], [], []
        for l, (points, stride) in enumerate(zip(shifts, self.strides)):
            point_strides = torch.full_like(points[:, 0], float(stride))
            level = self.head.level_outputs(predictions, image, l, point_strides)
            level_scores, level_gates = self.head.inference_scores(level)
            scores.append(level_scores)
            ltrb.append(level.ltrb)
            gates.append(level_gates)
        if self.test_peak_kernel is not None:
            # Points in the padding (beyond the image, to the bottom and right) score 0 first: no
            # padded point can be a peak or demote one, whatever the padding of the batch.
            height, width = image_size
            inside = [((points[:, 0] < width) & (points[:, 1] < height)).to(s.dtype)[:, None]
                      for points, s in zip(shifts, scores)]
            # the levels' grids: the "logits" [N, K, H_l, W_l] every head outputs (level_outputs
            # flattens those same maps row-major into the scores)
            level_shapes = [logits.shape[-2:] for logits in predictions["logits"]]
            scores = [s * m for s, m in zip(scores, inside)]
            factors = peak_factors(scores, level_shapes, self.test_peak_kernel, self.test_non_peak_factor)
            scores = [s * f for s, f in zip(scores, factors)]
            if gates[0] is not None:  # the score the threshold applies to: lowered alike
                gates = [g * m * f for g, m, f in zip(gates, inside, factors)]
        boxes, scores, classes = dense_detections(
            scores, ltrb, shifts, image_size, self.test_score_thresh, self.test_topk_candidates,
            self.test_nms_thresh, self.max_detections_per_image,
            candidate_scores=None if gates[0] is None else gates, topk_by=self.test_topk_by,
            clip_boxes=self.head.clip_boxes_before_nms, topk_within_points=self.test_topk_within_points,
            voting_sigma=self.test_score_voting_sigma)
        return boxes, scores, classes

"""The one dense anchor-free detector: backbone + head + assigner (+ auxiliary / initial
assigner) + loss terms + post-processing, each chosen by name in the config.

Training step (``forward_training``)::

    features P3..P7 -> points (shift generator, per level [H_l W_l, 2] px)
    -> head -> DenseOutputs (logits [N, R, K], ltrb [N, R, 4] px, extras)
    -> assigner(points, gt, detached scores and boxes) per image -> matched [R] (+ soft targets)
    -> DenseTargets (positives, GT ltrb, worker-averaged normalizers)
    -> sum of loss terms, each normalized and weighted

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
from detectron2.utils.events import get_event_storage

from .assigners import build_assigner
from .geometry import boxes_to_ltrb, cat_points, ltrb_to_boxes
from .heads import DenseOutputs, build_head
from .losses.terms import AuxFocalLoss, build_loss_term
from .postprocessing import TOPK_BY, dense_detections, detections_to_instances
from .components import check_unused_keys, resolve_components
from .shift_generator import build_shift_generator
from .targets import DenseTargets, check_gt_instances, gather_positive_targets, loss_normalizer


def put_scalar(name: str, value: float):
    """Log to the current detectron2 EventStorage, if any (training outside a trainer has none)."""
    try:
        storage = get_event_storage()
    except AssertionError:
        return
    storage.put_scalar(name, value)


def current_iteration() -> int:
    """The trainer's iteration (detectron2 EventStorage), 0 outside a trainer."""
    try:
        return get_event_storage().iter
    except AssertionError:
        return 0


def check_composition(head, assigner, aux_assigner=None, initial_assigner=None, loss_terms=(),
                      initial_loss_terms=None) -> None:
    """Reject compositions that would train the wrong thing silently.

    Raises:
        ValueError: the head's auxiliary classifier without an auxiliary assigner (or the
            reverse); a loss term the head cannot feed (``LossTerm.check_head``); a term needing
            soft targets (``NEEDS_QUALITY``) with an assigner of its phase that gives none; two
            terms of a phase with the same output name (one would overwrite the other); a phase
            without a classification ("loss_cls") or a box ("loss_box") term. Each message names
            the config key to change.
    """
    has_aux_branch = getattr(head, "aux_logits", None) is not None
    if has_aux_branch != (aux_assigner is not None):
        raise ValueError(
            f"the head's auxiliary classifier (present: {has_aux_branch}) and the auxiliary "
            f"assigner (present: {aux_assigner is not None}) must come together (MODEL.DENSE.AUX_ASSIGNER)")
    phases = [("MODEL.DENSE.LOSSES", loss_terms, assigner)]
    if initial_assigner is not None:
        phases.append(("MODEL.DENSE.INITIAL_LOSSES", initial_loss_terms or loss_terms, initial_assigner))
    for key, terms, phase_assigner in phases:
        outputs = []
        for term in terms:
            term.check_head(head)
            if term.NEEDS_QUALITY and not getattr(phase_assigner, "PROVIDES_QUALITY", False):
                raise ValueError(
                    f"loss term {type(term).__name__} of {key} needs the assigner's soft targets "
                    f"(MODEL.QFL.TARGET 'assigner' or MODEL.BOX_LOSS.WEIGHTING 'quality'), which "
                    f"{type(phase_assigner).__name__} does not give")
            outputs.extend(term.OUTPUTS)
        repeated = sorted({o for o in outputs if outputs.count(o) > 1})
        if repeated:
            raise ValueError(f"{key} has several terms producing {repeated}: "
                             f"{[type(t).__name__ for t in terms]}; keep one of each")
        missing = [o for o in ("loss_cls", "loss_box") if o not in outputs]
        if missing:
            raise ValueError(f"{key} {[type(t).__name__ for t in terms]} has no term producing {missing}: "
                             "a detector needs a classification and a box loss")


class AnchorFreeDetector(DenseDetector):
    """A dense anchor-free detector composed of registered parts.

    ``DenseDetector.forward`` handles preprocessing (normalize, pad to ``size_divisibility``),
    runs backbone and head, then calls :meth:`forward_training` or :meth:`forward_inference` and
    rescales the outputs to the requested size. The named detectors (FCOS, ATSS, GFL, VFNet,
    DeFCN, TOOD) are presets: subclasses in ``presets.py`` that only choose components.
    """

    #: the preset's component choices, filling the unset ``MODEL.DENSE`` choices (see
    #: ``presets.py``); None for the bare detector, which needs every choice in the config
    PRESET: Optional[Dict[str, object]] = None

    @configurable
    def __init__(self, *, backbone, head, head_in_features, shift_generator, assigner, loss_terms,
                 num_classes: int, pixel_mean, pixel_std, input_format: str = "BGR",
                 aux_assigner=None, initial_assigner=None, initial_assigner_iters: int = 0,
                 initial_loss_terms=None,
                 test_score_thresh: float = 0.05, test_topk_candidates: int = 1000,
                 test_nms_thresh: Optional[float] = 0.6, max_detections_per_image: int = 100,
                 test_topk_by: str = "score", test_topk_within_points: bool = False):
        """
        Args:
            backbone: a detectron2 ``Backbone`` (e.g. ResNet-FPN with P6/P7).
            head: a :class:`~d2_anchorfree.modeling.heads.DenseHead`.
            head_in_features: backbone feature names fed to the head, finest first.
            shift_generator: module mapping those features to per-level points (pixels).
            assigner: callable(shifts, gt, pred_scores=, pred_boxes=) -> ``AssignResult``.
            loss_terms: list of loss terms (``losses/terms.py``), called in order.
            num_classes: K >= 1.
            pixel_mean, pixel_std: per-channel normalization (``input_format`` order, 0-255).
            input_format: "BGR" or "RGB" (``INPUT.FORMAT``).
            aux_assigner: one-to-many assigner of the head's auxiliary classifier, or None.
            initial_assigner, initial_assigner_iters: assigner of the first iterations (TOOD's
                ATSS warm-up), or None. The iteration is detectron2's (``EventStorage.iter``, set
                by the trainer before every step, so resuming keeps the phase); 0 outside a trainer.
            initial_loss_terms: the loss terms of those iterations, or None: ``loss_terms``.
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

        Raises:
            ValueError: a test-time setting outside its range, or a composition that
                :func:`check_composition` rejects; naming the config key.
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
        check_composition(head, assigner, aux_assigner, initial_assigner, loss_terms, initial_loss_terms)
        self.shift_generator = shift_generator
        self.assigner = assigner
        self.aux_assigner = aux_assigner
        self.initial_assigner = initial_assigner
        self.initial_assigner_iters = int(initial_assigner_iters)
        self.loss_terms = list(loss_terms)
        self.initial_loss_terms = list(initial_loss_terms) if initial_loss_terms else self.loss_terms
        self.num_classes = num_classes
        self.input_format = input_format
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.test_topk_by = test_topk_by
        self.test_topk_within_points = test_topk_within_points

    @classmethod
    def from_config(cls, cfg):
        """Build every component named (or left to the preset) in ``cfg``.

        Raises:
            ValueError: a feature of ``MODEL.DENSE.IN_FEATURES`` that the backbone does not
                produce, a missing component choice, a composition that :func:`check_composition`
                rejects, or a key that no component of the detector reads
                (``components.check_unused_keys``).
            KeyError: a component name that is not registered.
        """
        parts = resolve_components(cfg, cls.PRESET, cfg.MODEL.META_ARCHITECTURE)
        d = cfg.MODEL.DENSE
        backbone = build_backbone(cfg)
        head_in_features = list(d.IN_FEATURES)
        output_shapes = backbone.output_shape()
        missing = [f for f in head_in_features if f not in output_shapes]
        if missing:
            raise ValueError(f"MODEL.DENSE.IN_FEATURES {missing} not produced by the backbone ({sorted(output_shapes)})")
        shapes = [output_shapes[f] for f in head_in_features]
        strides = [s.stride for s in shapes]
        head = build_head(cfg, shapes, parts.head, aux_classifier=parts.aux_assigner is not None)
        assigner = build_assigner(parts.assigner, cfg, strides)
        aux_assigner = build_assigner(parts.aux_assigner, cfg, strides) if parts.aux_assigner else None
        initial = build_assigner(parts.initial_assigner, cfg, strides) if parts.initial_assigner else None
        terms = [build_loss_term(cfg, name, parts) for name in parts.losses]
        initial_terms = None
        if initial is not None and parts.initial_losses is not None:
            initial_terms = [build_loss_term(cfg, name, parts, initial=True) for name in parts.initial_losses]
        if aux_assigner is not None:
            terms.append(AuxFocalLoss(cfg))
            if initial_terms is not None:
                initial_terms.append(AuxFocalLoss(cfg))
        check_composition(head, assigner, aux_assigner, initial, terms, initial_terms)
        check_unused_keys(cfg, [head, assigner, aux_assigner, initial, *terms, *(initial_terms or [])],
                          parts.postprocess)
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": head_in_features,
            "shift_generator": build_shift_generator(cfg, shapes),
            "assigner": assigner,
            "aux_assigner": aux_assigner,
            "initial_assigner": initial,
            "initial_assigner_iters": d.INITIAL_ASSIGNER_ITERS,
            "loss_terms": terms,
            "initial_loss_terms": initial_terms,
            "num_classes": d.NUM_CLASSES,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
            "test_score_thresh": d.SCORE_THRESH_TEST,
            "test_topk_candidates": d.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": None if parts.postprocess == "topk" else d.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "test_topk_by": d.TOPK_CANDIDATES_BY,
            "test_topk_within_points": d.TOPK_CANDIDATES_WITHIN_POINTS,
        }

    @property
    def strides(self) -> List[int]:
        """Stride in pixels of each level the head sees, finest first (e.g. [8, 16, 32, 64, 128])."""
        return self.shift_generator.strides

    def assign(self, assigner, shifts: List[torch.Tensor], gt_instances: List[Instances],
               pred_scores: torch.Tensor, pred_boxes: torch.Tensor):
        """Run ``assigner`` on every image of the batch.

        Args:
            shifts: per level [R_l, 2] pixels. gt_instances: N ``Instances``.
            pred_scores: [N, R, K] detached class probabilities. pred_boxes: [N, R, 4] detached
                XYXY pixels (prediction-unaware assigners ignore both).

        Returns:
            (matched [N, R] long: GT index, BACKGROUND (-1) or IGNORE (-2); quality [N, R] float
            soft targets, or None when the assigner gives none).
        """
        results = [assigner(shifts, gt, pred_scores=pred_scores[i], pred_boxes=pred_boxes[i])
                   for i, gt in enumerate(gt_instances)]
        matched = torch.stack([r.matched for r in results])
        if results and results[0].quality is not None:
            return matched, torch.stack([r.quality for r in results])
        return matched, None

    @property
    def in_initial_phase(self) -> bool:
        """Whether this training step uses the initial assigner and loss terms (the trainer's
        iteration is below ``initial_assigner_iters``)."""
        return self.initial_assigner is not None and current_iteration() < self.initial_assigner_iters

    def build_targets(self, shifts: List[torch.Tensor], points: torch.Tensor, point_strides: torch.Tensor,
                      gt_instances: List[Instances], out: DenseOutputs, assigner=None) -> DenseTargets:
        """Assign every image (main and auxiliary assigner) from the detached predictions and
        gather the batch's targets.

        Args:
            shifts: per level [R_l, 2] pixels; points [R, 2] and point_strides [R] (pixels), the
                same points concatenated (``geometry.cat_points``). gt_instances: N ``Instances``.
            out: the head's outputs with ``scores`` set.
            assigner: the assigner of this step (default: ``self.assigner``).
        """
        with torch.no_grad():
            scores = out.scores.detach()
            pred_scores = scores if out.scores_activated else torch.sigmoid(scores)
            pred_boxes = ltrb_to_boxes(points, out.ltrb.detach())
        assigner = self.assigner if assigner is None else assigner
        matched, quality = self.assign(assigner, shifts, gt_instances, pred_scores, pred_boxes)
        main = gather_positive_targets(gt_instances, matched, self.num_classes)
        gt_ltrb = boxes_to_ltrb(points[main.pos_point], main.gt_boxes)  # [P, 4] pixels
        num_pos = loss_normalizer(main.pos.sum().float(), 1.0)
        num_gt = max(1, sum(len(g) for g in gt_instances))
        put_scalar("dense/num_pos_per_gt", main.pos.sum().item() / num_gt)
        aux = None
        if self.aux_assigner is not None:
            aux_matched, _ = self.assign(self.aux_assigner, shifts, gt_instances, pred_scores, pred_boxes)
            aux = gather_positive_targets(gt_instances, aux_matched, self.num_classes)
            put_scalar("dense/num_aux_pos_per_gt", aux.pos.sum().item() / num_gt)
        return DenseTargets(points, point_strides, main, gt_ltrb, quality, num_pos, aux)

    def forward_training(self, images, features: List[torch.Tensor], predictions,
                         gt_instances: List[Instances]) -> Dict[str, torch.Tensor]:
        """Assign targets and compute the loss terms.

        Args:
            images: ``ImageList`` of the N preprocessed images (unused; kept for detectron2's API).
            features: per level l [N, C, H_l, W_l] (only sizes and device are used, for the points).
            predictions: the head's per-level output (``DenseHead.forward``).
            gt_instances: N ``Instances`` with ``gt_boxes`` (XYXY pixels of the network input),
                ``gt_classes`` [G_i] long in [0, K), optionally ``gt_is_crowd`` [G_i] bool.

        Returns:
            dict of named scalar losses, already normalized and weighted (summed by the trainer).

        Raises:
            ValueError: a GT class outside [0, K) or a non-finite / degenerate GT box
                (``targets.check_gt_instances``), or an assigner error.
        """
        check_gt_instances(gt_instances, self.num_classes)
        shifts = self.shift_generator(features)
        points, point_strides = cat_points(shifts, self.strides)
        out = self.head.flatten(predictions, point_strides)
        out = out._replace(scores=self.head.cls_scores(out), scores_activated=self.head.cls_scores_activated)
        initial = self.in_initial_phase
        targets = self.build_targets(shifts, points, point_strides, gt_instances, out,
                                     self.initial_assigner if initial else self.assigner)
        losses: Dict[str, torch.Tensor] = {}
        for term in (self.initial_loss_terms if initial else self.loss_terms):
            losses.update(term(out, targets))
        return losses

    def forward_inference(self, images, features: List[torch.Tensor], predictions) -> List[Instances]:
        """Dense inference, per image: the head's scoring rule (``inference_scores``), then per
        level the candidates above ``test_score_thresh`` (at most ``test_topk_candidates``),
        decoding, and class-aware NMS at ``test_nms_thresh`` (NMS-free top-k when None), keeping
        ``max_detections_per_image`` (``postprocessing.dense_detections``).

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
        level, then ``postprocessing.dense_detections``. No data-dependent Python branch, so
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
        boxes, scores, classes = dense_detections(
            scores, ltrb, shifts, image_size, self.test_score_thresh, self.test_topk_candidates,
            self.test_nms_thresh, self.max_detections_per_image,
            candidate_scores=None if gates[0] is None else gates, topk_by=self.test_topk_by,
            clip_boxes=self.head.clip_boxes_before_nms, topk_within_points=self.test_topk_within_points)
        return boxes, scores, classes

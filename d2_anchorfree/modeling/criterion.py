"""The training criterion of the dense detectors: assigners, training phases, target building
and loss terms, in one component that the detector calls with its head's outputs.

One training step (``DenseCriterion.__call__``)::

    head outputs (DenseOutputs with ClassScores) + Points + GT Instances
    -> phase of this iteration: (assigner, loss terms); TOOD: ATSS + focal for the first
       INITIAL_ASSIGNER_ITERS iterations, then TAL + QFL (the trainer's hook sets the iteration)
    -> assigner(points, gt, detached probabilities and boxes) per image -> matched [R] (+ quality)
       (and the auxiliary one-to-many assigner, DeFCN Sec. 3.4)
    -> DenseTargets (positives, GT ltrb, worker-averaged normalizers)
    -> sum of the phase's loss terms, each named, normalized and weighted

The criterion holds no parameters and no tensors: it is not part of the model's state dict, and
the detector's checkpoints are those of backbone and head.
"""
import logging
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch

from detectron2.config import configurable
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage

from ..checks import is_number, is_whole_number
from .assigners import ASSIGNER_REGISTRY, build_assigner
from .geometry import Points, boxes_to_ltrb, ltrb_to_boxes
from .heads import DenseOutputs
from .heads.dual_head import ONE_TO_MANY, ONE_TO_ONE
from .losses.terms import AuxFocalLoss, LossTerm, QualityFocalLoss, build_loss_term
from .targets import DenseTargets, check_gt_instances, gather_positive_targets, loss_normalizer

logger = logging.getLogger(__name__)


def put_scalar(name: str, value: float):
    """Log to the current detectron2 EventStorage, if any (training outside a trainer has none)."""
    try:
        storage = get_event_storage()
    except AssertionError:
        return
    storage.put_scalar(name, value)


def check_composition(head, assigner, aux_assigner=None, initial_assigner=None, loss_terms=(),
                      initial_loss_terms=None, losses_key: str = "MODEL.DENSE.LOSSES") -> None:
    """Reject compositions that would train the wrong thing silently.

    Raises:
        ValueError: the head's auxiliary classifier without an auxiliary assigner (or the
            reverse); a loss term the head cannot feed (``LossTerm.check_head``); a term needing
            soft targets (``NEEDS_QUALITY``) with an assigner of its phase that gives none; two
            terms of a phase with the same output name (one would overwrite the other); a phase
            without a classification ("loss_cls") or a box ("loss_box") term. Each message names
            the config key to change (``losses_key``: the key listing ``loss_terms``).
    """
    has_aux_branch = getattr(head, "aux_logits", None) is not None
    if has_aux_branch != (aux_assigner is not None):
        raise ValueError(
            f"the head's auxiliary classifier (present: {has_aux_branch}) and the auxiliary "
            f"assigner (present: {aux_assigner is not None}) must come together (MODEL.DENSE.AUX_ASSIGNER)")
    phases = [(losses_key, loss_terms, assigner)]
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


class TrainingPhase(NamedTuple):
    """The assigner and loss terms of a training step.

    name: "initial" (the first ``initial_assigner_iters`` iterations, TOOD's warm-up) or "main".
    assigner: callable(shifts, gt, pred_scores=, pred_boxes=) -> ``AssignResult``.
    loss_terms: the loss terms (``losses/terms.py``), called in order.
    """

    name: str
    assigner: object
    loss_terms: List[LossTerm]


class DenseCriterion:
    """Assigners, training phases, targets and loss terms of a dense detector.

    Called as ``criterion(out, points, gt_instances) -> {name: scalar loss}``. The training phase
    depends on the trainer's iteration, which the trainer sets explicitly before every step
    (:meth:`set_iteration`, from ``engine.hooks.CriterionIterationHook``); a resumed run sets it
    from the checkpoint's iteration, so the phase resumes too. Outside a trainer the iteration is
    0 (the initial phase, if any) until set.
    """

    @configurable
    def __init__(self, *, num_classes: int, assigner, loss_terms: List[LossTerm], aux_assigner=None,
                 initial_assigner=None, initial_assigner_iters: int = 0,
                 initial_loss_terms: Optional[List[LossTerm]] = None, scalar_prefix: str = "dense"):
        """
        Args:
            num_classes: K >= 1 (the label of non-positive points in the targets).
            assigner: callable(shifts, gt, pred_scores=, pred_boxes=) -> ``AssignResult``.
            loss_terms: list of loss terms (``losses/terms.py``), called in order.
            aux_assigner: one-to-many assigner of the head's auxiliary classifier, or None.
            initial_assigner, initial_assigner_iters: assigner of the first iterations (TOOD's
                ATSS warm-up; iterations ``0 .. initial_assigner_iters - 1``), or None and 0.
            initial_loss_terms: the loss terms of those iterations, or None: ``loss_terms``.
            scalar_prefix: prefix of the training scalars it logs ("dense/num_pos_per_gt"; a dual
                head's one-to-one branch: "dense_o2o").

        Raises:
            ValueError: ``initial_assigner_iters`` < 0, naming MODEL.DENSE.INITIAL_ASSIGNER_ITERS.
        """
        if initial_assigner_iters < 0:
            raise ValueError(f"MODEL.DENSE.INITIAL_ASSIGNER_ITERS must be >= 0, got {initial_assigner_iters}")
        self.num_classes = num_classes
        self.assigner = assigner
        self.aux_assigner = aux_assigner
        self.initial_assigner = initial_assigner
        self.initial_assigner_iters = int(initial_assigner_iters)
        self.loss_terms = list(loss_terms)
        self.initial_loss_terms = list(initial_loss_terms) if initial_loss_terms else self.loss_terms
        self.iteration = 0
        self.scalar_prefix = scalar_prefix

    @classmethod
    def from_config(cls, cfg, head, strides: List[int]):
        """Build the assigners and loss terms that ``cfg`` names (``MODEL.DENSE`` ASSIGNER,
        AUX_ASSIGNER, INITIAL_ASSIGNER, LOSSES, INITIAL_LOSSES; "none" for an absent assigner) and
        check them against ``head``. ``cfg`` is complete: the preset has filled it
        (``components.apply_preset``).

        Args:
            cfg: the config. head: the built ``DenseHead``. strides: per level stride in pixels.

        Raises:
            KeyError: an assigner or loss term name that is not registered.
            ValueError: a composition :func:`check_composition` rejects.
        """
        d = cfg.MODEL.DENSE
        assigner = build_assigner(d.ASSIGNER, cfg, strides)
        aux_assigner = build_assigner(d.AUX_ASSIGNER, cfg, strides) if d.AUX_ASSIGNER != "none" else None
        initial = build_assigner(d.INITIAL_ASSIGNER, cfg, strides) if d.INITIAL_ASSIGNER != "none" else None
        terms = [build_loss_term(cfg, name) for name in d.LOSSES]
        initial_terms = None
        if initial is not None:
            initial_terms = [build_loss_term(cfg, name, phase="initial") for name in d.INITIAL_LOSSES]
        if aux_assigner is not None:
            terms.append(AuxFocalLoss(cfg))
            if initial_terms is not None:
                initial_terms.append(AuxFocalLoss(cfg))
        check_composition(head, assigner, aux_assigner, initial, terms, initial_terms)
        return {
            "num_classes": d.NUM_CLASSES,
            "assigner": assigner,
            "loss_terms": terms,
            "aux_assigner": aux_assigner,
            "initial_assigner": initial,
            "initial_assigner_iters": d.INITIAL_ASSIGNER_ITERS,
            "initial_loss_terms": initial_terms,
        }

    @property
    def components(self) -> List[object]:
        """The assigners and loss terms in use (None for absent ones), named by the unused-key check."""
        initial_terms = self.initial_loss_terms if self.initial_loss_terms is not self.loss_terms else []
        return [self.assigner, self.aux_assigner, self.initial_assigner, *self.loss_terms, *initial_terms]

    def set_iteration(self, iteration: int) -> None:
        """The trainer's iteration of the next step (0-based), which picks the training phase.

        Raises:
            ValueError: a negative iteration.
        """
        if iteration < 0:
            raise ValueError(f"the training iteration must be >= 0, got {iteration}")
        self.iteration = int(iteration)

    @property
    def phase(self) -> TrainingPhase:
        """The phase of the current iteration: "initial" (initial assigner and loss terms) while
        ``iteration < initial_assigner_iters``, else "main"."""
        if self.initial_assigner is not None and self.iteration < self.initial_assigner_iters:
            return TrainingPhase("initial", self.initial_assigner, self.initial_loss_terms)
        return TrainingPhase("main", self.assigner, self.loss_terms)

    @staticmethod
    def assign(assigner, points: Points, gt_instances: List[Instances], pred_scores: torch.Tensor,
               pred_boxes: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Run ``assigner`` on every image of the batch.

        Args:
            points: the step's points. gt_instances: N ``Instances``.
            pred_scores: [N, R, K] detached class probabilities. pred_boxes: [N, R, 4] detached
                XYXY pixels (prediction-unaware assigners ignore both).

        Returns:
            (matched [N, R] long: GT index, BACKGROUND (-1) or IGNORE (-2); quality [N, R] float
            soft targets, or None when the assigner gives none).
        """
        results = [assigner(points.per_level, gt, pred_scores=pred_scores[i], pred_boxes=pred_boxes[i])
                   for i, gt in enumerate(gt_instances)]
        matched = torch.stack([r.matched for r in results])
        if results and results[0].quality is not None:
            return matched, torch.stack([r.quality for r in results])
        return matched, None

    def build_targets(self, points: Points, gt_instances: List[Instances], out: DenseOutputs,
                      assigner=None) -> DenseTargets:
        """Assign every image (``assigner`` and the auxiliary assigner) from the detached
        predictions and gather the batch's targets.

        Args:
            points: the step's points. gt_instances: N ``Instances``.
            out: the head's outputs with ``scores`` set.
            assigner: the assigner of this step (default: the current phase's).

        Returns:
            :class:`~d2_anchorfree.modeling.targets.DenseTargets`.
        """
        with torch.no_grad():
            pred_scores = out.scores.as_probabilities()
            pred_boxes = ltrb_to_boxes(points.points, out.ltrb.detach())
        assigner = self.phase.assigner if assigner is None else assigner
        matched, quality = self.assign(assigner, points, gt_instances, pred_scores, pred_boxes)
        main = gather_positive_targets(gt_instances, matched, self.num_classes)
        gt_ltrb = boxes_to_ltrb(points.points[main.pos_point], main.gt_boxes)  # [P, 4] pixels
        num_pos = loss_normalizer(main.pos.sum().float(), 1.0)
        num_gt = max(1, sum(len(g) for g in gt_instances))
        put_scalar(f"{self.scalar_prefix}/num_pos_per_gt", main.pos.sum().item() / num_gt)
        aux = None
        if self.aux_assigner is not None:
            aux_matched, _ = self.assign(self.aux_assigner, points, gt_instances, pred_scores, pred_boxes)
            aux = gather_positive_targets(gt_instances, aux_matched, self.num_classes)
            put_scalar(f"{self.scalar_prefix}/num_aux_pos_per_gt", aux.pos.sum().item() / num_gt)
        return DenseTargets(points.points, points.point_strides, main, gt_ltrb, quality, num_pos, aux)

    def losses(self, out: DenseOutputs, targets: DenseTargets,
               loss_terms: Optional[List[LossTerm]] = None) -> Dict[str, torch.Tensor]:
        """Every loss term (default: the current phase's) on ``out`` and ``targets``.

        Returns:
            dict of named scalar losses, normalized and weighted.
        """
        losses: Dict[str, torch.Tensor] = {}
        for term in (self.phase.loss_terms if loss_terms is None else loss_terms):
            losses.update(term(out, targets))
        return losses

    def __call__(self, out: DenseOutputs, points: Points, gt_instances: List[Instances]) -> Dict[str, torch.Tensor]:
        """The losses of one training step.

        Args:
            out: the head's flattened outputs with ``scores`` (:class:`ClassScores`) set.
            points: the step's points (``geometry.Points``).
            gt_instances: N ``Instances`` with ``gt_boxes`` (XYXY pixels of the network input),
                ``gt_classes`` [G_i] long in [0, K), optionally ``gt_is_crowd`` [G_i] bool.

        Returns:
            dict of named scalar losses, already normalized and weighted (summed by the trainer).

        Raises:
            ValueError: a GT class outside [0, K) or a non-finite / degenerate GT box
                (``targets.check_gt_instances``), or an assigner error.
        """
        check_gt_instances(gt_instances, self.num_classes)
        phase = self.phase
        targets = self.build_targets(points, gt_instances, out, phase.assigner)
        return self.losses(out, targets, phase.loss_terms)


MATCH_ON = ("own", ONE_TO_MANY)


def build_one_to_one_assigner(cfg, strides: List[int]):
    """The assigner of a dual head's one-to-one branch: ``MODEL.DUAL.ONE_TO_ONE_ASSIGNER`` built
    from ``cfg``, its top-k (if it has one) replaced by ``MODEL.DUAL.ONE_TO_ONE_TOPK``; e.g.
    TaskAlignedAssigner with MODEL.TAL ALPHA / BETA (the one-to-many branch's metric: YOLOv10's
    consistent matching) and top-1.

    Raises:
        KeyError: an unregistered name.
        ValueError: no assigner named ("" / "none"), or an assigner that can give a GT several
            positives (not ``one_to_one``: e.g. ATSS, or TAL with top-k > 1), naming the key.
    """
    dual = cfg.MODEL.DUAL
    name = dual.ONE_TO_ONE_ASSIGNER
    if name in ("", "none"):
        raise ValueError("MODEL.DUAL.ENABLED needs a one-to-one assigner in MODEL.DUAL.ONE_TO_ONE_ASSIGNER "
                         "('TaskAlignedAssigner' with top-1, or 'POTOAssigner')")
    cls = ASSIGNER_REGISTRY.get(name)
    kwargs = cls.from_config(cfg, strides)
    if "topk" in kwargs:
        kwargs["topk"] = dual.ONE_TO_ONE_TOPK
        if dual.ONE_TO_ONE_TOPK != 1:
            raise ValueError(f"MODEL.DUAL.ONE_TO_ONE_TOPK must be 1 (a one-to-one rule takes the top-1 of "
                             f"{name}'s metric), got {dual.ONE_TO_ONE_TOPK}")
    assigner = cls(**kwargs)
    if not getattr(assigner, "one_to_one", False):
        raise ValueError(f"MODEL.DUAL.ONE_TO_ONE_ASSIGNER {name!r} gives a GT several positives; the "
                         "one-to-one branch needs a one-to-one assigner ('TaskAlignedAssigner' with top-1, "
                         "or 'POTOAssigner')")
    return assigner


def build_one_to_few_assigner(cfg, strides: List[int]):
    """The assigner of a dual head's one-to-one branch for its first
    ``MODEL.DUAL.ONE_TO_ONE_INITIAL_ITERS`` iterations: ``MODEL.DUAL.ONE_TO_ONE_ASSIGNER`` with its
    top-k set to ``ONE_TO_ONE_INITIAL_TOPK`` (> 1), so each GT has up to that many positives, the best
    with the target a top-1 rule gives it and the others lower soft targets (TAL: the metric
    normalized per GT); None when the warm-up is off (1 and 0).

    Source: the "one-to-few" idea of Li et al., "One-to-Few Label Assignment for End-to-End Dense
    Detection", CVPR 2023 (a few soft positives besides the certain one, positive early in training
    and negative later), here as a two-phase schedule of the one-to-one rule's top-k.

    Raises:
        ValueError: naming the key: ``ONE_TO_ONE_INITIAL_TOPK`` not a whole number >= 1 or
            ``ONE_TO_ONE_INITIAL_ITERS`` not a whole number >= 0; one of them set without the
            other (top-k > 1 for no iteration, or iterations of top-1, which change nothing); a
            one-to-one assigner without a top-k (POTO).
    """
    dual = cfg.MODEL.DUAL
    topk, iters = dual.ONE_TO_ONE_INITIAL_TOPK, dual.ONE_TO_ONE_INITIAL_ITERS
    if not (is_whole_number(topk) and topk >= 1):
        raise ValueError(f"MODEL.DUAL.ONE_TO_ONE_INITIAL_TOPK must be a whole number >= 1, got {topk!r}")
    if not (is_whole_number(iters) and iters >= 0):
        raise ValueError(f"MODEL.DUAL.ONE_TO_ONE_INITIAL_ITERS must be a whole number >= 0, got {iters!r}")
    if (topk > 1) != (iters > 0):
        raise ValueError(
            f"MODEL.DUAL.ONE_TO_ONE_INITIAL_TOPK = {topk} with ONE_TO_ONE_INITIAL_ITERS = {iters}: the "
            "one-to-few warm-up needs both a top-k > 1 and a number of iterations > 0 (1 and 0: off)")
    if iters == 0:
        return None
    name = dual.ONE_TO_ONE_ASSIGNER
    cls = ASSIGNER_REGISTRY.get(name)
    kwargs = cls.from_config(cfg, strides)
    if "topk" not in kwargs:
        raise ValueError(f"MODEL.DUAL.ONE_TO_ONE_INITIAL_TOPK sets the top-k of the one-to-one rule, and "
                         f"MODEL.DUAL.ONE_TO_ONE_ASSIGNER {name!r} has none; use 'TaskAlignedAssigner'")
    kwargs["topk"] = topk
    return cls(**kwargs)


def set_one_to_one_qfl_beta(terms: List[LossTerm], beta, losses_key: str) -> None:
    """Give the one-to-one branch's Quality Focal Loss its own modulating exponent
    (``MODEL.DUAL.ONE_TO_ONE_QFL_BETA``): 0 makes it YOLOv10's plain binary cross-entropy on the
    IoU target (``v10DetectLoss``: ``BCEWithLogitsLoss`` in both branches), so that a neighbour of
    the single positive is pushed down at full weight, not at sigma^2 of it (GFL Eq. 5).

    Raises:
        ValueError: ``beta`` not a number >= 0, or no QualityFocalLoss among ``terms`` (named by
            ``losses_key``), which would leave the key without effect.
    """
    if not is_number(beta) or beta < 0:
        raise ValueError(f"MODEL.DUAL.ONE_TO_ONE_QFL_BETA must be a number >= 0, got {beta!r}")
    qfl = [t for t in terms if isinstance(t, QualityFocalLoss)]
    if not qfl:
        raise ValueError(f"MODEL.DUAL.ONE_TO_ONE_QFL_BETA = {beta!r} is set but the one-to-one losses ({losses_key}: "
                         f"{[type(t).__name__ for t in terms]}) have no QualityFocalLoss")
    for term in qfl:
        term.beta = float(beta)


class DualCriterion:
    """The criterion of a dual head (``heads.dual_head.DualAssignmentHead``): a
    :class:`DenseCriterion` per branch, losses summed (YOLOv10 Sec. 3.1 and ``v10DetectLoss``).

    * one-to-many: ``MODEL.DENSE`` ASSIGNER / LOSSES (and an initial phase, if any), as a single
      head would be trained;
    * one-to-one: ``MODEL.DUAL.ONE_TO_ONE_ASSIGNER`` (top-1; :func:`build_one_to_one_assigner`)
      and ``ONE_TO_ONE_LOSSES``, each loss times ``ONE_TO_ONE_WEIGHT`` and named with an "_o2o"
      suffix ("loss_cls_o2o", ...); optionally after a one-to-few warm-up
      (:func:`build_one_to_few_assigner`, the branch criterion's initial phase). With
      ``match_on="one_to_many"`` the one-to-one assigner ranks the one-to-many branch's detached
      predictions, so each GT's one-to-one positive is the point
      the one-to-many branch scores highest by the shared metric; "own" (YOLOv10's code) ranks the
      one-to-one branch's own predictions.
    Called as ``criterion({"one_to_many": out, "one_to_one": out}, points, gt_instances)``.
    """

    @configurable
    def __init__(self, *, one_to_many: DenseCriterion, one_to_one: DenseCriterion,
                 one_to_one_weight: float = 1.0, match_on: str = "own"):
        """
        Args:
            one_to_many, one_to_one: the branches' criteria (the one-to-one one without an
                initial phase or auxiliary assigner).
            one_to_one_weight: > 0, multiplies the one-to-one losses (``MODEL.DUAL.ONE_TO_ONE_WEIGHT``).
            match_on: "own" or "one_to_many" (``MODEL.DUAL.MATCH_ON``).

        Raises:
            ValueError: a weight <= 0 or an unknown ``match_on``, naming the key.
        """
        if not one_to_one_weight > 0:
            raise ValueError(f"MODEL.DUAL.ONE_TO_ONE_WEIGHT must be > 0, got {one_to_one_weight}")
        if match_on not in MATCH_ON:
            raise ValueError(f"MODEL.DUAL.MATCH_ON must be one of {MATCH_ON}, got {match_on!r}")
        self.one_to_many = one_to_many
        self.one_to_one = one_to_one
        self.one_to_one_weight = float(one_to_one_weight)
        self.match_on = match_on

    @classmethod
    def from_config(cls, cfg, head, strides: List[int]):
        """Both branches' criteria from ``cfg`` (filled by the preset), checked against the head's
        branches.

        Raises:
            KeyError, ValueError: as :meth:`DenseCriterion.from_config` and
            :func:`build_one_to_one_assigner`.
        """
        dual = cfg.MODEL.DUAL
        names = list(dual.ONE_TO_ONE_LOSSES) or list(cfg.MODEL.DENSE.LOSSES)
        key = "MODEL.DUAL.ONE_TO_ONE_LOSSES" if dual.ONE_TO_ONE_LOSSES else "MODEL.DENSE.LOSSES (one-to-one branch)"
        assigner = build_one_to_one_assigner(cfg, strides)
        few = build_one_to_few_assigner(cfg, strides)
        terms = [build_loss_term(cfg, name) for name in names]
        if dual.ONE_TO_ONE_QFL_BETA is not None:
            set_one_to_one_qfl_beta(terms, dual.ONE_TO_ONE_QFL_BETA, key)
        check_composition(head.one_to_one, assigner, initial_assigner=few, loss_terms=terms, losses_key=key)
        one_to_one = DenseCriterion(num_classes=cfg.MODEL.DENSE.NUM_CLASSES, assigner=assigner,
                                    loss_terms=terms, scalar_prefix="dense_o2o", initial_assigner=few,
                                    initial_assigner_iters=dual.ONE_TO_ONE_INITIAL_ITERS)
        return {"one_to_many": DenseCriterion(cfg, head.one_to_many, strides), "one_to_one": one_to_one,
                "one_to_one_weight": dual.ONE_TO_ONE_WEIGHT, "match_on": dual.MATCH_ON}

    @property
    def components(self) -> List[object]:
        """The assigners and loss terms of both branches (for the unused-key check)."""
        return [*self.one_to_many.components, *self.one_to_one.components]

    @property
    def phase(self) -> TrainingPhase:
        """The one-to-many branch's phase (the one-to-one branch's, "initial" during a one-to-few
        warm-up, is ``one_to_one.phase``)."""
        return self.one_to_many.phase

    def set_iteration(self, iteration: int) -> None:
        """Tell both branches the trainer's iteration (see :meth:`DenseCriterion.set_iteration`)."""
        self.one_to_many.set_iteration(iteration)
        self.one_to_one.set_iteration(iteration)

    def one_to_one_targets(self, outs: Dict[str, DenseOutputs], points: Points,
                           gt_instances: List[Instances]) -> DenseTargets:
        """The one-to-one branch's targets, assigned on the predictions ``match_on`` names."""
        return self.one_to_one.build_targets(points, gt_instances, outs[ONE_TO_MANY if self.match_on == ONE_TO_MANY else ONE_TO_ONE])

    def __call__(self, outs: Dict[str, DenseOutputs], points: Points,
                 gt_instances: List[Instances]) -> Dict[str, torch.Tensor]:
        """The losses of one training step.

        Args:
            outs: {"one_to_many": DenseOutputs, "one_to_one": DenseOutputs}, scored
                (``DualAssignmentHead.training_outputs``).
            points, gt_instances: as :meth:`DenseCriterion.__call__`.

        Returns:
            the one-to-many losses ("loss_cls", "loss_box", ...) and the one-to-one ones, weighted,
            with an "_o2o" suffix.

        Raises:
            ValueError: see :meth:`DenseCriterion.__call__`.
        """
        losses = self.one_to_many(outs[ONE_TO_MANY], points, gt_instances)
        targets = self.one_to_one_targets(outs, points, gt_instances)
        for name, value in self.one_to_one.losses(outs[ONE_TO_ONE], targets).items():
            losses[f"{name}_o2o"] = value * self.one_to_one_weight
        return losses

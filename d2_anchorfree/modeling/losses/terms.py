"""Loss terms: the loss functions of this package bound to a head's outputs and a batch's targets.

A term is a small object registered in ``LOSS_REGISTRY`` (``MODEL.DENSE.LOSSES``), built from its
own config section, and called as ``term(outputs, targets) -> {name: scalar}`` with
``outputs`` a :class:`~d2_anchorfree.modeling.heads.DenseOutputs` (with ``scores``, a
:class:`~d2_anchorfree.modeling.heads.ClassScores`, set) and
``targets`` a :class:`~d2_anchorfree.modeling.targets.DenseTargets`. Every term is normalized
with the worker-averaged normalizers of ``targets.py`` (exact under DDP) and multiplied by its
``WEIGHT``. Terms whose output has no positive keep the predictions in the graph with a zero
(``0.0 * x.sum()``), so images without objects train and DDP sees every parameter.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F

from detectron2.config import configurable
from detectron2.utils.registry import Registry

from ..assigners.fcos import centerness_targets
from ..geometry import ltrb_as_boxes, paired_iou
from ..targets import DenseTargets, floored_positives_per_image, loss_normalizer
from .distribution_focal import dfl_targets, distribution_focal_loss
from .focal import check_focal_parameters, focal_loss_on_probabilities, focal_loss_with_labels
from .iou import check_iou_loss_type, iou_loss
from .quality_focal import quality_focal_loss
from .varifocal import varifocal_loss

LOSS_REGISTRY = Registry("DENSE_LOSS")
LOSS_REGISTRY.__doc__ = """
Registry for loss terms (``MODEL.DENSE.LOSSES``): callables ``(outputs, targets) -> dict`` of
named, normalized and weighted scalar losses.
"""

# Positive IoU targets / weights are clamped to at least this so that a positive whose box misses
# its GT (IoU 0) stays a positive of the Varifocal Loss (q > 0); VFNet authors' code: 1e-6.
MIN_IOU_TARGET = 1e-6
BOX_WEIGHTINGS = ("none", "centerness", "max_score", "iou", "quality")
PHASES = ("main", "initial")  # the training phases (criterion.TrainingPhase names)


class LossTerm:
    """Base of the loss terms.

    Built from the config by ``from_config(cfg, phase="main")`` (``phase``: "main" or
    "initial", see :func:`box_weighting`); the keys it reads there are the keys it honours
    (``components.check_unused_keys``). Class attributes: ``OUTPUTS`` (the names of the losses it returns),
    ``REQUIRED_EXTRAS`` (head outputs it needs, e.g. "centerness"), ``NEEDS_LOGITS`` (it trains
    logits, so the head's classification scores must not be probabilities), ``NEEDS_QUALITY``
    (it needs the assigner's soft targets).
    """

    OUTPUTS: Tuple[str, ...] = ()
    REQUIRED_EXTRAS: Tuple[str, ...] = ()
    NEEDS_LOGITS = False
    NEEDS_QUALITY = False

    def check_head(self, head) -> None:
        """Raise ValueError (naming the term and the head) if ``head`` cannot feed this term."""
        name, head_name = type(self).__name__, type(head).__name__
        missing = [e for e in self.REQUIRED_EXTRAS if e not in head.extra_names]
        if missing:
            raise ValueError(f"loss term {name} needs the head output(s) {missing}, which {head_name} "
                             f"does not produce (it has {list(head.extra_names)}); check MODEL.DENSE.LOSSES")
        if self.NEEDS_LOGITS and head.cls_scores_activated:
            raise ValueError(f"loss term {name} trains logits, but {head_name}'s classification scores "
                             "are probabilities (e.g. DGQP or TOOD); use QualityFocalLoss")

    def __call__(self, out, targets: DenseTargets) -> Dict[str, torch.Tensor]:
        raise NotImplementedError


def positive_ious(ltrb: torch.Tensor, targets: DenseTargets) -> torch.Tensor:
    """[P] IoU in [0, 1] of each positive's predicted box (``ltrb`` [N, R, 4] pixels, detached)
    with its GT box: the soft target of QFL / VFL and VFNet's box weights."""
    return paired_iou(ltrb_as_boxes(ltrb[targets.main.pos]).detach(), ltrb_as_boxes(targets.gt_ltrb))


def weighted_box_loss(ltrb: torch.Tensor, loss_type: str, weighting: str, out,
                      targets: DenseTargets) -> torch.Tensor:
    """IoU-family loss (``iou_loss``) between the positives' ``ltrb`` [N, R, 4] (pixels) and their
    GT ltrb, weighted and normalized per :func:`box_weights`; a zero times ``ltrb.sum()`` keeps
    every prediction in the graph when there is no positive. Returns a scalar (unweighted by the
    term's WEIGHT)."""
    weights, norm = box_weights(weighting, ltrb, out, targets)
    loss = iou_loss(ltrb_as_boxes(ltrb[targets.main.pos]), ltrb_as_boxes(targets.gt_ltrb), loss_type,
                    weight=weights) / norm
    return loss + 0.0 * ltrb.sum()


def box_weights(weighting: str, ltrb: torch.Tensor, out, targets: DenseTargets) -> Tuple[Optional[torch.Tensor], float]:
    """Per-positive weights of a box-regression term and their normalizer.

    Args:
        weighting: one of :data:`BOX_WEIGHTINGS`: "none" (1 each, normalizer = positives),
            "centerness" (FCOS: centerness target, Eq. 3; normalizer = their sum, floor 1e-6, the
            authors' code), "max_score" (GFL: highest predicted class score, detached),
            "iou" (VFNet: detached IoU of the predicted box with its GT, >= 1e-6), "quality"
            (TOOD: the assigner's soft target); the last three normalized by their sum (floor 1).
        ltrb: [N, R, 4] pixels, the boxes the term regresses (for "iou").
        out: the head's outputs (``scores`` set, for "max_score").
        targets: the batch's targets.

    Returns:
        (weights [P] or None, normalizer float), summed over workers (:func:`loss_normalizer`).
    """
    t = targets.main
    if weighting == "none":
        return None, targets.num_pos
    if weighting == "centerness":
        weights = centerness_targets(targets.gt_ltrb)
        return weights, loss_normalizer(weights.sum(), 1e-6)
    if weighting == "max_score":
        weights = out.scores.take(t.pos).as_probabilities().max(dim=1).values
    elif weighting == "iou":
        weights = positive_ious(ltrb, targets).clamp(min=MIN_IOU_TARGET)
    elif weighting == "quality":
        weights = targets.quality[t.pos]
    else:
        raise ValueError(f"MODEL.BOX_LOSS.WEIGHTING must be one of {BOX_WEIGHTINGS}, got {weighting!r}")
    return weights, loss_normalizer(weights.sum(), 1.0)


def soft_class_targets(scores: torch.Tensor, targets: DenseTargets, values: torch.Tensor) -> torch.Tensor:
    """[N, R, K] zeros with ``values`` [P] at (positive, its GT class)."""
    t = targets.main
    soft = torch.zeros_like(scores)
    soft[t.pos_img, t.pos_point, t.gt_classes] = values.to(scores.dtype)
    return soft


@LOSS_REGISTRY.register()
class FocalLoss(LossTerm):
    """Sigmoid focal loss (Lin et al., ICCV 2017, Eq. 5) on the hard labels of the assigner
    (FCOS, ATSS, DeFCN; TOOD's warm-up), IGNORE left out, divided by the positives. On logits, or
    on the probabilities of heads whose scores are activated (:func:`focal_loss_on_probabilities`).
    Output "loss_cls"."""

    OUTPUTS = ("loss_cls",)

    @configurable
    def __init__(self, *, alpha: float = 0.25, gamma: float = 2.0, weight: float = 1.0):
        """
        Raises:
            ValueError: alpha outside [0, 1] (or < 0 to disable) or gamma < 0, naming the key.
        """
        check_focal_parameters(alpha, gamma, "MODEL.FOCAL_LOSS.ALPHA", "MODEL.FOCAL_LOSS.GAMMA")
        self.alpha, self.gamma, self.weight = alpha, gamma, weight

    @classmethod
    def from_config(cls, cfg, phase: str = "main"):
        f = cfg.MODEL.FOCAL_LOSS
        return {"alpha": f.ALPHA, "gamma": f.GAMMA, "weight": f.WEIGHT}

    def __call__(self, out, targets: DenseTargets) -> Dict[str, torch.Tensor]:
        t = targets.main
        scores = out.scores
        focal = focal_loss_on_probabilities if scores.are_probabilities else focal_loss_with_labels
        loss = focal(scores.values.flatten(0, 1), t.labels.flatten(), t.valid.flatten(),
                     self.alpha, self.gamma) / targets.num_pos
        return {"loss_cls": self.weight * loss}


@LOSS_REGISTRY.register()
class QualityFocalLoss(LossTerm):
    """Quality Focal Loss (GFL, Li et al. NeurIPS 2020, Eq. 5) on a soft target at the GT class of
    each positive, 0 elsewhere, IGNORE left out, divided by the positives. The target is the IoU
    of the (detached) predicted box with its GT ("iou", GFL) or the assigner's soft target
    ("assigner", TOOD's normalized alignment metric). Trains logits or, for heads whose scores are
    probabilities (DGQP, TOOD), the probabilities. Normalizer, averaged over workers:
      * "iou" (GFL): the sum over images of max(positives of the image, 1)
        (:func:`~d2_anchorfree.modeling.targets.floored_positives_per_image`; MMDetection 3.3.0
        ``gfl_head.py`` ``get_targets`` / ``loss_by_feat``), so an image without objects adds 1;
      * "assigner" (TOOD): the sum of the targets, floor 1 (``tood_head.py`` ``loss_by_feat``:
        ``cls_avg_factor`` = sum of the normalized alignment metrics).
    Output "loss_cls"."""

    OUTPUTS = ("loss_cls",)

    @configurable
    def __init__(self, *, beta: float = 2.0, target: str = "iou", weight: float = 1.0):
        """
        Raises:
            ValueError: ``target`` not "iou" or "assigner" (beta is checked by the loss).
        """
        if target not in ("iou", "assigner"):
            raise ValueError(f"MODEL.QFL.TARGET must be 'iou' or 'assigner', got {target!r}")
        self.beta, self.target, self.weight = beta, target, weight
        self.NEEDS_QUALITY = target == "assigner"

    @classmethod
    def from_config(cls, cfg, phase: str = "main"):
        q = cfg.MODEL.QFL
        return {"beta": q.BETA, "target": q.TARGET, "weight": q.WEIGHT}

    def __call__(self, out, targets: DenseTargets) -> Dict[str, torch.Tensor]:
        t = targets.main
        if self.target == "iou":
            values = positive_ious(out.ltrb, targets)
        else:
            values = targets.quality[t.pos]
        scores = out.scores.values
        soft = soft_class_targets(scores, targets, values)
        loss = quality_focal_loss(scores[t.valid], soft[t.valid], self.beta, out.scores.are_probabilities)
        if self.target == "iou":
            norm = loss_normalizer(floored_positives_per_image(t.pos), 1.0)
        else:
            norm = loss_normalizer(values.sum(), 1.0)
        return {"loss_cls": self.weight * (loss / norm)}


@LOSS_REGISTRY.register()
class VarifocalLoss(LossTerm):
    """Varifocal Loss (VFNet, Zhang et al. CVPR 2021, Eq. 2) on the IoU-aware classification
    score: target q = IoU of the (detached, final) predicted box with its GT, clamped to >= 1e-6,
    at the GT class of positives, 0 elsewhere; IGNORE left out; divided by the positives.
    Output "loss_cls"."""

    OUTPUTS = ("loss_cls",)
    NEEDS_LOGITS = True

    @configurable
    def __init__(self, *, alpha: float = 0.75, gamma: float = 2.0, iou_weighted: bool = True,
                 weight: float = 1.0):
        """
        Raises:
            ValueError: alpha outside [0, 1] or gamma < 0, naming the config key.
        """
        check_focal_parameters(alpha, gamma, "MODEL.VFL.ALPHA", "MODEL.VFL.GAMMA",
                               negative_alpha_disables=False)
        self.alpha, self.gamma, self.iou_weighted, self.weight = alpha, gamma, iou_weighted, weight

    @classmethod
    def from_config(cls, cfg, phase: str = "main"):
        v = cfg.MODEL.VFL
        return {"alpha": v.ALPHA, "gamma": v.GAMMA, "iou_weighted": v.IOU_WEIGHTED, "weight": v.WEIGHT}

    def __call__(self, out, targets: DenseTargets) -> Dict[str, torch.Tensor]:
        t = targets.main
        logits = out.scores.logits  # NEEDS_LOGITS: check_head refused heads giving probabilities
        soft = soft_class_targets(logits, targets, positive_ious(out.ltrb, targets).clamp(min=MIN_IOU_TARGET))
        loss = varifocal_loss(logits[t.valid], soft[t.valid], self.alpha, self.gamma,
                              self.iou_weighted) / targets.num_pos
        return {"loss_cls": self.weight * loss}


@LOSS_REGISTRY.register()
class BoxLoss(LossTerm):
    """IoU-family loss (``iou_loss``: -log IoU, 1 - IoU or 1 - GIoU) between the final predicted
    ltrb and the GT ltrb of every positive, weighted and normalized per :func:`box_weights`.
    Output "loss_box"."""

    OUTPUTS = ("loss_box",)

    @configurable
    def __init__(self, *, loss_type: str = "giou", weighting: str = "none", weight: float = 1.0):
        """
        Raises:
            ValueError: an unknown loss type or weighting, a negative weight, naming the config key.
        """
        self.loss_type = check_iou_loss_type(loss_type, "MODEL.BOX_LOSS.TYPE")
        if weighting not in BOX_WEIGHTINGS:
            raise ValueError(f"MODEL.BOX_LOSS.WEIGHTING must be one of {BOX_WEIGHTINGS}, got {weighting!r}")
        if weight < 0:
            raise ValueError(f"MODEL.BOX_LOSS.WEIGHT must be >= 0, got {weight}")
        self.weighting, self.weight = weighting, weight
        self.NEEDS_QUALITY = weighting == "quality"

    @classmethod
    def from_config(cls, cfg, phase: str = "main"):
        b = cfg.MODEL.BOX_LOSS
        return {"loss_type": b.TYPE, "weighting": box_weighting(cfg, phase), "weight": b.WEIGHT}

    def __call__(self, out, targets: DenseTargets) -> Dict[str, torch.Tensor]:
        loss = weighted_box_loss(out.ltrb, self.loss_type, self.weighting, out, targets)
        return {"loss_box": self.weight * loss}


@LOSS_REGISTRY.register()
class InitBoxLoss(LossTerm):
    """VFNet's GIoU loss on the initial boxes ("ltrb_init"), each positive weighted by the
    detached IoU of its initial box with the GT (>= 1e-6), divided by their sum (VFNet authors'
    code). Output "loss_box_init"."""

    OUTPUTS = ("loss_box_init",)
    REQUIRED_EXTRAS = ("ltrb_init",)

    @configurable
    def __init__(self, *, weight: float = 1.5):
        self.weight = weight

    @classmethod
    def from_config(cls, cfg, phase: str = "main"):
        return {"weight": cfg.MODEL.INIT_BOX_LOSS.WEIGHT}

    def __call__(self, out, targets: DenseTargets) -> Dict[str, torch.Tensor]:
        loss = weighted_box_loss(out.extras["ltrb_init"], "giou", "iou", out, targets)
        return {"loss_box_init": self.weight * loss}


@LOSS_REGISTRY.register()
class CenternessLoss(LossTerm):
    """FCOS centerness: binary cross-entropy between the "centerness" logits of positives and
    their centerness targets (Eq. 3), divided by the positives. Output "loss_ctr"."""

    OUTPUTS = ("loss_ctr",)
    REQUIRED_EXTRAS = ("centerness",)

    @configurable
    def __init__(self, *, weight: float = 1.0):
        self.weight = weight

    @classmethod
    def from_config(cls, cfg, phase: str = "main"):
        return {"weight": cfg.MODEL.CENTERNESS_LOSS.WEIGHT}

    def __call__(self, out, targets: DenseTargets) -> Dict[str, torch.Tensor]:
        centerness = out.extras["centerness"].squeeze(2)  # [N, R] logits
        loss = F.binary_cross_entropy_with_logits(
            centerness[targets.main.pos], centerness_targets(targets.gt_ltrb), reduction="sum") / targets.num_pos
        return {"loss_ctr": self.weight * (loss + 0.0 * centerness.sum())}


@LOSS_REGISTRY.register()
class DistributionFocalLoss(LossTerm):
    """GFL's Distribution Focal Loss (Eq. 7) on the four side distributions ("box_logits") of the
    positives, targets = GT distances in stride units clamped to [0, REG_MAX - 0.1]
    (:func:`~.distribution_focal.dfl_targets`, MMDetection's ``bbox2distance``), averaged over the
    four sides, weighted and normalized like the box loss (``MODEL.BOX_LOSS.WEIGHTING``; GFL:
    "max_score"). Output "loss_dfl"."""

    OUTPUTS = ("loss_dfl",)
    REQUIRED_EXTRAS = ("box_logits",)

    @configurable
    def __init__(self, *, weighting: str = "max_score", weight: float = 0.25):
        self.weighting, self.weight = weighting, weight
        self.NEEDS_QUALITY = weighting == "quality"

    @classmethod
    def from_config(cls, cfg, phase: str = "main"):
        return {"weighting": box_weighting(cfg, phase), "weight": cfg.MODEL.DFL.WEIGHT}

    def __call__(self, out, targets: DenseTargets) -> Dict[str, torch.Tensor]:
        t = targets.main
        box_logits = out.extras["box_logits"]  # [N, R, 4 (n + 1)]
        bins = box_logits.shape[-1] // 4
        weights, norm = box_weights(self.weighting, out.ltrb, out, targets)
        pos_strides = targets.point_strides[t.pos_point][:, None]
        side_targets = dfl_targets(targets.gt_ltrb / pos_strides, bins - 1)  # stride units
        loss = distribution_focal_loss(box_logits[t.pos].reshape(-1, bins), side_targets.reshape(-1))
        if weights is not None:
            loss = loss * weights.repeat_interleave(4)
        loss = loss.sum() / 4.0 / norm
        return {"loss_dfl": self.weight * (loss + 0.0 * box_logits.sum())}


@LOSS_REGISTRY.register()
class AuxFocalLoss(LossTerm):
    """DeFCN's auxiliary loss (Sec. 3.4): focal loss (``MODEL.FOCAL_LOSS`` alpha and gamma) of the
    head's auxiliary classifier ("aux_logits") on the one-to-many labels of the auxiliary
    assigner, divided by its own positives. Added by the detector whenever
    ``MODEL.DENSE.AUX_ASSIGNER`` names one. Output "loss_aux"."""

    OUTPUTS = ("loss_aux",)
    REQUIRED_EXTRAS = ("aux_logits",)

    @configurable
    def __init__(self, *, alpha: float = 0.25, gamma: float = 2.0, weight: float = 1.0):
        check_focal_parameters(alpha, gamma, "MODEL.FOCAL_LOSS.ALPHA", "MODEL.FOCAL_LOSS.GAMMA")
        self.alpha, self.gamma, self.weight = alpha, gamma, weight

    @classmethod
    def from_config(cls, cfg, phase: str = "main"):
        f = cfg.MODEL.FOCAL_LOSS
        return {"alpha": f.ALPHA, "gamma": f.GAMMA, "weight": cfg.MODEL.AUX_LOSS.WEIGHT}

    def __call__(self, out, targets: DenseTargets) -> Dict[str, torch.Tensor]:
        aux = targets.aux
        num_pos = loss_normalizer(aux.pos.sum().float(), 1.0)
        loss = focal_loss_with_labels(out.extras["aux_logits"].flatten(0, 1), aux.labels.flatten(),
                                      aux.valid.flatten(), self.alpha, self.gamma) / num_pos
        return {"loss_aux": self.weight * loss}


def box_weighting(cfg, phase: str = "main") -> str:
    """The per-positive weighting of the box loss (and of the terms weighted like it, DFL) in
    ``phase``: ``MODEL.BOX_LOSS.WEIGHTING``, or ``MODEL.BOX_LOSS.INITIAL_WEIGHTING`` in the
    "initial" phase (TOOD's warm-up: "centerness").

    Raises:
        ValueError: ``phase`` not "main" or "initial".
    """
    if phase not in PHASES:
        raise ValueError(f"a training phase is one of {PHASES}, got {phase!r}")
    b = cfg.MODEL.BOX_LOSS
    return b.INITIAL_WEIGHTING if phase == "initial" else b.WEIGHTING


def build_loss_term(cfg, name: str, phase: str = "main") -> LossTerm:
    """Build the loss term registered as ``name`` from ``cfg`` (complete: the preset has filled
    it, ``components.apply_preset``), for the training ``phase`` ("main", or "initial": the
    initial assigner's iterations, whose box weighting is ``MODEL.BOX_LOSS.INITIAL_WEIGHTING``).

    Raises:
        KeyError: no term registered under ``name`` (the message lists the known ones).
    """
    return LOSS_REGISTRY.get(name)(cfg, phase=phase)

"""Dual assignment on any head: a one-to-many and a one-to-one branch trained together, inference
from the one-to-one branch alone, NMS-free.

Source: Wang et al., "YOLOv10: Real-Time End-to-End Object Detection", NeurIPS 2024, Sec. 3.1
("Consistent dual assignments for NMS-free training": a one-to-many head and a one-to-one head
trained jointly, both matched by the metric m = s * p^alpha * IoU^beta, the one-to-one head
taking the top-1; inference from the one-to-one head only, no NMS), with the details of the
authors' code (THU-MIG/yolov10 and Ultralytics ``ultralytics/nn/modules/head.py`` ``v10Detect``:
the one-to-one convs are a deep copy of the one-to-many ones and take the features *detached*;
``ultralytics/utils/loss.py`` ``v10DetectLoss``: the sum of two ``v8DetectionLoss``, task-aligned
assignment with top-10 and top-1, each on its own branch's predictions).

Here the one-to-many branch is the configured head (``MODEL.DENSE.HEAD``, assigned by
``MODEL.DENSE.ASSIGNER``, trained by ``MODEL.DENSE.LOSSES``) and the one-to-one branch a second
head of the same class (``MODEL.DUAL``); the criterion side is ``criterion.DualCriterion``.
"""
from typing import Dict, List, Tuple

import torch
from torch import nn

from .base import DenseHead, DenseOutputs, build_head

ONE_TO_MANY, ONE_TO_ONE = "one_to_many", "one_to_one"
BRANCHES = (ONE_TO_MANY, ONE_TO_ONE)
TOWER_MODES = ("separate", "shared")


class DualAssignmentHead(nn.Module):
    """Two branches of one head class: ``one_to_many`` and ``one_to_one``.

    * ``towers="separate"`` (YOLOv10): the one-to-one branch is a full head (own towers and
      predictors) on the FPN features;
    * ``towers="shared"``: the one-to-one branch has its own predictors (and add-ons) on the
      one-to-many branch's tower features; its own towers are removed.
    With ``detach`` (YOLOv10) the one-to-one branch's inputs are detached in training, so its
    gradient trains only its own layers: the backbone (and shared towers) learn from the
    one-to-many supervision alone.

    ``forward`` in training returns ``{"one_to_many": ..., "one_to_one": ...}``, each what a
    single head's ``forward`` returns; in eval mode it returns the inference branch's output only
    (the other branch is not computed, so the exported graph holds one branch) and
    :meth:`level_outputs`, :meth:`inference_scores` and :attr:`clip_boxes_before_nms` are that
    branch's: the detector's inference and export code run unchanged.
    """

    def __init__(self, *, one_to_many: DenseHead, one_to_one: DenseHead, towers: str = "separate",
                 detach: bool = True, inference_branch: str = ONE_TO_ONE):
        """
        Args:
            one_to_many, one_to_one: two heads of the same class built from the same config
                (independent parameters).
            towers: "separate" or "shared" (``MODEL.DUAL.TOWERS``), see the class docstring.
            detach: detach the one-to-one branch's inputs in training (``MODEL.DUAL.DETACH``).
            inference_branch: "one_to_one" or "one_to_many" (``MODEL.DUAL.INFERENCE_BRANCH``).

        Raises:
            ValueError: an unknown ``towers`` or ``inference_branch``; heads of different classes;
                an auxiliary classifier on either branch (the one-to-many branch replaces it);
                "shared" towers on a head without cls/box towers (TOOD's own feature path).
        """
        super().__init__()
        if towers not in TOWER_MODES:
            raise ValueError(f"MODEL.DUAL.TOWERS must be one of {TOWER_MODES}, got {towers!r}")
        if inference_branch not in BRANCHES:
            raise ValueError(f"MODEL.DUAL.INFERENCE_BRANCH must be one of {BRANCHES}, got {inference_branch!r}")
        if type(one_to_many) is not type(one_to_one):
            raise ValueError(f"the two branches of a dual head must be one head class, got "
                             f"{type(one_to_many).__name__} and {type(one_to_one).__name__}")
        if one_to_many.aux_logits is not None or one_to_one.aux_logits is not None:
            raise ValueError("MODEL.DUAL with MODEL.DENSE.AUX_ASSIGNER: the dual head's one-to-many branch "
                             "is the auxiliary supervision; set MODEL.DENSE.AUX_ASSIGNER 'none'")
        if towers == "shared":
            if not isinstance(getattr(one_to_one, "cls_tower", None), nn.Module):
                raise ValueError(f"MODEL.DUAL.TOWERS 'shared' needs a head with cls/box towers; "
                                 f"{type(one_to_one).__name__} has its own feature path (use 'separate')")
            one_to_one.cls_tower = None  # predicts from the one-to-many branch's tower features
            one_to_one.box_tower = None
        self.one_to_many = one_to_many
        self.one_to_one = one_to_one
        self.towers = towers
        self.detach = detach
        self.inference_branch = inference_branch

    @property
    def inference_head(self) -> DenseHead:
        """The branch that predicts at inference (``MODEL.DUAL.INFERENCE_BRANCH``)."""
        return getattr(self, self.inference_branch)

    @property
    def num_classes(self) -> int:
        return self.one_to_many.num_classes

    @property
    def strides(self) -> List[int]:
        return self.one_to_many.strides

    @property
    def clip_boxes_before_nms(self) -> bool:
        return self.inference_head.clip_boxes_before_nms

    def _one_to_one(self, features: List[torch.Tensor], level_feats=None) -> Dict[str, List[torch.Tensor]]:
        """The one-to-one branch on ``features`` ("separate") or on the one-to-many branch's
        tower features ``level_feats`` ("shared"), detached in training when ``detach``."""
        detach = self.detach and self.training
        if self.towers == "shared":
            if level_feats is None:
                level_feats = [self.one_to_many.level_features(f, level) for level, f in enumerate(features)]
            if detach:
                level_feats = [{k: v.detach() for k, v in feats.items()} for feats in level_feats]
            return self.one_to_one.predict(level_feats)
        return self.one_to_one([f.detach() for f in features] if detach else features)

    def forward(self, features: List[torch.Tensor]):
        """
        Args:
            features: per level [N, C, H_l, W_l].

        Returns:
            training: {"one_to_many": per-level outputs, "one_to_one": per-level outputs} (each as
            ``DenseHead.forward``); eval: the inference branch's per-level outputs.
        """
        if not self.training:
            if self.inference_branch == ONE_TO_MANY:
                return self.one_to_many(features)
            return self._one_to_one(features)
        if self.towers == "shared":
            level_feats = [self.one_to_many.level_features(f, level) for level, f in enumerate(features)]
            return {ONE_TO_MANY: self.one_to_many.predict(level_feats),
                    ONE_TO_ONE: self._one_to_one(features, level_feats)}
        return {ONE_TO_MANY: self.one_to_many(features), ONE_TO_ONE: self._one_to_one(features)}

    def training_outputs(self, per_level, point_strides: torch.Tensor) -> Dict[str, DenseOutputs]:
        """Per branch the flattened, scored outputs (``DenseHead.training_outputs``):
        {"one_to_many": DenseOutputs, "one_to_one": DenseOutputs}, what ``DualCriterion`` takes."""
        return {name: getattr(self, name).training_outputs(per_level[name], point_strides) for name in BRANCHES}

    def level_outputs(self, per_level, image: int, level: int, point_strides: torch.Tensor) -> DenseOutputs:
        """The inference branch's ``DenseHead.level_outputs`` (``per_level`` is its eval output)."""
        return self.inference_head.level_outputs(per_level, image, level, point_strides)

    def inference_scores(self, out: DenseOutputs) -> Tuple[torch.Tensor, object]:
        """The inference branch's scoring rule (``DenseHead.inference_scores``)."""
        return self.inference_head.inference_scores(out)


def build_dual_head(cfg, input_shape, name: str) -> DualAssignmentHead:
    """Two heads registered as ``name`` built from ``cfg`` (independent parameters), combined by
    ``MODEL.DUAL`` TOWERS / DETACH / INFERENCE_BRANCH.

    Raises:
        KeyError: no head registered under ``name``.
        ValueError: see :class:`DualAssignmentHead`; ``MODEL.DENSE.AUX_ASSIGNER`` set.
    """
    dual = cfg.MODEL.DUAL
    aux = cfg.MODEL.DENSE.AUX_ASSIGNER != "none"
    return DualAssignmentHead(one_to_many=build_head(cfg, input_shape, name, aux_classifier=aux),
                              one_to_one=build_head(cfg, input_shape, name, aux_classifier=False),
                              towers=dual.TOWERS, detach=dual.DETACH, inference_branch=dual.INFERENCE_BRANCH)

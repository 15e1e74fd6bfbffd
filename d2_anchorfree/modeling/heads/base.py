"""What every dense head shares: the registry, the flattened output type, the per-level loop with
the cls/box towers, and the one-to-one add-ons any head can carry (3D Max Filtering and an
auxiliary classifier, DeFCN Sec. 3.3-3.4)."""
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling.meta_arch.dense_detector import permute_to_N_HWA_K
from detectron2.utils.registry import Registry

from ...layers.max_filter import MaxFiltering3D
from .towers import check_head_inputs, check_num_levels, conv_tower, init_conv_normal, prior_bias

HEAD_REGISTRY = Registry("DENSE_HEAD")
HEAD_REGISTRY.__doc__ = """
Registry for dense heads, selected by ``MODEL.DENSE.HEAD``. A head maps the FPN levels to
per-level predictions (:meth:`DenseHead.forward`), flattens them into :class:`DenseOutputs` and
defines its scoring rule; it knows nothing about targets.
"""


class ClassScores(NamedTuple):
    """The classification scores a training step trains and the prediction-aware assigners rank
    by, typed by what they are: exactly one of the two fields is set, [N, R, K] (or [P, K] after
    :meth:`take`).

    logits: float32 logits (FCOS, ATSS, GFL, VFNet, DeFCN; with 3DMF the logits of
        sigmoid(cls) * sigmoid(filter), :func:`joint_logits`), or None.
    probabilities: float32 probabilities in [0, 1] (GFLv2's DGQP, TOOD's P_align), or None.

    Build with :meth:`from_logits` / :meth:`from_probabilities`; losses that need one kind read
    that field, the others :meth:`as_probabilities` or :attr:`values`.
    """

    logits: Optional[torch.Tensor] = None
    probabilities: Optional[torch.Tensor] = None

    @classmethod
    def from_logits(cls, logits: torch.Tensor) -> "ClassScores":
        """Scores that are logits ([..., K] float, any real value)."""
        return cls(logits=logits)

    @classmethod
    def from_probabilities(cls, probabilities: torch.Tensor) -> "ClassScores":
        """Scores that are probabilities ([..., K] float in [0, 1])."""
        return cls(probabilities=probabilities)

    @property
    def values(self) -> torch.Tensor:
        """The tensor that is set (logits or probabilities)."""
        return self.logits if self.logits is not None else self.probabilities

    @property
    def are_probabilities(self) -> bool:
        """True for probabilities, False for logits (the losses pick their formula by it)."""
        return self.logits is None

    def as_probabilities(self) -> torch.Tensor:
        """The probabilities, sigmoid(logits) for logits; detached (for assigners and weights)."""
        values = self.values.detach()
        return values if self.are_probabilities else torch.sigmoid(values)

    def take(self, index) -> "ClassScores":
        """The same kind of scores at ``index`` (e.g. the [N, R] bool mask of positives -> [P, K])."""
        return ClassScores(*(None if v is None else v[index] for v in self))


class DenseOutputs(NamedTuple):
    """A head's predictions for a batch, all levels concatenated (R = sum_l H_l W_l points,
    row-major per level, the order of the shift generator's points).

    logits: [N, R, K] float32 class logits (before 3DMF; see :meth:`DenseHead.cls_scores`).
    ltrb: [N, R, 4] float32 distances (l, t, r, b) in pixels from each point to the sides of its
        predicted (final) box; boxes are ``geometry.ltrb_to_boxes(points, ltrb)``. IoU losses are
        computed on ltrb directly (translation-invariant, and exact in float32 on large images).
    extras: named [N, R, C] float32 tensors of the head: "centerness" (C = 1, logits), "box_logits"
        (GFL bins), "quality" (DGQP, in (0, 1)), "ltrb_init" (VFNet, pixels), "prob" (TOOD
        probability-map logits), "filter" (3DMF logits, C = 1), "aux_logits" (C = K, training only).
    scores: in training, the :class:`ClassScores` the classification loss trains and
        prediction-aware assigners rank by (:meth:`DenseHead.cls_scores`); None at inference.
    """

    logits: torch.Tensor
    ltrb: torch.Tensor
    extras: Dict[str, torch.Tensor]
    scores: Optional[ClassScores] = None


def flatten_levels(per_level: List[torch.Tensor]) -> torch.Tensor:
    """[N, C, H_l, W_l] per level -> [N, sum_l H_l W_l, C] float32 (row-major per level).

    float32 whatever the head's dtype: under AMP (autocast) the head runs in fp16/bf16, and
    everything after it (assignment, box decoding, losses) is computed in float32.
    """
    channels = per_level[0].shape[1]
    return torch.cat([permute_to_N_HWA_K(x, channels).float() for x in per_level], dim=1)


def joint_logits(cls_logits: torch.Tensor, filter_logits: torch.Tensor) -> torch.Tensor:
    """The logit of DeFCN's final score sigmoid(cls) * sigmoid(filter) (Sec. 3.3, Fig. 3).

    ``sigmoid(joint_logits(a, b)) == sigmoid(a) * sigmoid(b)``, computed in float32 from
    log-sigmoids: log p = logsigmoid(a) + logsigmoid(b), logit = log p - log(1 - p), so that a
    logit-based loss (focal, varifocal) trains the product directly.

    Args:
        cls_logits: [..., K]. filter_logits: broadcastable to it (e.g. [..., 1]).

    Returns:
        Tensor [..., K] float32 logits; finite (1 - p is clamped to the smallest normal float).
    """
    log_p = F.logsigmoid(cls_logits.float()) + F.logsigmoid(filter_logits.float())
    one_minus_p = (-torch.expm1(log_p)).clamp(min=torch.finfo(torch.float32).tiny)
    return log_p - torch.log(one_minus_p)


class DenseHead(nn.Module):
    """Base of the dense heads, shared across FPN levels.

    Subclasses build their predictors after ``super().__init__`` (which builds ``cls_tower`` and
    ``box_tower``: ``num_convs`` x (3x3 conv, norm, ReLU) each, unless ``towers=False``), call
    :meth:`finish` (add-ons and initialisation) and implement :meth:`predict_level`; they may
    override :meth:`level_features`, :meth:`decode_ltrb`, :meth:`cls_scores` and
    :meth:`inference_scores`.

    Add-ons, on any head (``MODEL.MAX_FILTER``, ``MODEL.DENSE.AUX_ASSIGNER``):
      * 3D Max Filtering (DeFCN Sec. 3.3): box-tower features of all levels ->
        :class:`MaxFiltering3D` -> 3x3 conv -> one "filter" logit per point; the class score becomes
        sigmoid(cls) * sigmoid(filter) (the authors' code puts 3DMF on the box tower);
      * auxiliary classifier (DeFCN Sec. 3.4): a 3x3 conv on the cls tower -> K "aux_logits",
        computed in training only (supervised one-to-many, discarded at inference).
    """

    #: names of the head's own extra outputs (besides "logits" and "ltrb")
    EXTRAS: Tuple[str, ...] = ()
    #: inference clips the candidate boxes to the image before NMS / top-k (the reference code of
    #: every head but TOOD's does; the final detections are clipped in any case)
    clip_boxes_before_nms: bool = True

    def __init__(self, *, input_shape: List[ShapeSpec], num_classes: int, num_convs: int = 4,
                 norm: str = "GN", name: str = "dense", towers: bool = True,
                 tower_conv_bias: str = "auto", dcn_on_last_conv: bool = False):
        """
        Args:
            input_shape: per level ShapeSpec (equal channels on every level).
            num_classes: K >= 1. num_convs: tower depth >= 0. norm: "GN", "BN" or "".
            name: used in error messages.
            towers: build ``cls_tower`` and ``box_tower`` (False: the subclass has its own
                feature path, e.g. TOOD's task-interactive convs, and overrides
                :meth:`level_features`).
            tower_conv_bias: "auto" or "always", see :func:`towers.conv_tower`
                (``MODEL.DENSE.TOWER_CONV_BIAS``).
            dcn_on_last_conv: the last conv of both towers is a DCNv2 (``MODEL.DENSE.DCN_ON_LAST_CONV``,
                see :func:`towers.conv_tower`).

        Raises:
            ValueError: unequal channels, K < 1, a negative tower depth, "GN" with channels
                not divisible by 32, or ``dcn_on_last_conv`` without ``towers``.
        """
        super().__init__()
        self.in_channels = check_head_inputs(input_shape, num_classes, name)
        if num_convs < 0:
            raise ValueError(f"MODEL.DENSE.NUM_CONVS must be >= 0, got {num_convs}")
        self.num_classes = num_classes
        self.strides = [s.stride for s in input_shape]
        if dcn_on_last_conv and num_convs < 1:
            raise ValueError("MODEL.DENSE.DCN_ON_LAST_CONV needs towers with at least one conv (NUM_CONVS >= 1)")
        if dcn_on_last_conv and not towers:
            raise ValueError(f"MODEL.DENSE.DCN_ON_LAST_CONV needs a head with the shared cls/box towers; "
                             f"the {name} head has its own feature path")
        self.norm = norm
        self.tower_conv_bias = tower_conv_bias
        if towers:
            self.cls_tower = conv_tower(self.in_channels, num_convs, norm, tower_conv_bias, dcn_on_last_conv,
                                        num_levels=len(self.strides))
            self.box_tower = conv_tower(self.in_channels, num_convs, norm, tower_conv_bias, dcn_on_last_conv,
                                        num_levels=len(self.strides))
        self.max_filter = None
        self.filter = None
        self.aux_logits = None

    @staticmethod
    def base_config(cfg, input_shape: List[ShapeSpec]) -> Dict:
        """Constructor arguments every head reads: input_shape, ``MODEL.DENSE.NUM_CLASSES /
        NUM_CONVS / NORM / TOWER_CONV_BIAS / DCN_ON_LAST_CONV / PRIOR_PROB`` and the 3DMF add-on (``MODEL.MAX_FILTER``)."""
        d, m = cfg.MODEL.DENSE, cfg.MODEL.MAX_FILTER
        return {
            "input_shape": input_shape, "num_classes": d.NUM_CLASSES, "num_convs": d.NUM_CONVS,
            "norm": d.NORM, "tower_conv_bias": d.TOWER_CONV_BIAS,
            "dcn_on_last_conv": d.DCN_ON_LAST_CONV, "prior_prob": d.PRIOR_PROB,
            "max_filter": (m.KERNEL, m.TAU) if m.ENABLED else None,
        }

    def finish(self, prior_prob: float, max_filter: Optional[Tuple[int, int]] = None,
               aux_classifier: bool = False, init_all: bool = True):
        """Build the add-ons and initialise: every Conv2d ~ N(0, 0.01) with zero bias, the
        classifiers' biases at the prior (RetinaNet Sec. 4.1). Call at the end of a subclass's
        ``__init__`` (after its predictors, including ``self.cls_logits``).

        Args:
            prior_prob: initial foreground probability, in (0, 1).
            max_filter: (kernel, tau) of 3D Max Filtering, or None.
            aux_classifier: build the auxiliary classifier.
            init_all: initialise every Conv2d of the head (False: the add-ons only; the subclass
                initialises its own layers, e.g. TOOD's).

        Raises:
            ValueError: bad 3DMF window sizes or prior.
        """
        c = self.in_channels
        if max_filter is not None:
            self.max_filter = MaxFiltering3D(c, max_filter[0], max_filter[1], self.norm,
                                             num_levels=len(self.strides))
            self.filter = nn.Conv2d(c, 1, 3, padding=1)
        if aux_classifier:
            self.aux_logits = nn.Conv2d(c, self.num_classes, 3, padding=1)
        bias = prior_bias(prior_prob)
        if init_all:
            init_conv_normal(self)
            nn.init.constant_(self.cls_logits.bias, bias)
        else:
            for addon in (self.max_filter, self.filter, self.aux_logits):
                if addon is not None:
                    init_conv_normal(addon)
        if self.aux_logits is not None:
            nn.init.constant_(self.aux_logits.bias, bias)

    @property
    def extra_names(self) -> Tuple[str, ...]:
        """Names of :attr:`DenseOutputs.extras` in training: :attr:`EXTRAS` and the add-ons'."""
        names = self.EXTRAS
        if self.filter is not None:
            names += ("filter",)
        if self.aux_logits is not None:
            names += ("aux_logits",)
        return names

    def level_features(self, feature: torch.Tensor, level: int) -> Dict[str, torch.Tensor]:
        """[N, C, H, W] of level ``level`` (0 = the finest; it picks the level's own BatchNorm,
        see :func:`towers.level_norm`) -> named features of one level: at least "cls" and "box"
        [N, C, H, W] (the add-ons read them: 3DMF the box features, the auxiliary classifier the
        cls ones)."""
        return {"cls": self.cls_tower(feature, level), "box": self.box_tower(feature, level)}

    def predict_level(self, feats: Dict[str, torch.Tensor], level: int) -> Dict[str, torch.Tensor]:
        """The head's predictions of one level from :meth:`level_features` (at least "logits"
        [N, K, H, W] and, unless :meth:`decode_ltrb` is overridden, "ltrb"); see subclasses."""
        raise NotImplementedError

    def forward(self, features: List[torch.Tensor]) -> Dict[str, List[torch.Tensor]]:
        """
        Args:
            features: per level [N, C, H_l, W_l], one per stride of ``input_shape``.

        Returns:
            dict name -> list over levels of [N, C_name, H_l, W_l]: the subclass's predictions,
            plus "filter" (3DMF on) and "aux_logits" (auxiliary classifier, training only).

        Raises:
            ValueError: if the number of levels differs from the number of strides.
        """
        check_num_levels(features, self.strides)
        return self.predict([self.level_features(feature, level) for level, feature in enumerate(features)])

    def predict(self, level_feats: List[Dict[str, torch.Tensor]]) -> Dict[str, List[torch.Tensor]]:
        """The predictions of every level from its tower features (:meth:`level_features`), with
        the add-ons; :meth:`forward` is ``predict([level_features(f, l) for l, f in enumerate(features)])``.

        Args:
            level_feats: per level the dict of :meth:`level_features` ("cls" and "box" [N, C, H_l, W_l],
                and what the head's own path adds). A dual head's one-to-one branch on shared
                towers predicts from the one-to-many branch's (detached) features this way.

        Returns:
            as :meth:`forward`.
        """
        outputs: Dict[str, List[torch.Tensor]] = {}
        box_feats = []
        compute_aux = self.aux_logits is not None and self.training
        for level, feats in enumerate(level_feats):
            for key, value in self.predict_level(feats, level).items():
                outputs.setdefault(key, []).append(value)
            if compute_aux:
                outputs.setdefault("aux_logits", []).append(self.aux_logits(feats["cls"]))
            box_feats.append(feats["box"])
        if self.max_filter is not None:
            outputs["filter"] = [self.filter(x) for x in self.max_filter(box_feats)]
        return outputs

    def decode_ltrb(self, flat: Dict[str, torch.Tensor], point_strides: torch.Tensor) -> torch.Tensor:
        """[N, R, 4] pixel distances from the flattened predictions (default: the "ltrb" output)."""
        return flat.pop("ltrb")

    def flatten(self, per_level: Dict[str, List[torch.Tensor]], point_strides: torch.Tensor) -> DenseOutputs:
        """:meth:`forward`'s output -> :class:`DenseOutputs`.

        Args:
            per_level: the output of :meth:`forward`.
            point_strides: [R] stride (pixels) of every point.
        """
        flat = {key: flatten_levels(value) for key, value in per_level.items()}
        logits = flat.pop("logits")
        ltrb = self.decode_ltrb(flat, point_strides)
        return DenseOutputs(logits, ltrb, flat)

    def training_outputs(self, per_level: Dict[str, List[torch.Tensor]], point_strides: torch.Tensor) -> DenseOutputs:
        """:meth:`flatten` with the training scores set (:meth:`cls_scores`): what the criterion
        takes (a dual head returns one per branch, see ``dual_head.DualAssignmentHead``).

        Args:
            per_level: the output of :meth:`forward`. point_strides: [R] stride (pixels) of every point.
        """
        out = self.flatten(per_level, point_strides)
        return out._replace(scores=self.cls_scores(out))

    def level_outputs(self, per_level: Dict[str, List[torch.Tensor]], image: int, level: int,
                      point_strides: torch.Tensor) -> DenseOutputs:
        """One image and level of :meth:`forward`'s output as :class:`DenseOutputs` of [R_l, ...]
        views (no copy; inference scores each level of each image on its own).

        Args:
            per_level: the output of :meth:`forward`. image, level: indices.
            point_strides: [R_l] stride (pixels) of the level's points.
        """
        flat = {key: value[level][image].reshape(value[level].shape[1], -1).t().float()
                for key, value in per_level.items()}
        logits = flat.pop("logits")
        ltrb = self.decode_ltrb(flat, point_strides)
        return DenseOutputs(logits, ltrb, flat)

    @property
    def cls_scores_activated(self) -> bool:
        """Whether :meth:`cls_scores` gives probabilities (True) or logits (False); known before
        any forward, for the composition checks (e.g. a loss that trains logits)."""
        return False

    def cls_scores(self, out: DenseOutputs) -> ClassScores:
        """[N, R, K] classification scores that the classification loss trains and the
        prediction-aware assigners rank by: the class logits, or with 3DMF the logits of
        sigmoid(cls) * sigmoid(filter) (:func:`joint_logits`). Probabilities instead when
        :attr:`cls_scores_activated` (GFLv2's DGQP, TOOD)."""
        if "filter" in out.extras:
            return ClassScores.from_logits(joint_logits(out.logits, out.extras["filter"]))
        return ClassScores.from_logits(out.logits)

    def class_probabilities(self, out: DenseOutputs) -> torch.Tensor:
        """[N, R, K] sigmoid(cls), times sigmoid(filter) with 3DMF (DeFCN Sec. 3.3), in [0, 1]."""
        probs = torch.sigmoid(out.logits)
        if "filter" in out.extras:
            probs = probs * torch.sigmoid(out.extras["filter"])
        return probs

    def inference_scores(self, out: DenseOutputs) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The head's scoring rule at inference.

        Returns:
            (scores, candidate_scores): [N, R, K] ranking scores in [0, 1] and, or ``None``, the
            [N, R, K] scores that ``MODEL.DENSE.SCORE_THRESH_TEST`` applies to (see
            ``postprocessing.select_candidates``). Default: :meth:`class_probabilities`.
        """
        return self.class_probabilities(out), None


def build_head(cfg, input_shape: List[ShapeSpec], name: str, aux_classifier: bool) -> DenseHead:
    """Build the head registered as ``name`` from ``cfg``.

    Raises:
        KeyError: no head registered under ``name`` (the message lists the known ones).
    """
    return HEAD_REGISTRY.get(name)(cfg, input_shape, aux_classifier=aux_classifier)

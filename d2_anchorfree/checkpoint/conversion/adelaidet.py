"""Conversion rules: AdelaiDet FCOS checkpoints -> our ``FCOS`` detector.

Source files read (github.com/aim-uofa/AdelaiDet at 36721221eb57, 2024-03-05; the head, the
outputs and the backbone builder are unchanged in what matters here since the initial commit
33ff433 of 2020-01-23, when the model zoo was trained):

* ``adet/modeling/fcos/fcos.py``: ``Scale`` (L20-26, ``nn.Parameter(torch.FloatTensor([v]))``,
  shape [1]), ``ModuleListDial`` (L29-39, one BN per FPN level for NORM "BN"/"SyncBN"),
  ``FCOS`` (the proposal generator, attribute ``fcos_head``, L42-57), ``FCOSHead`` (L125-235):
  towers ``cls_tower``, ``bbox_tower``, ``share_tower`` (L150-177), predictors ``cls_logits``,
  ``bbox_pred``, ``ctrness`` (L179-191), ``scales`` (L193-196), forward (L213-235).
* ``adet/modeling/fcos/fcos_outputs.py``: targets in stride units (L145-148), inference
  (``predict_proposals`` L405-455, ``forward_for_single_feature_map`` L457-529,
  ``select_over_all_levels`` L531-550).
* ``adet/modeling/backbone/fpn.py``: ``LastLevelP6P7`` (L14-32), ``build_fcos_resnet_fpn_backbone``
  (L53-88); ``adet/utils/comm.py`` ``compute_locations`` (L48-60);
  ``adet/modeling/one_stage_detector.py`` ``OneStageDetector`` (L38-49, a detectron2
  ``ProposalNetwork``); ``adet/layers/ml_nms.py``; ``adet/config/defaults.py`` (L18-69).
* Configs: ``configs/FCOS-Detection/Base-FCOS.yaml``, ``R_50_1x.yaml``, ``MS_R_50_2x.yaml``,
  ``R_50_1x_iou.yaml``, ``MS_R_50_2x_iou.yaml``, ``FCOS_RT/MS_R_50_4x_syncbn.yaml``,
  ``FCOS_RT/MS_R_50_4x_syncbn_bn_head.yaml``; model links in ``configs/FCOS-Detection/README.md``.
* detectron2 (facebookresearch/detectron2): ``ProposalNetwork`` registered ``pixel_mean`` /
  ``pixel_std`` as *persistent* buffers until commit 3c0509e6 (2021-02-25, first in v0.4), so
  the 2020 AdelaiDet checkpoints hold them; ResNet/FPN module names are detectron2's, as ours.

What the source model computes (FCOS_R_50_1x; MS_R_50_2x and the ``_iou`` variants have the same
modules and inference, ``_iou`` only trains the ``ctrness`` branch on IoU instead of centerness):

* backbone: detectron2 ResNet-50 (MSRA weights, ``STRIDE_IN_1X1`` True, FrozenBN, FREEZE_AT 2)
  + detectron2 FPN on res3-res5 + P6 = conv3x3/2(P5), P7 = conv3x3/2(relu(P6)) (fpn.py L24-32,
  L73-75: ``in_channels_top = out_channels``, input "p5");
* head, shared by P3-P7: 4 x (conv3x3 **with bias**, GN(32), ReLU) per tower (fcos.py L158-175);
  logits = cls_logits(cls_tower); ctrness = ctrness(**bbox_tower**) (L227); ltrb =
  relu(scale_l * bbox_pred(bbox_tower)) * stride_l (L228-232 and fcos_outputs.py L436), i.e. the
  "imprv" head: no exp() variant exists in AdelaiDet;
* locations (x, y) = (c * s + s // 2, r * s + s // 2) (comm.py L48-60);
* inference per level: candidates sigmoid(cls) > 0.05 (THRESH_WITH_CTR False, L476-478), at most
  1000 (point, class) pairs ranked by sigmoid(cls) * sigmoid(ctrness) (L479-506), box = location
  -+ ltrb **unclipped** (L513-518), score = sqrt(sigmoid(cls) * sigmoid(ctrness)) (L522); then
  class-aware NMS at 0.6 over all levels (L536, ``batched_nms``) and the 100 best scores kept
  with ``kthvalue`` (L540-548, ties at the 100th score keep more than 100); boxes are rescaled and
  clipped to the output size, empty ones dropped, by detectron2's ``detector_postprocess``.

Our config that reproduces it: ``configs/zoo/adelaidet/FCOS_R_50_1x.yaml``, i.e.
``configs/FCOS/FCOS_imprv_R_50_FPN_1x.yaml`` with ``MODEL.DENSE.TOWER_CONV_BIAS`` "always" (META_ARCHITECTURE
"FCOS", ``MODEL.FCOS_HEAD.NORM_REG_TARGETS`` True, ``CENTERNESS_ON_REG`` True,
``SCORE_EXPONENT`` 0.5, ``MODEL.DENSE.NUM_CONVS`` 4, ``NORM`` "GN", ``PRIOR_PROB`` 0.01,
``MODEL.FPN.TOP_LEVELS`` 2, ``TOP_LEVELS_IN_FEATURE`` "p5", ``MODEL.SHIFT_GENERATOR.OFFSET`` 0.5
(= s // 2 for the even strides 8..128), ``MODEL.DENSE.SCORE_THRESH_TEST`` 0.05 (applied to
sigmoid(cls), as ours does for FCOS), ``TOPK_CANDIDATES_TEST`` 1000, ``NMS_THRESH_TEST`` 0.6,
``POSTPROCESS`` "nms", ``TEST.DETECTIONS_PER_IMAGE`` 100, ``MODEL.PIXEL_MEAN`` [103.530, 116.280,
123.675], ``PIXEL_STD`` [1, 1, 1], ``INPUT.FORMAT`` "BGR", ``MODEL.RESNETS.DEPTH`` 50,
``STRIDE_IN_1X1`` True, ``NORM`` "FrozenBN", ``INPUT.MIN_SIZE_TEST`` 800, ``MAX_SIZE_TEST``
1333: all detectron2 / our defaults except those the YAML sets). FCOS_RT_MS_R_50_4x_syncbn
additionally: P3-P5 only (``MODEL.FPN.TOP_LEVELS`` 0, ``MODEL.DENSE.IN_FEATURES`` [p3, p4, p5],
``SIZES_OF_INTEREST`` [64, 128]) and ``INPUT.MIN_SIZE_TEST`` 512, ``MAX_SIZE_TEST`` 736; its
backbone was trained with SyncBN (res3-res5 hold ``num_batches_tracked``; stem and res2 are
frozen, FrozenBN), which at inference equals our FrozenBN with the same four statistics.

Differences from our default model (1 and 3 are reproduced by config keys, 2 and 4 are not):

1. Tower conv bias. fcos.py L158-162 builds every tower conv with ``bias=True`` in front of
   GroupNorm; our ``heads/towers.py`` ``conv_tower`` uses ``bias=not norm``. The trained biases
   are not zero and GN does not cancel them (channels of one group get different biases, which
   changes the group's variance), so dropping them changes the outputs. Reproduced by
   ``MODEL.DENSE.TOWER_CONV_BIAS: "always"`` (``configs/zoo/adelaidet/``). Keys affected:
   ``head.{cls,box}_tower.{0,3,6,9}.bias``.
2. NMS on unclipped boxes. AdelaiDet runs NMS on the raw boxes (fcos_outputs.py L513-536) and
   clips only in ``detector_postprocess``; ours clips to the input size before NMS
   (``modeling/postprocessing.py`` ``dense_detections``: ``clip_boxes_to_image`` then
   ``class_aware_nms``). Boxes crossing the border get other IoUs, so NMS can keep or drop different
   boxes. Missing option: e.g. ``MODEL.DENSE.CLIP_BEFORE_NMS`` False.
3. Per-level BN in the head (``MODEL.FCOS.NORM`` "BN"/"SyncBN", the FCOS_RT ``*_bn_head``
   models): ``ModuleListDial`` holds one BN per FPN level (keys ``...tower.{1,4,7,10}.<level>.*``);
   ours with ``MODEL.DENSE.NORM`` "BN" holds the same (``layers/level_norm.py`` ``PerLevelNorm``, keys
   ``head.{cls,box}_tower.{1,4,7,10}.norms.<level>.*``; ``configs/zoo/adelaidet/*_bn_head.yaml``).
4. (Ties only) the post-NMS cap keeps every detection whose score equals the 100th (``kthvalue``,
   L540-548); ours keeps exactly ``TEST.DETECTIONS_PER_IMAGE``.

Not supported at all: the DLA-34 (FCOS_RT DLA), VoVNet, ResNeXt+DCN and BiFPN checkpoints
(backbones we do not have) and ``NUM_SHARE_CONVS`` > 0 (keys ``share_tower.*``, no counterpart).
"""
from typing import Callable, Dict, List, Optional, Tuple

from .core import DETECTRON2_BACKBONE_RULES, matches_any, rule_renamer, scale_as_0d, values_differ

#: Source state-dict key patterns that are legitimately dropped.
IGNORED: Tuple[str, ...] = (
    # detectron2 < v0.4 stored the input normalization as persistent buffers of the meta-arch
    # (ProposalNetwork); ours reads it from MODEL.PIXEL_MEAN / PIXEL_STD, which must equal these
    # values (detectron2's defaults [103.530, 116.280, 123.675] / [1, 1, 1] for the zoo models).
    r"^pixel_(mean|std)$",
    # BatchNorm step counters (SyncBN backbones of FCOS_RT): used only when BN momentum is None
    # in training; our FrozenBN has none and inference never reads it.
    r"(^|\.)num_batches_tracked$",
)

#: Our keys that the source lacks and whose value is exactly zero in the source's arithmetic:
#: the step counters of the head's per-level BatchNorms (the source's are ignored above; inference
#: never reads them). Every other key of our FCOS head and backbone has a source counterpart.
ZERO_FILLED: Tuple[str, ...] = (r"^head\.(cls|box)_tower\.\d+\.norms\.\d+\.num_batches_tracked$",)

# (source pattern, our replacement), first match wins; see rename().
_RULES: Tuple[Tuple[str, str], ...] = DETECTRON2_BACKBONE_RULES + (
    # Towers: Sequential of (conv, norm, ReLU) x 4 in both, so indices agree (conv 3i, norm 3i+1).
    # A per-level BN (AdelaiDet ``<i>.<level>.*``, ModuleListDial) maps to ours ``<i>.norms.<level>.*``.
    (r"^proposal_generator\.fcos_head\.cls_tower\.(\d+)\.(\d+)\.(weight|bias|running_mean|running_var)$",
     r"head.cls_tower.\1.norms.\2.\3"),
    (r"^proposal_generator\.fcos_head\.bbox_tower\.(\d+)\.(\d+)\.(weight|bias|running_mean|running_var)$",
     r"head.box_tower.\1.norms.\2.\3"),
    (r"^proposal_generator\.fcos_head\.cls_tower\.(\d+)\.(weight|bias)$", r"head.cls_tower.\1.\2"),
    (r"^proposal_generator\.fcos_head\.bbox_tower\.(\d+)\.(weight|bias)$", r"head.box_tower.\1.\2"),
    (r"^proposal_generator\.fcos_head\.cls_logits\.(weight|bias)$", r"head.cls_logits.\1"),
    (r"^proposal_generator\.fcos_head\.bbox_pred\.(weight|bias)$", r"head.box_pred.\1"),
    (r"^proposal_generator\.fcos_head\.ctrness\.(weight|bias)$", r"head.centerness.\1"),
    (r"^proposal_generator\.fcos_head\.scales\.(\d+)\.scale$", r"head.scales.\1.scale"),
)
_RENAME = rule_renamer(_RULES, IGNORED)


def is_ignored(key: str) -> bool:
    """Whether the source ``key`` matches one of :data:`IGNORED`."""
    return matches_any(key, IGNORED)


def rename(key: str) -> Optional[str]:
    """Our state-dict key for the AdelaiDet key ``key``, or None if it has no counterpart
    (ignored keys, see :data:`IGNORED`, and keys we cannot represent, e.g. ``share_tower``).

    Examples: ``proposal_generator.fcos_head.cls_tower.0.weight`` -> ``head.cls_tower.0.weight``,
    ``proposal_generator.fcos_head.ctrness.bias`` -> ``head.centerness.bias``,
    ``backbone.top_block.p7.weight`` -> ``backbone.top_block.convs.1.weight``.
    The tower conv biases map to ``head.{cls,box}_tower.{0,3,6,9}.bias``, keys our model has
    with ``MODEL.DENSE.TOWER_CONV_BIAS`` "always" (difference 1 of the module docstring).
    """
    return _RENAME(key)


#: the per-level Scale is a [1] tensor in the source and 0-d in ours (same product)
convert_tensor = scale_as_0d


#: Model-zoo checkpoints (configs/FCOS-Detection/README.md) -> (our config file, extra
#: "KEY", value options) reproducing them; None where our model cannot (yet).
CHECKPOINTS: Dict[str, Optional[Tuple[str, tuple]]] = {
    "FCOS_R_50_1x": ("configs/zoo/adelaidet/FCOS_R_50_1x.yaml", ()),
    "FCOS_MS_R_50_2x": ("configs/zoo/adelaidet/FCOS_R_50_1x.yaml", ()),
    "FCOS_R_50_1x_iou": ("configs/zoo/adelaidet/FCOS_R_50_1x.yaml", ()),
    "FCOS_MS_R_50_2x_iou": ("configs/zoo/adelaidet/FCOS_R_50_1x.yaml", ()),
    "FCOS_RT_MS_R_50_4x_syncbn": ("configs/zoo/adelaidet/FCOS_RT_MS_R_50_4x_syncbn.yaml", ()),
    # per-level BN head (difference 3 of the module docstring)
    "FCOS_RT_MS_R_50_4x_syncbn_bn_head": ("configs/zoo/adelaidet/FCOS_RT_MS_R_50_4x_syncbn_bn_head.yaml", ()),
}


NAME = "AdelaiDet"


def make_renamer(cfg, target_keys) -> Callable[[str], Optional[str]]:
    """The renamer for :func:`~d2_anchorfree.checkpoint.conversion.core.convert_state_dict`:
    :func:`rename` (the names do not depend on the config)."""
    return rename


def detect(state) -> bool:
    """A state dict from AdelaiDet's FCOS: its head lives under ``proposal_generator.fcos_head``."""
    return any(k.startswith("proposal_generator.fcos_head.") for k in state)


def check_config(state, meta, cfg) -> List[str]:
    """The normalization buffers that detectron2 < v0.4 saved (``pixel_mean`` / ``pixel_std``,
    [3, 1, 1]) against ``MODEL.PIXEL_MEAN/STD``; returns the problems found (none without them)."""
    problems = []
    for key, ours in (("pixel_mean", cfg.MODEL.PIXEL_MEAN), ("pixel_std", cfg.MODEL.PIXEL_STD)):
        if key in state:
            values = [float(v) for v in state[key].flatten()]
            if values_differ(values, ours):
                problems.append(f"the file's model normalizes with {key}={values}: MODEL.{key.upper()} is {list(ours)}")
    return problems

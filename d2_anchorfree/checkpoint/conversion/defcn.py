"""Conversion rules: DeFCN (cvpods) checkpoints -> our ``DeFCN`` detector.

Source files read:

* github.com/Megvii-BaseDetection/DeFCN at bd7e24d7408d (2022-01-10), ``playground/detection/``
  ``coco/poto.res50.fpn.coco.800size.3x_ms{,.3dmf,.3dmf.aux,.3dmf_wo_gn,.3dmf_wo_gn.aux,.argmax}``,
  ``coco/poto.res50.fpn.coco.800size.{6x,9x}_ms`` and ``crowdhuman/poto.res50.fpn.crowdhuman.``
  ``800size.30k{,.3dmf,.3dmf.aux}``, each with ``config.py``, ``net.py`` (identical in all:
  ``build_retinanet_resnet_fpn_p5_backbone``) and ``fcos.py``. Line numbers below are those of
  ``coco/poto.res50.fpn.coco.800size.3x_ms.3dmf.aux/fcos.py``: ``FCOS`` (L51-573), ``FCOSHead``
  (L576-691: towers ``cls_subnet`` / ``bbox_subnet`` L595-616, ``cls_score`` L617, ``bbox_pred``
  L622, ``max3d`` L628, ``filter`` L631, ``scales`` L654, forward L657-691), ``MaxFiltering``
  (L694-728), inference (``inference_single_image`` L468-540), losses (L159-244), assignment
  (``get_ground_truth`` L247-341, ``get_aux_ground_truth`` L343-429). The other folders differ
  only where stated below (checked with diff). Commit a82393e (2021-02-04, "Fix an FPN bug,
  rerun all experiments") switched ``net.py`` from ``build_retinanet_resnet_fpn_backbone`` (P6
  from C5) to the ``_p5`` builder and replaced all published weights.
* github.com/Megvii-BaseDetection/cvpods at 2deea5dc659 (2023-03-10; the FPN history checked
  back to its initial commit): ``cvpods/configs/{base_config,base_detection_config,fcos_config}.py``,
  ``cvpods/modeling/backbone/{fpn,resnet}.py`` (``FPN`` L39-176, ``LastLevelP6P7`` L204-227,
  ``build_retinanet_fpn_backbone`` L264-301; ``BottleneckBlock`` L129-235, ``BasicStem``
  L488-523, ``build_resnet_backbone`` L671-), ``cvpods/layers/batch_norm.py``
  (``FrozenBatchNorm2d``: buffers weight, bias, running_mean, running_var),
  ``cvpods/modeling/meta_arch/fcos.py`` (``Scale`` L46-52: ``FloatTensor([v])``, shape [1]),
  ``cvpods/modeling/anchor_generator.py`` (``ShiftGenerator`` L362-405,
  ``_create_grid_offsets`` L47-61), ``cvpods/modeling/box_regression.py``
  (``Shift2BoxTransform`` L220-267), ``cvpods/modeling/postprocessing.py``
  (``detector_postprocess``), ``cvpods/layers/nms.py`` (``batched_nms`` L35-52,
  ``generalized_batched_nms`` L89-107). ResNet, FPN, Conv2d(+norm) module names are detectron2's.

What the source model computes (POTO + 3DMF + Aux, COCO):

* backbone: ResNet-50 (MSRA weights, ``STRIDE_IN_1X1`` True, FrozenBN, FREEZE_AT 2) + FPN on
  res3-res5 + P6 = conv3x3/2(P5), P7 = conv3x3/2(relu(P6)) (cvpods ``BLOCK_IN_FEATURES`` "p5";
  weights published before a82393e: P6 from C5, a [256, 2048, 3, 3] ``top_block.p6``);
  input normalization (x - PIXEL_MEAN) / PIXEL_STD with [103.530, 116.280, 123.675] / [1, 1, 1],
  BGR, kept in a lambda (fcos.py L92-96), so not in the checkpoint;
* head, shared by P3-P7: 4 x (conv3x3 **with bias** (nn.Conv2d default), GN(32), ReLU) per
  tower; logits = cls_score(cls tower); ltrb = relu(scale_l * bbox_pred(box tower)) * stride_l
  (``NORM_REG_TARGETS`` True, L683-687); 3DMF on the **box tower** outputs of all levels
  (L689-690): per level conv3x3(+bias) (shared), then for level l the max over levels
  l-1..l+1 (tau = 2, clipped at the ends) of the conv outputs bilinearly resized
  (align_corners False) to level l's size, and over a 3x3 spatial window (-inf padding), via
  ``max_pool3d`` on the stacked levels (L706-725); + the box-tower input, GN(32), ReLU
  (L726-727; "3dmf_wo_gn": no GN); filter = conv3x3 of that (one channel);
* score = sigmoid(cls) * sigmoid(filter) (L494; without 3DMF: sigmoid(cls)); no centerness;
* points (c + 0.5) * s, (r + 0.5) * s (``SHIFT_GENERATOR.OFFSET`` 0.5); box = point -+ ltrb;
* inference per level (L491-519): sort all H*W*K scores, keep the first
  ``min(TOPK_CANDIDATES_TEST = 1000, H*W)``, then those > 0.05; over all levels: sorted by score
  (``NMS_TYPE`` None; the COCO 3dmf.aux config keeps cvpods' "normal" NMS at ``NMS_THRESH_TEST``
  1.0, which suppresses nothing, IoU never exceeds 1) and the first ``DETECTIONS_PER_IMAGE``
  (100; CrowdHuman 500) kept (L525-534); boxes are rescaled and clipped to the output size and
  empty ones dropped by ``detector_postprocess``.
* CrowdHuman models: ``NUM_CLASSES`` 1, ``CENTER_SAMPLING_RADIUS`` 0 (POTO prior = inside the
  GT box), test size 800 / max 1400, 500 detections; ignore-labelled GTs are removed before
  assignment (training only).

Our config that reproduces it: ``configs/DeFCN/POTO_3DMF_R_50_FPN_1x.yaml`` (``POTO_R_50_FPN_1x``
without 3DMF): META_ARCHITECTURE "DeFCN", ``MODEL.DEFCN_HEAD.NORM_REG_TARGETS`` True,
``MODEL.MAX_FILTER.ENABLED`` True, ``KERNEL`` 3, ``TAU`` 2, ``MODEL.DENSE.NUM_CONVS`` 4, ``NORM``
"GN", ``POSTPROCESS`` "topk", ``SCORE_THRESH_TEST`` 0.05, ``TOPK_CANDIDATES_TEST`` 1000,
``TEST.DETECTIONS_PER_IMAGE`` 100, ``MODEL.FPN.TOP_LEVELS`` 2, ``TOP_LEVELS_IN_FEATURE`` "p5"
("res5" for pre-a82393e weights), ``MODEL.SHIFT_GENERATOR.OFFSET`` 0.5, ``MODEL.PIXEL_MEAN`` /
``PIXEL_STD`` / ``INPUT.FORMAT`` / ``MODEL.RESNETS`` (DEPTH 50, STRIDE_IN_1X1 True, NORM FrozenBN)
/ ``INPUT.MIN_SIZE_TEST`` 800, ``MAX_SIZE_TEST`` 1333 as detectron2's defaults; CrowdHuman adds
``MODEL.DENSE.NUM_CLASSES`` 1, ``TEST.DETECTIONS_PER_IMAGE`` 500, ``INPUT.MAX_SIZE_TEST`` 1400
(training: ``MODEL.POTO.SPATIAL_PRIOR`` "inside"). Training keys of the source: POTO alpha 0.8,
center radius 1.5, aux top-k 9, GIoU weight 2.0, focal alpha 0.25 / gamma 2.0.

Differences from our default model (1 and 2 are reproduced by config keys, 3 and 4 are not):

1. Tower conv bias: cvpods' towers use ``nn.Conv2d(..., padding=1)`` (bias on) before GN
   (L598-613); ours ``bias=not norm`` (``heads/towers.py`` ``conv_tower``). Trained biases are
   not zero and GN does not cancel per-channel biases that differ within a group. Reproduced
   by ``MODEL.DENSE.TOWER_CONV_BIAS`` "always" (``configs/zoo/defcn/``). Keys
   ``head.{cls,box}_tower.{0,3,6,9}.bias``.
2. Candidate cap per level: ``num_topk = min(TOPK_CANDIDATES_TEST, H_l * W_l)`` counts
   *locations* (L497), ours ``TOPK_CANDIDATES_TEST`` (point, class) pairs
   (``postprocessing.select_candidates``). On levels with fewer than 1000 locations (P6: 273,
   P7: 77 at 800x1333) DeFCN keeps at most H_l * W_l candidates, ours up to 1000, so the final
   top-100 can differ when many (point, class) pairs of a small level score above 0.05.
   Reproduced by ``MODEL.DENSE.TOPK_CANDIDATES_WITHIN_POINTS`` (``configs/zoo/defcn/``).
3. 3DMF without GN ("3dmf_wo_gn" models, ``MaxFiltering`` without ``self.norm``): our
   ``MaxFiltering3D`` takes the head's tower norm (``DenseHead.finish`` passes ``self.norm``),
   so GN-free 3DMF with GN towers cannot be configured. Missing option: e.g.
   ``MODEL.MAX_FILTER.NORM`` (""). Those checkpoints have no target in :data:`CHECKPOINTS`.
4. Auxiliary loss (training only; inference and the conversion for inference are unaffected):
   DeFCN applies the one-to-many focal loss to the **same** ``cls_score`` logits, without the
   filter (L143-145, L219-244), and ranks its candidates by sigmoid(cls) without the filter
   (L366-368). Ours trains a separate classifier ``head.aux_logits`` (``DenseHead.finish``) on
   labels ranked by sigmoid(cls) * sigmoid(filter) (``AnchorFreeDetector.build_targets`` passes
   the same scores to both assigners). So POTO+3DMF+Aux checkpoints convert to our POTO_3DMF
   config exactly; with our Aux config ``head.aux_logits.*`` stays unset. Missing option: e.g.
   ``MODEL.AUX_LOSS.SHARED_CLASSIFIER`` (aux loss on ``logits``, scores without the filter).

Not covered: DeFCN's FCOS / ATSS / anchor / center / loss baselines (other heads; cvpods'
``meta_arch/fcos.py`` and ``atss.py``) and its training-only details (focal loss computed on
probabilities with ``F.binary_cross_entropy``, whose log is clamped at -100).
"""
from typing import Callable, Dict, Optional, Tuple

from .core import DETECTRON2_BACKBONE_RULES, matches_any, rule_renamer, scale_as_0d

#: Source key patterns that are legitimately dropped: none. cvpods' FCOS keeps the input
#: normalization in a lambda, not in buffers (fcos.py L92-96), its ShiftGenerator has no
#: state, and its FrozenBN has no ``num_batches_tracked``; every other key is a weight we use.
IGNORED: Tuple[str, ...] = ()

#: Our keys that the source lacks and whose value is exactly zero in the source's arithmetic:
#: none (``head.aux_logits.*`` of our Aux config is not zero-fillable: it is a trained classifier
#: there, while DeFCN has none, see difference 4).
ZERO_FILLED: Tuple[str, ...] = ()

# (source pattern, our replacement), first match wins; see rename().
_RULES: Tuple[Tuple[str, str], ...] = DETECTRON2_BACKBONE_RULES + (
    # Towers: (conv, GN, ReLU) x 4 Sequentials in both; indices agree.
    (r"^head\.cls_subnet\.(\d+)\.(weight|bias)$", r"head.cls_tower.\1.\2"),
    (r"^head\.bbox_subnet\.(\d+)\.(weight|bias)$", r"head.box_tower.\1.\2"),
    (r"^head\.cls_score\.(weight|bias)$", r"head.cls_logits.\1"),
    (r"^head\.bbox_pred\.(weight|bias)$", r"head.box_pred.\1"),
    (r"^head\.scales\.(\d+)\.scale$", r"head.scales.\1.scale"),
    # 3DMF block (conv, GN) and the filter conv.
    (r"^head\.max3d\.conv\.(weight|bias)$", r"head.max_filter.conv.\1"),
    (r"^head\.max3d\.norm\.(weight|bias)$", r"head.max_filter.norm.\1"),
    (r"^head\.filter\.(weight|bias)$", r"head.filter.\1"),
)
_RENAME = rule_renamer(_RULES, IGNORED)


def is_ignored(key: str) -> bool:
    """Whether the source ``key`` matches one of :data:`IGNORED`."""
    return matches_any(key, IGNORED)


def rename(key: str) -> Optional[str]:
    """Our state-dict key for the DeFCN (cvpods) key ``key``, or None if it has no counterpart.

    Examples: ``head.cls_subnet.3.weight`` -> ``head.cls_tower.3.weight``,
    ``head.cls_score.bias`` -> ``head.cls_logits.bias``, ``head.max3d.norm.weight`` ->
    ``head.max_filter.norm.weight``, ``backbone.top_block.p6.weight`` ->
    ``backbone.top_block.convs.0.weight``. Tower conv biases map to
    ``head.{cls,box}_tower.{0,3,6,9}.bias``, which exist in our model with
    ``MODEL.DENSE.TOWER_CONV_BIAS`` "always" (difference 1 of the module docstring).
    """
    return _RENAME(key)


#: the per-level Scale is a [1] tensor in the source and 0-d in ours (same product)
convert_tensor = scale_as_0d


_POTO = "configs/zoo/defcn/POTO_R_50_3x.yaml"
_POTO_3DMF = "configs/zoo/defcn/POTO_3DMF_R_50_3x.yaml"
_POTO_CH = "configs/zoo/defcn/POTO_R_50_crowdhuman.yaml"
_POTO_3DMF_CH = "configs/zoo/defcn/POTO_3DMF_R_50_crowdhuman.yaml"

#: Published checkpoints (DeFCN README, playground folder names) -> (our config file, extra
#: "KEY", value options) reproducing their inference; None where our model cannot (yet).
#: Weights published before DeFCN commit a82393e (2021-02-04) also need
#: ``"MODEL.FPN.TOP_LEVELS_IN_FEATURE", "res5"``.
CHECKPOINTS: Dict[str, Optional[Tuple[str, tuple]]] = {
    "coco/poto.res50.fpn.coco.800size.3x_ms": (_POTO, ()),
    "coco/poto.res50.fpn.coco.800size.6x_ms": (_POTO, ()),
    "coco/poto.res50.fpn.coco.800size.9x_ms": (_POTO, ()),
    "coco/poto.res50.fpn.coco.800size.3x_ms.argmax": (_POTO, ()),
    "coco/poto.res50.fpn.coco.800size.3x_ms.3dmf": (_POTO_3DMF, ()),
    # no auxiliary classifier in the source: our POTO_3DMF config is the exact inference model
    "coco/poto.res50.fpn.coco.800size.3x_ms.3dmf.aux": (_POTO_3DMF, ()),
    # GN-free 3DMF (difference 3)
    "coco/poto.res50.fpn.coco.800size.3x_ms.3dmf_wo_gn": None,
    "coco/poto.res50.fpn.coco.800size.3x_ms.3dmf_wo_gn.aux": None,
    "crowdhuman/poto.res50.fpn.crowdhuman.800size.30k": (_POTO_CH, ()),
    "crowdhuman/poto.res50.fpn.crowdhuman.800size.30k.3dmf": (_POTO_3DMF_CH, ()),
    "crowdhuman/poto.res50.fpn.crowdhuman.800size.30k.3dmf.aux": (_POTO_3DMF_CH, ()),
}


NAME = "DeFCN (cvpods)"


def make_renamer(cfg, target_keys) -> Callable[[str], Optional[str]]:
    """The renamer for :func:`~d2_anchorfree.checkpoint.conversion.core.convert_state_dict`:
    :func:`rename` (the names do not depend on the config)."""
    return rename


def detect(state) -> bool:
    """A state dict from DeFCN / cvpods: detectron2-style backbone, head towers ``head.cls_subnet``."""
    return any(k.startswith("head.cls_subnet.") for k in state) and any(k.startswith("backbone.bottom_up.") for k in state)

"""The AdelaiDet and DeFCN conversion rules (``d2_anchorfree/checkpoint/conversion/``) against
the state-dict keys their checkpoints hold (``tests/zoo_source_keys.py``, built from the
sources' module definitions) and the keys of our R-50 models.

For every case (source checkpoint -> our config):
  * every source key is renamed or ignored (none unused);
  * no two source keys land on one key of ours;
  * the renamed keys equal our model's keys exactly (none invented, none left unset except the
    module's ``ZERO_FILLED``) -- strict xfail where a config option of ours is missing;
  * the differences are exactly the documented gaps (so an unexpected one fails even where the
    exact test xfails), and shapes agree after ``convert_tensor``.
"""
import functools
import re
from typing import Dict, NamedTuple, Tuple

import pytest
import torch

from conftest import load_cfg
from d2_anchorfree.checkpoint.conversion import adelaidet, defcn
from zoo_source_keys import SOURCES

# ---- documented gaps (regexes over the keys in question), with the missing option of ours
TOWER_BIAS = r"^head\.(cls|box)_tower\.(0|3|6|9)\.bias$"
TOWER_BIAS_REASON = ("source towers have a conv bias before the norm (AdelaiDet fcos.py L158-162, "
                     "DeFCN fcos.py L598-613); ours have none with a norm: needs e.g. "
                     "MODEL.DENSE.TOWER_CONV_BIAS")
PER_LEVEL_BN_SOURCE = (r"^proposal_generator\.fcos_head\.(cls|bbox)_tower\.(1|4|7|10)\.[0-2]\."
                       r"(weight|bias|running_mean|running_var)$")
PER_LEVEL_BN_OURS = r"^head\.(cls|box)_tower\.(1|4|7|10)\.(weight|bias|running_mean|running_var|num_batches_tracked)$"
PER_LEVEL_BN_REASON = ("AdelaiDet NORM 'SyncBN' heads hold one BN per FPN level (ModuleListDial, "
                       "fcos.py L29-39, L167-174); ours share one: needs a per-level head norm option")
WO_GN_3DMF = r"^head\.max_filter\.norm\.(weight|bias)$"
WO_GN_REASON = ("DeFCN '3dmf_wo_gn' has no GN in 3DMF while its towers keep GN; our 3DMF takes the "
                "tower norm: needs e.g. MODEL.MAX_FILTER.NORM")
AUX_CLASSIFIER = r"^head\.aux_logits\.(weight|bias)$"
AUX_REASON = ("DeFCN's auxiliary loss reuses cls_score (fcos.py L143-145, L219-244); our Aux config "
              "has a separate classifier head.aux_logits: needs e.g. MODEL.AUX_LOSS.SHARED_CLASSIFIER")


class Gap(NamedTuple):
    """An expected difference: ``kind`` is "unmapped" (source keys without a rule),
    "not_in_ours" (renamed keys our model lacks) or "unset" (our keys nothing maps to);
    ``pattern`` a regex over those keys; ``reason`` the source line and the missing option."""
    kind: str
    pattern: str
    reason: str


class Case(NamedTuple):
    source: str  # name in zoo_source_keys.SOURCES
    module: object  # conversion module
    config: str
    opts: tuple
    gaps: Tuple[Gap, ...]


TOWER_GAP = Gap("not_in_ours", TOWER_BIAS, TOWER_BIAS_REASON)
PER_LEVEL_BN_GAPS = (Gap("unmapped", PER_LEVEL_BN_SOURCE, PER_LEVEL_BN_REASON),
                     Gap("unset", PER_LEVEL_BN_OURS, PER_LEVEL_BN_REASON))
WO_GN_GAP = Gap("unset", WO_GN_3DMF, WO_GN_REASON)
AUX_GAP = Gap("unset", AUX_CLASSIFIER, AUX_REASON)
_BIAS = ("MODEL.DENSE.TOWER_CONV_BIAS", "always")
_CROWDHUMAN = ("MODEL.DENSE.NUM_CLASSES", 1, "TEST.DETECTIONS_PER_IMAGE", 500, "INPUT.MAX_SIZE_TEST", 1400,
               "MODEL.POTO.SPATIAL_PRIOR", "inside", "MODEL.DENSE.CENTER_SAMPLING_RADIUS", 0.0)


def _cases():
    """One case per checkpoint with a target in the module's CHECKPOINTS, plus the closest config
    of ours for those without one and our Aux config for the +Aux DeFCN checkpoints."""
    cases = []
    for module, prefix in ((adelaidet, "adelaidet/"), (defcn, "defcn/")):
        for name, target in module.CHECKPOINTS.items():
            if target is not None:
                cases.append(Case(prefix + name, module, target[0], target[1], ()))
    cases += [
        Case("defcn/coco/poto.res50.fpn.coco.800size.3x_ms.3dmf_wo_gn", defcn,
             "configs/zoo/defcn/POTO_3DMF_R_50_3x.yaml", (),
             (WO_GN_GAP,)),
        Case("defcn/coco/poto.res50.fpn.coco.800size.3x_ms.3dmf_wo_gn.aux", defcn,
             "configs/DeFCN/POTO_3DMF_Aux_R_50_FPN_1x.yaml", _BIAS,
             (WO_GN_GAP, AUX_GAP)),
        Case("defcn/coco/poto.res50.fpn.coco.800size.3x_ms.3dmf.aux", defcn,
             "configs/DeFCN/POTO_3DMF_Aux_R_50_FPN_1x.yaml", _BIAS,
             (AUX_GAP,)),
        Case("defcn/crowdhuman/poto.res50.fpn.crowdhuman.800size.30k.3dmf.aux", defcn,
             "configs/DeFCN/POTO_3DMF_Aux_R_50_FPN_1x.yaml", _BIAS + _CROWDHUMAN,
             (AUX_GAP,)),
        # weights published before DeFCN a82393e: P6 from C5
        Case("defcn-pre-a82393e/coco/poto.res50.fpn.coco.800size.3x_ms.3dmf.aux", defcn,
             "configs/zoo/defcn/POTO_3DMF_R_50_3x.yaml", ("MODEL.FPN.TOP_LEVELS_IN_FEATURE", "res5"), ()),
    ]
    return cases


CASES = _cases()


def case_id(case: Case) -> str:
    """Readable test id: source name -> our config (+opts)."""
    cfg = case.config.split("/")[-1].replace("_R_50_FPN_1x.yaml", "")
    return f"{case.source}->{cfg}{'+opts' if case.opts else ''}"


def our_shapes(config: str, opts: tuple) -> Dict[str, Tuple[int, ...]]:
    """key -> shape of our model built from ``config`` + ``opts`` (CPU, built once per config)."""
    return _our_shapes(config, tuple(tuple(v) if isinstance(v, list) else v for v in opts))


@functools.lru_cache(maxsize=None)
def _our_shapes(config: str, opts: tuple) -> Dict[str, Tuple[int, ...]]:
    """:func:`our_shapes` with hashable ``opts`` (lists given as tuples)."""
    from detectron2.modeling import build_model

    flat = [list(v) if isinstance(v, tuple) else v for v in opts]
    model = build_model(load_cfg(config, *flat))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def source_shapes(case: Case) -> Dict[str, Tuple[int, ...]]:
    """The case's source keys and shapes (unique keys asserted)."""
    pairs = SOURCES[case.source]()
    shapes = dict(pairs)
    assert len(shapes) == len(pairs), "duplicate source keys"
    return shapes


def differences(case: Case):
    """(unmapped source keys, renamed keys not in ours, our keys not set, renamed map)."""
    src = source_shapes(case)
    ours = our_shapes(case.config, case.opts)
    renamed = {}
    unmapped = set()
    for key in src:
        new = case.module.rename(key)
        if new is not None:
            renamed[new] = key
        elif not case.module.is_ignored(key):
            unmapped.add(key)
    zero_filled = {k for k in ours if any(re.search(p, k) for p in case.module.ZERO_FILLED)}
    return unmapped, set(renamed) - set(ours), set(ours) - set(renamed) - zero_filled, renamed


def _params(kinds):
    """Cases as pytest params, strict-xfail (reason: the missing options) where the case has a
    gap of one of ``kinds``."""
    params = []
    for case in CASES:
        reasons = list(dict.fromkeys(g.reason for g in case.gaps if g.kind in kinds))
        marks = [pytest.mark.xfail(strict=True, reason="; ".join(reasons))] if reasons else []
        params.append(pytest.param(case, id=case_id(case), marks=marks))
    return params


def test_every_checkpoint_of_the_modules_has_source_keys():
    """The conversion modules' CHECKPOINTS and the generated key lists name the same models."""
    for module, prefix in ((adelaidet, "adelaidet/"), (defcn, "defcn/")):
        for name in module.CHECKPOINTS:
            assert prefix + name in SOURCES, name


@pytest.mark.parametrize("case", _params(("unmapped",)))
def test_every_source_key_is_renamed_or_ignored(case):
    unmapped, _, _, _ = differences(case)
    assert not unmapped, sorted(unmapped)[:10]


@pytest.mark.parametrize("case", _params(()))
def test_rename_is_injective(case):
    src = source_shapes(case)
    targets = [case.module.rename(k) for k in src]
    targets = [t for t in targets if t is not None]
    assert len(targets) == len(set(targets))


@pytest.mark.parametrize("case", _params(("not_in_ours", "unset")))
def test_renamed_keys_equal_our_model_keys(case):
    """Exact key equality: nothing invented, nothing of ours left unset (bar ZERO_FILLED)."""
    _, not_in_ours, unset, _ = differences(case)
    assert not not_in_ours and not unset, (sorted(not_in_ours)[:10], sorted(unset)[:10])


def _assert_exactly(actual, patterns, what):
    """Every key of ``actual`` matches one of ``patterns`` and every pattern matches one key."""
    stray = sorted(k for k in actual if not any(re.search(p, k) for p in patterns))
    assert not stray, f"{what}: undocumented {stray[:10]}"
    for p in patterns:
        assert any(re.search(p, k) for k in actual), f"{what}: documented gap {p} no longer occurs"


@pytest.mark.parametrize("case", _params(()))
def test_differences_are_exactly_the_documented_gaps(case):
    unmapped, not_in_ours, unset, _ = differences(case)
    patterns = lambda kind: [g.pattern for g in case.gaps if g.kind == kind]  # noqa: E731
    _assert_exactly(unmapped, patterns("unmapped"), "unmapped source keys")
    _assert_exactly(not_in_ours, patterns("not_in_ours"), "renamed keys missing in our model")
    _assert_exactly(unset, patterns("unset"), "our keys without a source")


@pytest.mark.parametrize("case", _params(()))
def test_shapes_match_after_convert_tensor(case):
    src = source_shapes(case)
    ours = our_shapes(case.config, case.opts)
    _, _, _, renamed = differences(case)
    wrong = []
    for new, old in renamed.items():
        if new in ours:
            shape = tuple(case.module.convert_tensor(new, torch.zeros(src[old])).shape)
            if shape != ours[new]:
                wrong.append((old, src[old], new, ours[new]))
    assert not wrong, wrong[:10]


@pytest.mark.parametrize("module,source,expected", [
    (adelaidet, "proposal_generator.fcos_head.cls_tower.0.weight", "head.cls_tower.0.weight"),
    (adelaidet, "proposal_generator.fcos_head.cls_tower.10.bias", "head.cls_tower.10.bias"),
    (adelaidet, "proposal_generator.fcos_head.bbox_tower.4.weight", "head.box_tower.4.weight"),
    (adelaidet, "proposal_generator.fcos_head.ctrness.weight", "head.centerness.weight"),
    (adelaidet, "proposal_generator.fcos_head.bbox_pred.bias", "head.box_pred.bias"),
    (adelaidet, "proposal_generator.fcos_head.scales.3.scale", "head.scales.3.scale"),
    (adelaidet, "backbone.top_block.p6.weight", "backbone.top_block.convs.0.weight"),
    (adelaidet, "backbone.top_block.p7.bias", "backbone.top_block.convs.1.bias"),
    (adelaidet, "backbone.bottom_up.res4.5.conv2.norm.running_var", "backbone.bottom_up.res4.5.conv2.norm.running_var"),
    (adelaidet, "backbone.fpn_lateral3.weight", "backbone.fpn_lateral3.weight"),
    (adelaidet, "pixel_mean", None),
    (adelaidet, "backbone.bottom_up.res3.0.conv1.norm.num_batches_tracked", None),
    (adelaidet, "proposal_generator.fcos_head.cls_tower.1.2.weight", "head.cls_tower.1.norms.2.weight"),  # per-level BN
    (adelaidet, "proposal_generator.fcos_head.bbox_tower.10.0.running_var", "head.box_tower.10.norms.0.running_var"),
    (adelaidet, "proposal_generator.fcos_head.share_tower.0.weight", None),
    (defcn, "head.cls_subnet.3.weight", "head.cls_tower.3.weight"),
    (defcn, "head.bbox_subnet.7.bias", "head.box_tower.7.bias"),
    (defcn, "head.cls_score.bias", "head.cls_logits.bias"),
    (defcn, "head.bbox_pred.weight", "head.box_pred.weight"),
    (defcn, "head.max3d.conv.weight", "head.max_filter.conv.weight"),
    (defcn, "head.max3d.norm.bias", "head.max_filter.norm.bias"),
    (defcn, "head.filter.weight", "head.filter.weight"),
    (defcn, "head.scales.0.scale", "head.scales.0.scale"),
    (defcn, "backbone.top_block.p6.bias", "backbone.top_block.convs.0.bias"),
    (defcn, "backbone.bottom_up.stem.conv1.norm.weight", "backbone.bottom_up.stem.conv1.norm.weight"),
])
def test_rename_examples(module, source, expected):
    assert module.rename(source) == expected


@pytest.mark.parametrize("module", [adelaidet, defcn])
def test_scale_parameter_becomes_0d_and_other_tensors_are_untouched(module):
    scale = torch.tensor([1.25])
    out = module.convert_tensor("head.scales.2.scale", scale)
    assert out.shape == () and out.item() == 1.25
    weight = torch.randn(4, 256, 3, 3)
    assert module.convert_tensor("head.box_pred.weight", weight) is weight

"""The composed detector's config contract: keys of the old layout fail naming the key that
replaced them, keys of a component the detector does not use fail naming the key, the bare
``AnchorFreeDetector`` needs every choice, and a fully explicit composition is its preset."""
import os

import pytest

from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

import d2_anchorfree
from d2_anchorfree.config import MOVED_KEYS

from conftest import REPO, load_cfg, make_batch, train_step_and_predict

FCOS_TINY = "configs/FCOS/FCOS_tiny_R_18_cpu.yaml"
# The fully explicit form of the FCOS preset on the tiny YAML (which sets BOX_LOSS TYPE and WEIGHT).
FCOS_EXPLICIT = ["MODEL.META_ARCHITECTURE", "AnchorFreeDetector", "MODEL.DENSE.HEAD", "FCOSHead",
                 "MODEL.DENSE.ASSIGNER", "FCOSAssigner",
                 "MODEL.DENSE.LOSSES", ["FocalLoss", "BoxLoss", "CenternessLoss"],
                 "MODEL.DENSE.POSTPROCESS", "nms", "MODEL.BOX_LOSS.WEIGHTING", "centerness"]


def new_key(moved: str) -> str:
    """The replacing key of a MOVED_KEYS value (which may go on with a note)."""
    return moved.split(" ")[0]


def write_yaml(tmp_path, body: str) -> str:
    path = tmp_path / "cfg.yaml"
    path.write_text(f'_BASE_: "{os.path.join(REPO, FCOS_TINY)}"\n' + body)
    return str(path)


def base_cfg():
    return d2_anchorfree.add_anchorfree_config(get_cfg())


# ----------------------------------------------------------------------------- old keys
@pytest.mark.parametrize("old", sorted(MOVED_KEYS))
def test_every_old_key_in_an_opts_list_fails_naming_the_new_key(old):
    with pytest.raises(KeyError, match=new_key(MOVED_KEYS[old]).replace(".", r"\.")) as info:
        base_cfg().merge_from_list([old, 1])
    assert old in str(info.value)


def test_old_key_of_a_kept_section_in_a_yaml_fails_naming_the_new_key(tmp_path):
    # MODEL.POTO still exists; its AUX_TOPK moved to MODEL.POTO_AUX.TOPK.
    path = write_yaml(tmp_path, "MODEL:\n  POTO:\n    AUX_TOPK: 5\n")
    with pytest.raises(KeyError, match=r"MODEL\.POTO\.AUX_TOPK.*MODEL\.POTO_AUX\.TOPK"):
        base_cfg().merge_from_file(path)


@pytest.mark.parametrize("section, key, new", [
    ("FCOS", "NUM_CLASSES", "MODEL.DENSE.NUM_CLASSES"),
    ("GFL", "REG_MAX", "MODEL.GFL_HEAD.REG_MAX"),
    ("VFNET", "ALPHA", "MODEL.VFL.ALPHA"),
    ("DEFCN", "USE_3DMF", "MODEL.MAX_FILTER.ENABLED"),
])
def test_old_key_of_a_removed_section_in_a_yaml_fails_naming_the_new_key(tmp_path, section, key, new):
    path = write_yaml(tmp_path, f"MODEL:\n  {section}:\n    {key}: 1\n")
    with pytest.raises(KeyError, match=rf"MODEL\.{section} was renamed.*{key} -> {new.replace('.', '[.]')}"):
        base_cfg().merge_from_file(path)


def test_every_shipped_yaml_uses_the_new_keys():
    # load_cfg merges each file with the renamed keys registered: an old key would raise.
    import glob
    for path in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True):
        load_cfg(os.path.relpath(path, REPO))


# ----------------------------------------------------------------------------- unused components
@pytest.mark.parametrize("key, value", [
    ("MODEL.ATSS.TOPK", 5),  # ATSS assigner section, FCOS uses the FCOS assigner
    ("MODEL.GFL_HEAD.REG_MAX", 8),  # GFL head section, FCOS uses the FCOS head
    ("MODEL.VFL.ALPHA", 0.5),  # varifocal loss section, FCOS trains a focal loss
    ("MODEL.POTO_AUX.TOPK", 5),  # no auxiliary assigner
    ("MODEL.MAX_FILTER.KERNEL", 5),  # 3DMF section while MODEL.MAX_FILTER.ENABLED is False
])
def test_key_of_an_unused_component_fails_naming_it(key, value):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_model(load_cfg(FCOS_TINY, key, value))


def test_key_of_an_unused_component_in_a_yaml_fails_naming_it(tmp_path):
    path = write_yaml(tmp_path, "MODEL:\n  DFL:\n    WEIGHT: 0.5\n")
    cfg = base_cfg()
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu"])
    with pytest.raises(ValueError, match=r"MODEL\.DFL\.WEIGHT"):
        build_model(cfg)


def test_default_valued_keys_of_unused_components_are_accepted():
    # A key at its default cannot be told from an unset one (the ATSS YAML sets TOPK 9 = default).
    model = build_model(load_cfg(FCOS_TINY, "MODEL.ATSS.TOPK", 9, "MODEL.GFL_HEAD.REG_MAX", 16))
    assert type(model.criterion.assigner).__name__ == "FCOSAssigner"


# ----------------------------------------------------------------------------- bare detector
@pytest.mark.parametrize("missing", ["MODEL.DENSE.HEAD", "MODEL.DENSE.ASSIGNER", "MODEL.DENSE.LOSSES"])
def test_empty_choice_of_the_bare_detector_fails_naming_the_key(missing):
    opts = list(FCOS_EXPLICIT)
    i = opts.index(missing)
    del opts[i:i + 2]
    with pytest.raises(ValueError, match=missing.replace(".", r"\.") + r" is empty.*AnchorFreeDetector"):
        build_model(load_cfg(FCOS_TINY, *opts))


def test_explicit_composition_equals_its_preset():
    preset = build_model(load_cfg(FCOS_TINY))
    explicit = build_model(load_cfg(FCOS_TINY, *FCOS_EXPLICIT))
    assert type(preset).__name__ == "FCOS" and type(explicit).__name__ == "AnchorFreeDetector"
    explicit.load_state_dict(preset.state_dict())
    assert [type(t).__name__ for t in explicit.criterion.loss_terms] == [type(t).__name__ for t in preset.criterion.loss_terms]
    assert explicit.test_nms_thresh == preset.test_nms_thresh
    batch = make_batch(128, 160)
    losses = []
    for model in (preset, explicit):
        model.train()
        with EventStorage():
            losses.append({k: v.item() for k, v in model(batch).items()})
    assert losses[0] == losses[1] and set(losses[0]) == {"loss_cls", "loss_box", "loss_ctr"}


def test_new_composition_trains_and_predicts():
    # Not a preset: the GFL head and losses with POTO one-to-one labels, 3DMF and NMS-free output.
    cfg = load_cfg("configs/GFL/GFL_tiny_R_18_cpu.yaml", "MODEL.DENSE.ASSIGNER", "POTOAssigner",
                   "MODEL.DENSE.CENTER_SAMPLING_RADIUS", 1.5, "MODEL.DENSE.POSTPROCESS", "topk",
                   "MODEL.MAX_FILTER.ENABLED", True)
    model, losses = train_step_and_predict(cfg)
    assert type(model.criterion.assigner).__name__ == "POTOAssigner" and model.head.filter is not None
    assert model.test_nms_thresh is None
    assert set(losses) == {"loss_cls", "loss_box", "loss_dfl"}


# ----------------------------------------------------------------- key-level reads, phase checks
GFL_TINY = "configs/GFL/GFL_tiny_R_18_cpu.yaml"
GFL_AUX = ["MODEL.DENSE.AUX_ASSIGNER", "POTOAuxAssigner"]


@pytest.mark.parametrize("config, opts, key", [
    # only the auxiliary loss uses the focal loss here, and it reads ALPHA / GAMMA, not WEIGHT
    (GFL_TINY, [*GFL_AUX, "MODEL.FOCAL_LOSS.WEIGHT", 5.0], "MODEL.FOCAL_LOSS.WEIGHT"),
    # POTOAuxAssigner reads POTO.ALPHA / LEVEL_PRIOR; the spatial prior is POTOAssigner's
    (GFL_TINY, [*GFL_AUX, "MODEL.POTO.SPATIAL_PRIOR", "inside"], "MODEL.POTO.SPATIAL_PRIOR"),
    # NMS-free post-processing has no NMS threshold
    ("configs/DeFCN/DeFCN_tiny_R_18_cpu.yaml", ["MODEL.DENSE.NMS_THRESH_TEST", 0.5], "MODEL.DENSE.NMS_THRESH_TEST"),
])
def test_keys_read_by_no_component_fail_at_key_level(config, opts, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        build_model(load_cfg(config, *opts))


@pytest.mark.parametrize("losses, message", [
    (["FocalLoss", "QualityFocalLoss", "BoxLoss"], r"several terms producing \['loss_cls'\]"),
    (["FocalLoss", "BoxLoss", "BoxLoss"], r"several terms producing \['loss_box'\]"),
    (["BoxLoss"], r"no term producing \['loss_cls'\]"),
    (["FocalLoss", "CenternessLoss"], r"no term producing \['loss_box'\]"),
])
def test_loss_lists_that_would_drop_or_overwrite_a_loss_fail(losses, message):
    with pytest.raises(ValueError, match=message):
        build_model(load_cfg(FCOS_TINY, "MODEL.DENSE.LOSSES", losses))


def test_initial_assigner_and_its_iterations_come_together():
    tood = "configs/TOOD/TOOD_tiny_R_18_cpu.yaml"
    with pytest.raises(ValueError, match=r"INITIAL_ASSIGNER is 'ATSSAssigner' .*INITIAL_ASSIGNER_ITERS is 0"):
        build_model(load_cfg(tood, "MODEL.DENSE.INITIAL_ASSIGNER_ITERS", 0))
    with pytest.raises(ValueError, match=r"the TOOD preset's"):
        build_model(load_cfg("configs/FCOS/FCOS_tiny_R_18_cpu.yaml", "MODEL.META_ARCHITECTURE", "TOOD",
                             "MODEL.DENSE.SIZES_OF_INTEREST", [64, 128, 256, 512],
                             "MODEL.DENSE.CENTER_SAMPLING_RADIUS", 0.0))
    with pytest.raises(ValueError, match=r"INITIAL_ASSIGNER_ITERS is 10 but there is no initial assigner"):
        build_model(load_cfg(FCOS_TINY, "MODEL.DENSE.INITIAL_ASSIGNER_ITERS", 10))
    with pytest.raises(ValueError, match=r"INITIAL_LOSSES"):
        build_model(load_cfg(FCOS_TINY, "MODEL.DENSE.INITIAL_LOSSES", ["FocalLoss", "BoxLoss"]))
    # an explicit initial assigner on another preset, with its iterations, is a valid composition
    model = build_model(load_cfg("configs/ATSS/ATSS_tiny_R_18_cpu.yaml", "MODEL.DENSE.INITIAL_ASSIGNER",
                                 "FCOSAssigner", "MODEL.DENSE.INITIAL_ASSIGNER_ITERS", 5))
    assert type(model.criterion.initial_assigner).__name__ == "FCOSAssigner"
    # its phase trains the main loss terms (INITIAL_LOSSES and INITIAL_WEIGHTING unset)
    c = model.criterion
    assert [(type(t), vars(t)) for t in c.initial_loss_terms] == [(type(t), vars(t)) for t in c.loss_terms]


# ------------------------------------------------------------------ one source: presets, reads
def test_preset_fills_a_copy_and_keeps_what_the_config_sets():
    from d2_anchorfree.modeling.components import apply_preset
    from d2_anchorfree.modeling.presets import PRESETS

    cfg = load_cfg("configs/TOOD/TOOD_tiny_R_18_cpu.yaml", "MODEL.BOX_LOSS.TYPE", "linear_iou")
    cfg.freeze()
    filled = apply_preset(cfg, PRESETS["TOOD"], "TOOD")
    # the given config is untouched
    assert cfg.MODEL.DENSE.HEAD == "" and cfg.MODEL.BOX_LOSS.WEIGHTING == "" and cfg.MODEL.DENSE.LOSSES == []
    assert filled.is_frozen()
    # the preset's values where the config left the default, the config's where it set one
    assert (filled.MODEL.DENSE.HEAD, filled.MODEL.DENSE.ASSIGNER, filled.MODEL.BOX_LOSS.WEIGHTING) == \
        ("TOODHead", "TaskAlignedAssigner", "quality")
    assert filled.MODEL.DENSE.LOSSES == ["QualityFocalLoss", "BoxLoss"]
    assert (filled.MODEL.BOX_LOSS.TYPE, filled.MODEL.BOX_LOSS.WEIGHT) == ("linear_iou", 2.0)
    # the initial phase: the preset's losses and weighting; no aux assigner (the bare default)
    assert filled.MODEL.DENSE.INITIAL_LOSSES == ["FocalLoss", "BoxLoss"]
    assert filled.MODEL.BOX_LOSS.INITIAL_WEIGHTING == "centerness" and filled.MODEL.DENSE.AUX_ASSIGNER == "none"
    # the bare detector: generic values for the optional choices, an initial phase like the main one
    bare = apply_preset(load_cfg(FCOS_TINY, *FCOS_EXPLICIT, "MODEL.DENSE.INITIAL_ASSIGNER", "ATSSAssigner",
                                 "MODEL.DENSE.INITIAL_ASSIGNER_ITERS", 3), None, "AnchorFreeDetector")
    assert (bare.MODEL.DENSE.POSTPROCESS, bare.MODEL.QFL.TARGET) == ("nms", "iou")
    assert bare.MODEL.DENSE.INITIAL_LOSSES == bare.MODEL.DENSE.LOSSES
    assert bare.MODEL.BOX_LOSS.INITIAL_WEIGHTING == bare.MODEL.BOX_LOSS.WEIGHTING


def test_recording_view_records_the_values_read():
    from d2_anchorfree.modeling.components import recording_view

    view, reads = recording_view(load_cfg(FCOS_TINY))
    d = view.MODEL.DENSE  # a section: not a value
    assert reads == set()
    assert d.NUM_CONVS == 2 and view.MODEL["ATSS"]["TOPK"] == 9 and list(d.IN_FEATURES)[0] == "p3"
    assert reads == {"MODEL.DENSE.NUM_CONVS", "MODEL.ATSS.TOPK", "MODEL.DENSE.IN_FEATURES"}
    with pytest.raises(Exception, match="immutable"):
        view.MODEL.DENSE.NUM_CONVS = 3


def test_a_key_is_checked_exactly_when_the_components_do_not_read_it():
    # POTO reads MODEL.DENSE.CENTER_SAMPLING_RADIUS only with its "center" spatial prior and
    # SIZES_OF_INTEREST only with the "fcos" level prior: what from_config reads is what is checked.
    defcn = "configs/DeFCN/DeFCN_tiny_R_18_cpu.yaml"
    build_model(load_cfg(defcn, "MODEL.DENSE.CENTER_SAMPLING_RADIUS", 2.5))
    with pytest.raises(ValueError, match=r"MODEL\.DENSE\.CENTER_SAMPLING_RADIUS"):
        build_model(load_cfg(defcn, "MODEL.POTO.SPATIAL_PRIOR", "inside", "MODEL.DENSE.CENTER_SAMPLING_RADIUS", 2.5))
    with pytest.raises(ValueError, match=r"MODEL\.DENSE\.SIZES_OF_INTEREST"):
        build_model(load_cfg(defcn, "MODEL.DENSE.SIZES_OF_INTEREST", [32, 64, 128, 256]))
    model = build_model(load_cfg(defcn, "MODEL.POTO.LEVEL_PRIOR", "fcos", "MODEL.DENSE.SIZES_OF_INTEREST", [32, 64, 128, 256]))
    assert model.criterion.assigner.prior.ranges[1] == (32.0, 64.0)


def test_negative_box_loss_weight_is_an_error():
    # -1 is the default ("the preset's"); any other negative weight is refused
    assert build_model(load_cfg(FCOS_TINY, "MODEL.BOX_LOSS.WEIGHT", -1.0)).criterion.loss_terms[1].weight == 1.0
    with pytest.raises(ValueError, match=r"MODEL\.BOX_LOSS\.WEIGHT must be >= 0, got -0\.5"):
        build_model(load_cfg(FCOS_TINY, "MODEL.BOX_LOSS.WEIGHT", -0.5))

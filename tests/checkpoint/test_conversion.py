"""Checkpoint conversion: reading other frameworks' files without running code from them, the
complete-and-exact renaming core (``convert_state_dict``), MMDetection's names on the zoo configs,
and ``d2af convert`` (``d2_anchorfree/cli/convert.py``) end to end on a synthetic MMDetection 3.x checkpoint."""
import collections
import functools
import pickle
import re
import types

import numpy as np
import pytest
import torch

from detectron2.modeling import build_model

from d2_anchorfree.checkpoint.conversion import (
    ConversionError, convert_checkpoint, convert_state_dict, load_source_checkpoint,
)
from d2_anchorfree.checkpoint.conversion import mmdet
from d2_anchorfree.checkpoint.safe_load import UnsafeWeightFileError

from d2_anchorfree.cli import convert as convert_tool

from conftest import REPO, load_cfg

ZOO = "configs/zoo/mmdet/"
GFL = ZOO + "gfl_r50_fpn_1x_coco.yaml"
ATSS = ZOO + "atss_r50_fpn_1x_coco.yaml"
FCOS = ZOO + "fcos_r50-caffe_fpn_gn-head_1x_coco.yaml"
FCOS_TRICKS = ZOO + "fcos_r50-caffe_fpn_gn-head-center-normbbox-centeronreg-giou_1x_coco.yaml"
VFNET = ZOO + "vfnet_r50_fpn_1x_coco.yaml"
VFNET_DCN = ZOO + "vfnet_r50-mdconv-c3-c5_fpn_ms-2x_coco.yaml"
TOOD = ZOO + "tood_r50_fpn_1x_coco.yaml"


# ---------------------------------------------------------------------------------------------
# load_source_checkpoint

CONSTRUCTED = []  # every Tripwire.__init__ call: unpickling one would append "unpickled"


class Tripwire:
    """Unpickling this calls ``Tripwire("unpickled")``: stands for any code a file could run."""

    def __init__(self, tag):
        CONSTRUCTED.append(tag)

    def __reduce__(self):
        return (Tripwire, ("unpickled",))


TRIPWIRE = f"{Tripwire.__module__}.{Tripwire.__qualname__}"  # the global a pickle of it names


def _state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"backbone.conv1.weight": torch.randn(4, 3, 1, 1, generator=g),
            "bbox_head.gfl_cls.bias": torch.randn(2, generator=g)}


def test_mmdet3_layout_with_numpy_scalars_in_meta_loads(tmp_path):
    state = _state()
    path = tmp_path / "mmdet3.pth"
    torch.save({"meta": {"mmdet_version": "3.3.0", "dataset_meta": {"classes": ("a", "b")},
                         "seed": np.int64(3), "lr": np.float64(0.1)},
                "state_dict": state}, path)
    got, meta = load_source_checkpoint(str(path))
    assert set(got) == set(state)
    for k in state:
        assert torch.equal(got[k], state[k])
    assert meta["meta"]["dataset_meta"]["classes"] == ("a", "b")
    assert meta["meta"]["seed"] == 3 and meta["meta"]["lr"] == 0.1


def test_module_prefix_is_stripped_and_model_wrapping_works(tmp_path):
    state = _state()
    path = tmp_path / "ddp.pth"
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, path)
    got, _ = load_source_checkpoint(str(path))
    assert sorted(got) == sorted(state)  # "module.backbone.conv1.weight" -> "backbone.conv1.weight"
    # detectron2 / AdelaiDet: {"model": ..., "iteration": ...}; the iteration goes to the metadata
    path = tmp_path / "d2.pth"
    torch.save({"model": state, "iteration": 89999}, path)
    got, meta = load_source_checkpoint(str(path))
    assert sorted(got) == sorted(state) and meta == {"iteration": 89999}
    assert torch.equal(got["bbox_head.gfl_cls.bias"], state["bbox_head.gfl_cls.bias"])
    # a bare state dict at the top level
    path = tmp_path / "bare.pth"
    torch.save(state, path)
    assert sorted(load_source_checkpoint(str(path))[0]) == sorted(state)


def test_pkl_with_numpy_arrays_loads_as_tensors(tmp_path):
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = tmp_path / "d2_zoo.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"stem.conv1.weight": arr, "stem.conv1.norm.bias": arr[:, ::2]},
                     "__author__": "Detectron2 Model Zoo"}, f)
    got, meta = load_source_checkpoint(str(path))
    assert meta == {"__author__": "Detectron2 Model Zoo"}
    assert isinstance(got["stem.conv1.weight"], torch.Tensor)
    assert got["stem.conv1.weight"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert got["stem.conv1.norm.bias"].tolist() == [[0, 2], [3, 5]]  # a strided view, copied


@pytest.mark.parametrize("ext", [".pth", ".pkl"])
def test_file_naming_another_object_is_refused_before_it_runs(tmp_path, ext):
    obj = Tripwire("made by the test")
    CONSTRUCTED.clear()
    data = {"meta": {"hook": obj}, "state_dict": _state()}
    path = tmp_path / ("evil" + ext)
    if ext == ".pkl":
        with open(path, "wb") as f:
            pickle.dump(data, f, protocol=2)
    else:
        torch.save(data, path)
    with pytest.raises(UnsafeWeightFileError) as info:
        load_source_checkpoint(str(path))
    assert CONSTRUCTED == []  # Tripwire("unpickled") never ran
    message = str(info.value)
    assert TRIPWIRE in message and str(path) in message
    assert "torch.save" in message  # how to keep only the tensors
    if ext == ".pth":
        assert "weights_only.pth" in message and "'state_dict'" in message


def test_pkl_naming_a_stdlib_class_is_refused(tmp_path):
    path = tmp_path / "counter.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": {"w": np.zeros(2)}, "stats": collections.Counter("aab")}, f, protocol=2)
    with pytest.raises(UnsafeWeightFileError, match=r"collections\.Counter"):
        load_source_checkpoint(str(path))


def test_not_a_state_dict_and_missing_file(tmp_path):
    for name, save in (("list.pth", lambda p: torch.save([torch.zeros(2), torch.ones(2)], p)),
                       ("list.pkl", lambda p: p.write_bytes(pickle.dumps([np.zeros(2), np.ones(2)])))):
        path = tmp_path / name
        save(path)
        with pytest.raises(ConversionError, match=f"{re.escape(str(path))} holds a list"):
            load_source_checkpoint(str(path))
    path = tmp_path / "string_entry.pth"
    torch.save({"state_dict": {"w": torch.zeros(1), "note": "hello"}}, path)
    with pytest.raises(ConversionError, match="entry 'note' is a str"):
        load_source_checkpoint(str(path))
    path = tmp_path / "empty.pth"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ConversionError, match="holds no tensors"):
        load_source_checkpoint(str(path))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_source_checkpoint(str(tmp_path / "nope.pth"))


# ---------------------------------------------------------------------------------------------
# convert_state_dict with a fake source


def _fake_source(mapping, ignored=(r".*\.counter",), zero_filled=(r"m\.zero_bias",), seen=None):
    def make_renamer(cfg, target_keys):
        if seen is not None:
            seen.append((cfg, set(target_keys)))
        return mapping.get

    return types.SimpleNamespace(NAME="Fake", IGNORED=ignored, ZERO_FILLED=zero_filled,
                                 make_renamer=make_renamer, detect=lambda state: True)


TARGET = {"m.w": (2, 3), "m.b": (2,), "m.zero_bias": (3,)}
MAPPING = {"src.w": "m.w", "src.b": "m.b"}


def _source_state():
    return {"src.w": torch.arange(6.0).reshape(2, 3), "src.b": torch.tensor([7.0, -8.0]),
            "src.bn.counter": torch.tensor(5)}


def test_convert_copies_values_zero_fills_and_reports_ignored_keys():
    state, seen = _source_state(), []
    cfg = object()
    out, report = convert_state_dict(state, _fake_source(MAPPING, seen=seen), cfg, TARGET)
    assert seen == [(cfg, set(TARGET))]  # the renamer is made from our config and the model's keys
    assert sorted(out) == ["m.b", "m.w", "m.zero_bias"]
    assert out["m.w"].tolist() == [[0, 1, 2], [3, 4, 5]] and out["m.b"].tolist() == [7, -8]
    assert out["m.zero_bias"].tolist() == [0, 0, 0]
    assert report.zero_filled == ["m.zero_bias"] and report.ignored == ["src.bn.counter"]
    assert report.converted == 2  # 3 outputs, 1 of them zero-filled
    assert report.summary() == "Fake: 2 tensors converted, 1 ignored, 1 zero-filled"
    # copies, not views: changing the source afterwards leaves the result alone
    state["src.w"].add_(100)
    assert out["m.w"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert out["m.w"].data_ptr() != state["src.w"].data_ptr()


def _conversion_error(state, mapping=MAPPING, target=TARGET):
    with pytest.raises(ConversionError) as info:
        convert_state_dict(state, _fake_source(mapping), None, target)
    return str(info.value)


def test_unused_source_key_is_an_error_naming_it():
    state = {**_source_state(), "src.stray": torch.zeros(1)}
    msg = _conversion_error(state)
    assert "1 source tensors have no counterpart in the model: src.stray" in msg


def test_key_mapped_to_a_key_the_model_lacks_is_an_error_naming_both():
    state = {**_source_state(), "src.extra": torch.zeros(1)}
    msg = _conversion_error(state, {**MAPPING, "src.extra": "m.not_there"})
    assert "src.extra -> m.not_there" in msg and "keys the model does not have" in msg


def test_two_sources_on_one_key_collide():
    state = {**_source_state(), "src.w2": torch.ones(2, 3)}
    msg = _conversion_error(state, {**MAPPING, "src.w2": "m.w"})
    assert "source tensors collide: src.w and src.w2 -> m.w" in msg


def test_shape_mismatch_names_the_keys_and_shapes():
    state = {**_source_state(), "src.b": torch.zeros(3)}
    msg = _conversion_error(state)
    assert "src.b (3,) -> m.b (2,)" in msg


def test_unset_model_key_is_an_error_naming_it():
    state = _source_state()
    del state["src.b"]
    msg = _conversion_error(state)
    assert "1 model tensors are left unset: m.b" in msg
    # without the ZERO_FILLED rule the zero-fillable key is unset too
    with pytest.raises(ConversionError, match="2 model tensors are left unset: m.b, m.zero_bias"):
        convert_state_dict(state, _fake_source(MAPPING, zero_filled=()), None, TARGET)


def test_all_problems_are_reported_at_once():
    state = {"src.w": torch.zeros(3, 2), "src.stray": torch.zeros(1)}
    msg = _conversion_error(state)
    assert "Fake checkpoint does not convert exactly" in msg
    for part in ("src.stray", "src.w (3, 2) -> m.w (2, 3)", "left unset: m.b, m.w"):
        assert part in msg, part


# ---------------------------------------------------------------------------------------------
# MMDetection names on the zoo configs


@functools.lru_cache(maxsize=None)
def _model_shapes(config):
    """{key: shape} of the model ``config`` builds (built once per config)."""
    return {k: tuple(v.shape) for k, v in build_model(load_cfg(config)).state_dict().items()}


def _model_keys(config):
    return frozenset(_model_shapes(config))


def _renamer(config):
    return mmdet.make_renamer(load_cfg(config), _model_keys(config))


def _check_pairs(config, pairs):
    rename, keys = _renamer(config), _model_keys(config)
    for src, ours in pairs:
        assert rename(src) == ours, src
        assert ours in keys, ours  # the expected name is a real key of the model


def test_backbone_and_neck_names():
    _check_pairs(GFL, [
        ("backbone.conv1.weight", "backbone.bottom_up.stem.conv1.weight"),
        ("backbone.bn1.running_var", "backbone.bottom_up.stem.conv1.norm.running_var"),
        ("backbone.bn1.weight", "backbone.bottom_up.stem.conv1.norm.weight"),
        ("backbone.layer1.0.downsample.0.weight", "backbone.bottom_up.res2.0.shortcut.weight"),
        ("backbone.layer1.0.downsample.1.running_mean", "backbone.bottom_up.res2.0.shortcut.norm.running_mean"),
        ("backbone.layer3.5.bn2.weight", "backbone.bottom_up.res4.5.conv2.norm.weight"),  # layer i -> res(i+1)
        ("backbone.layer4.2.conv3.weight", "backbone.bottom_up.res5.2.conv3.weight"),
        # lateral/fpn conv i is level IN_FEATURES[i] (start_level 1: C3..C5)
        ("neck.lateral_convs.0.conv.weight", "backbone.fpn_lateral3.weight"),
        ("neck.lateral_convs.2.conv.bias", "backbone.fpn_lateral5.bias"),
        ("neck.fpn_convs.2.conv.bias", "backbone.fpn_output5.bias"),
        # fpn_convs 3 and 4 are the extra levels P6, P7 (3 backbone levels before them)
        ("neck.fpn_convs.3.conv.weight", "backbone.top_block.convs.0.weight"),
        ("neck.fpn_convs.4.conv.bias", "backbone.top_block.convs.1.bias"),
    ])
    _check_pairs(VFNET_DCN, [
        ("backbone.layer2.0.conv2.conv_offset.weight", "backbone.bottom_up.res3.0.conv2_offset.weight"),
        ("backbone.layer4.2.conv2.conv_offset.bias", "backbone.bottom_up.res5.2.conv2_offset.bias"),
    ])


def test_head_names_per_family():
    # GN towers: [conv, gn, relu] per layer, so layer i's conv is index 3i and its gn 3i + 1
    _check_pairs(GFL, [
        ("bbox_head.cls_convs.3.gn.bias", "head.cls_tower.10.bias"),  # 3 * 3 + 1
        ("bbox_head.reg_convs.0.conv.weight", "head.box_tower.0.weight"),
        ("bbox_head.reg_convs.2.conv.weight", "head.box_tower.6.weight"),  # 3 * 2
        ("bbox_head.gfl_cls.bias", "head.cls_logits.bias"),
        ("bbox_head.gfl_reg.weight", "head.box_pred.weight"),
        ("bbox_head.scales.2.scale", "head.scales.2.scale"),
    ])
    _check_pairs(ATSS, [
        ("bbox_head.atss_cls.weight", "head.cls_logits.weight"),
        ("bbox_head.atss_reg.bias", "head.box_pred.bias"),
        ("bbox_head.atss_centerness.weight", "head.centerness.weight"),
        ("bbox_head.scales.4.scale", "head.scales.4.scale"),
    ])
    _check_pairs(FCOS, [
        ("bbox_head.conv_cls.weight", "head.cls_logits.weight"),
        ("bbox_head.conv_reg.bias", "head.box_pred.bias"),
        ("bbox_head.conv_centerness.weight", "head.centerness.weight"),
        ("bbox_head.scales.2.scale", "head.scales.2.scale"),
    ])
    _check_pairs(FCOS_TRICKS, [("bbox_head.cls_convs.1.conv.bias", "head.cls_tower.3.bias")])  # conv_bias=True
    # VFNet with DCN: 3 convs, the last one (layer 2) at index 6 is the DCNv2 with its offset conv
    _check_pairs(VFNET_DCN, [
        ("bbox_head.reg_convs.2.conv.conv_offset.bias", "head.box_tower.6.conv_offset.bias"),
        ("bbox_head.cls_convs.2.conv.conv_offset.weight", "head.cls_tower.6.conv_offset.weight"),
        ("bbox_head.cls_convs.2.conv.weight", "head.cls_tower.6.weight"),
        ("bbox_head.cls_convs.2.gn.weight", "head.cls_tower.7.weight"),
        ("bbox_head.scales.2.scale", "head.scales_init.2.scale"),  # VFNet's scales are ours scales_init
        ("bbox_head.scales_refine.1.scale", "head.scales_refine.1.scale"),
        ("bbox_head.vfnet_reg_conv.conv.weight", "head.box_init_conv.0.weight"),
        ("bbox_head.vfnet_reg_conv.gn.weight", "head.box_init_conv.1.weight"),
        ("bbox_head.vfnet_reg.bias", "head.box_init_pred.bias"),
        ("bbox_head.vfnet_reg_refine_dconv.weight", "head.box_refine_dconv.weight"),
        ("bbox_head.vfnet_reg_refine.weight", "head.box_refine_pred.weight"),
        ("bbox_head.vfnet_cls_dconv.weight", "head.cls_dconv.weight"),
        ("bbox_head.vfnet_cls.bias", "head.cls_logits.bias"),
    ])
    _check_pairs(VFNET, [("bbox_head.scales.0.scale", "head.scales_init.0.scale")])
    _check_pairs(TOOD, [
        ("bbox_head.inter_convs.5.conv.weight", "head.inter_convs.5.0.weight"),  # one conv_tower each
        ("bbox_head.inter_convs.0.gn.bias", "head.inter_convs.0.1.bias"),
        ("bbox_head.cls_decomp.reduction_conv.conv.weight", "head.cls_decomp.reduction_conv.weight"),
        ("bbox_head.reg_decomp.reduction_conv.gn.bias", "head.reg_decomp.norm.bias"),
        ("bbox_head.cls_decomp.layer_attention.0.weight", "head.cls_decomp.layer_attention.0.weight"),
        ("bbox_head.reg_decomp.layer_attention.2.bias", "head.reg_decomp.layer_attention.2.bias"),
        ("bbox_head.cls_prob_module.2.bias", "head.cls_prob_module.2.bias"),
        ("bbox_head.reg_offset_module.0.weight", "head.reg_offset_module.0.weight"),
        ("bbox_head.tood_cls.weight", "head.tood_cls.weight"),
        ("bbox_head.tood_reg.bias", "head.tood_reg.bias"),
        ("bbox_head.scales.4.scale", "head.scales.4.scale"),
    ])


def test_towers_without_norm_have_two_modules_per_layer():
    cfg = load_cfg(GFL, "MODEL.DENSE.NORM", "")
    rename = mmdet.make_renamer(cfg, set())
    # [conv, relu] per layer: layer 1's conv at index 2, layer 3's at 6
    assert rename("bbox_head.cls_convs.1.conv.weight") == "head.cls_tower.2.weight"
    assert rename("bbox_head.reg_convs.3.conv.bias") == "head.box_tower.6.bias"


def test_unknown_names_map_to_none():
    rename = _renamer(GFL)
    for key in ("backbone.fc.weight", "backbone.layer1.0.bn1.foo", "neck.lateral_convs.3.conv.weight",
                "roi_head.bbox_head.fc_cls.weight", "bbox_head.unknown_conv.weight",
                "bbox_head.cls_convs.0.conv.foo", "data_preprocessor.mean"):
        assert rename(key) is None, key


def test_bn_counters_are_ignored_and_detect():
    state = {"backbone.conv1.weight": torch.ones(1, 1, 1, 1),
             "backbone.layer1.0.bn1.num_batches_tracked": torch.tensor(7)}
    target = {"backbone.bottom_up.stem.conv1.weight": (1, 1, 1, 1)}
    out, report = convert_state_dict(state, mmdet, load_cfg(GFL), target)
    assert list(out) == ["backbone.bottom_up.stem.conv1.weight"]
    assert report.ignored == ["backbone.layer1.0.bn1.num_batches_tracked"] and report.converted == 1
    assert mmdet.detect({"backbone.conv1.weight": 0, "bbox_head.gfl_cls.bias": 0})
    assert not mmdet.detect({"backbone.conv1.weight": 0, "head.cls_logits.bias": 0})
    assert not mmdet.detect({"bbox_head.gfl_cls.bias": 0})


def test_gfl_integral_buffer_of_real_checkpoints_is_accepted():
    """MMDetection's GFLHead saves Integral.project (0..reg_max) as a buffer: ignored."""
    keys = _model_keys(GFL)
    target = {k: () for k in keys}  # shapes do not matter for this key
    state = {_mmdet_name(k): torch.zeros(()) for k in keys}
    convert_state_dict(state, mmdet, load_cfg(GFL), target)  # the rest converts
    state["bbox_head.integral.project"] = torch.linspace(0, 16, 17)
    convert_state_dict(state, mmdet, load_cfg(GFL), target)  # must not raise


# ---------------------------------------------------------------------------------------------
# End to end: a synthetic MMDetection GFL checkpoint through tools/convert_checkpoint.py


def _mmdet_name(key):
    """Our GFL R-50 key -> MMDetection's, written from MMDetection's module names (the inverse of
    the converter's rules, by hand). KeyError for a key the GFL model should not have."""
    rules = [
        (r"backbone\.bottom_up\.stem\.conv1\.weight", lambda m: "backbone.conv1.weight"),
        (r"backbone\.bottom_up\.stem\.conv1\.norm\.(\w+)", lambda m: f"backbone.bn1.{m[1]}"),
        (r"backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.weight",
         lambda m: f"backbone.layer{int(m[1]) - 1}.{m[2]}.conv{m[3]}.weight"),
        (r"backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.norm\.(\w+)",
         lambda m: f"backbone.layer{int(m[1]) - 1}.{m[2]}.bn{m[3]}.{m[4]}"),
        (r"backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.weight",
         lambda m: f"backbone.layer{int(m[1]) - 1}.{m[2]}.downsample.0.weight"),
        (r"backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.norm\.(\w+)",
         lambda m: f"backbone.layer{int(m[1]) - 1}.{m[2]}.downsample.1.{m[3]}"),
        (r"backbone\.fpn_lateral(\d)\.(\w+)", lambda m: f"neck.lateral_convs.{int(m[1]) - 3}.conv.{m[2]}"),
        (r"backbone\.fpn_output(\d)\.(\w+)", lambda m: f"neck.fpn_convs.{int(m[1]) - 3}.conv.{m[2]}"),
        (r"backbone\.top_block\.convs\.(\d)\.(\w+)", lambda m: f"neck.fpn_convs.{3 + int(m[1])}.conv.{m[2]}"),
        (r"head\.(cls|box)_tower\.(\d+)\.(\w+)",
         lambda m: (f"bbox_head.{'cls' if m[1] == 'cls' else 'reg'}_convs.{int(m[2]) // 3}."
                    f"{'conv' if int(m[2]) % 3 == 0 else 'gn'}.{m[3]}")),
        (r"head\.cls_logits\.(\w+)", lambda m: f"bbox_head.gfl_cls.{m[1]}"),
        (r"head\.box_pred\.(\w+)", lambda m: f"bbox_head.gfl_reg.{m[1]}"),
        (r"head\.scales\.(\d)\.scale", lambda m: f"bbox_head.scales.{m[1]}.scale"),
    ]
    for pattern, make in rules:
        m = re.fullmatch(pattern, key)
        if m:
            return make(m)
    raise KeyError(key)


@pytest.fixture(scope="module")
def gfl_source():
    """(our key -> its MMDetection name, MMDetection state dict with a num_batches_tracked per BN)."""
    shapes = _model_shapes(GFL)
    names = {k: _mmdet_name(k) for k in shapes}
    assert len(set(names.values())) == len(names)  # one source name per key
    g = torch.Generator().manual_seed(0)
    state = {names[k]: torch.randn(shape, generator=g) for k, shape in shapes.items()}
    for name in list(state):
        if name.endswith(".running_mean"):  # every BN: stem bn1, bn1-3 per block, downsample.1
            state[name[:-len("running_mean")] + "num_batches_tracked"] = torch.tensor(1000)
    return names, state


def _save_mmdet3(path, state):
    torch.save({"meta": {"mmdet_version": "3.3.0", "dataset_meta": {"classes": tuple(f"c{i}" for i in range(80))},
                         "seed": np.int64(3), "epoch": 12, "lr": np.float64(0.01)},
                "state_dict": state}, path)


MISSING = "bbox_head.gfl_reg.bias"  # the source of head.box_pred.bias
STRAY = "bbox_head.extra_conv.weight"


@pytest.fixture(scope="module")
def gfl_file(gfl_source, tmp_path_factory):
    """The synthetic checkpoint saved in MMDetection 3.x's layout."""
    path = tmp_path_factory.mktemp("mmdet") / "gfl_mmdet.pth"
    _save_mmdet3(path, gfl_source[1])
    return path


def _check_converted(path, gfl_source):
    names, state = gfl_source
    blob = torch.load(path, map_location="cpu", weights_only=True)
    assert blob["matching_heuristics"] is False and "MMDetection" in blob["__author__"]
    converted = blob["model"]
    assert sorted(converted) == sorted(names)
    for ours, theirs in names.items():  # same keys as the model, each the source's values
        assert torch.equal(converted[ours], state[theirs]), ours


def test_convert_checkpoint_end_to_end(tmp_path, gfl_source, gfl_file):
    _, state = gfl_source
    # 16 bottleneck blocks x 3 BN + 4 downsample BN + the stem's = 53 BN counters
    assert sum(k.endswith("num_batches_tracked") for k in state) == 53
    out = tmp_path / "gfl_ours.pth"
    _, report = convert_checkpoint(str(gfl_file), load_cfg(GFL), str(out))
    # 314 model tensors: stem 5 + 16 blocks x 3 convs x 5 + 4 shortcuts x 5 = 265 backbone,
    # FPN 3 x 2 x 2 + top block 2 x 2 = 16, head 2 towers x 4 x 3 + 2 + 2 + 5 scales = 33
    assert (report.source, report.converted, len(report.ignored), report.zero_filled) == ("MMDetection", 314, 53, [])
    _check_converted(out, gfl_source)


def test_conversion_names_missing_and_stray_keys(gfl_source):
    _, state = gfl_source
    cfg, target = load_cfg(GFL), _model_shapes(GFL)
    missing = {k: v for k, v in state.items() if k != MISSING}
    with pytest.raises(ConversionError, match=r"1 model tensors are left unset: head\.box_pred\.bias$"):
        convert_state_dict(missing, mmdet, cfg, target)
    with pytest.raises(ConversionError, match=rf"1 source tensors have no counterpart in the model: {STRAY}$"):
        convert_state_dict({**state, STRAY: torch.zeros(3)}, mmdet, cfg, target)


def _main(src, out):
    # options first, the checkpoint last (see test_documented_command_line_parses for the other order)
    return convert_tool.main(["--config-file", f"{REPO}/{GFL}", "--output", str(out), str(src)])


def test_command_line_with_overrides():
    args = convert_tool.parse_args(
        ["--config-file", "c.yaml", "--output", "o.pth", "ck.pth", "MODEL.DENSE.NUM_CLASSES", "1"])
    assert (args.checkpoint, args.config_file, args.output, args.source) == ("ck.pth", "c.yaml", "o.pth", "auto")
    assert args.opts == ["MODEL.DENSE.NUM_CLASSES", "1"]


def test_documented_command_line_parses():
    """The usage in d2af convert's docstring parses as written."""
    import shlex

    usage = convert_tool.__doc__.split("d2af convert", 1)[1].split("\n    d2af", 1)[0]
    argv = shlex.split(usage.replace("\\\n", " "))
    args = convert_tool.parse_args(argv)
    assert args.checkpoint.endswith(".pth") and args.output == "gfl_r50_mmdet.pth" and args.opts == []


@pytest.mark.slow  # three conversions into R-50 GFL models
def test_tool_main_end_to_end(tmp_path, capsys, gfl_source, gfl_file):
    out = tmp_path / "gfl_ours.pth"
    assert _main(gfl_file, out) == 0
    assert "MMDetection: 314 tensors converted, 53 ignored, 0 zero-filled" in capsys.readouterr().out
    _check_converted(out, gfl_source)
    _, state = gfl_source
    never = tmp_path / "never.pth"
    _save_mmdet3(tmp_path / "missing.pth", {k: v for k, v in state.items() if k != MISSING})
    assert _main(tmp_path / "missing.pth", never) == 1
    assert "1 model tensors are left unset: head.box_pred.bias" in capsys.readouterr().err
    _save_mmdet3(tmp_path / "stray.pth", {**state, STRAY: torch.zeros(3)})
    assert _main(tmp_path / "stray.pth", never) == 1
    assert "no counterpart in the model: bbox_head.extra_conv.weight" in capsys.readouterr().err
    assert _main(tmp_path / "absent.pth", never) == 1
    assert "absent.pth does not exist" in capsys.readouterr().err
    assert not never.exists()

"""MMDetection (2.x and 3.x) checkpoints -> d2_anchorfree.

Both layouts store the model under ``"state_dict"`` with the same module names (2.x keeps the
class names in ``meta["CLASSES"]``, 3.x in ``meta["dataset_meta"]["classes"]``). Names read from
MMDetection 3.3.0: ``mmdet/models/backbones/resnet.py`` (``conv1``/``bn1`` stem,
``layer{i}.{j}.conv{k}``/``bn{k}``, ``downsample.0/1``, DCN ``conv2.conv_offset``),
``mmdet/models/necks/fpn.py`` (``lateral_convs.{i}.conv``, ``fpn_convs.{i}.conv``, the extra
levels appended to ``fpn_convs``), mmcv's ``ConvModule`` (``.conv``, ``.gn``/``.bn``) and the
heads ``fcos_head.py``, ``atss_head.py``, ``gfl_head.py``, ``vfnet_head.py``, ``tood_head.py``.

Our side: detectron2's ResNet (``backbone.bottom_up.stem.conv1[.norm]``,
``res{i+1}.{j}.conv{k}[.norm]``, ``shortcut[.norm]``, DCN ``conv2_offset``), detectron2's FPN
(``backbone.fpn_lateral{L}``, ``fpn_output{L}``) with the extra levels in
``backbone.top_block.convs.{t}``, and the heads' names (``heads/*.py``).
"""
import re
from typing import Any, Callable, Collection, List, Mapping, Optional

from .core import values_differ

NAME = "MMDetection"

IGNORED = (
    r"\.num_batches_tracked$",  # BN update counters: not weights, unused by frozen BN
    # GFLHead's Integral: the constant bin values 0..reg_max, a saved buffer (our
    # distribution_to_distance builds them)
    r"^bbox_head\.integral\.project$",
)

# Predictor names per MMDetection head -> ours ("towers" are cls_convs/reg_convs everywhere).
_HEAD_LAYERS = {
    # FCOSHead
    "conv_cls": "cls_logits", "conv_reg": "box_pred", "conv_centerness": "centerness",
    # ATSSHead
    "atss_cls": "cls_logits", "atss_reg": "box_pred", "atss_centerness": "centerness",
    # GFLHead
    "gfl_cls": "cls_logits", "gfl_reg": "box_pred",
    # VFNetHead
    "vfnet_reg": "box_init_pred", "vfnet_reg_refine_dconv": "box_refine_dconv",
    "vfnet_reg_refine": "box_refine_pred", "vfnet_cls_dconv": "cls_dconv", "vfnet_cls": "cls_logits",
    "scales_refine": "scales_refine",
    # TOODHead (its own names are kept)
    "tood_cls": "tood_cls", "tood_reg": "tood_reg",
    # FCOSHead before MMDetection 2.x's renaming (AnchorFreeHead._load_from_state_dict accepts
    # version-less checkpoints with these names)
    "fcos_cls": "cls_logits", "fcos_reg": "box_pred", "fcos_centerness": "centerness",
}


def detect(state) -> bool:
    """A state dict from MMDetection: it has ``bbox_head.*`` and ``backbone.*`` keys."""
    return any(k.startswith("bbox_head.") for k in state) and any(k.startswith("backbone.") for k in state)


def _backbone(key: str) -> Optional[str]:
    m = re.fullmatch(r"conv1\.weight", key)
    if m:
        return "stem.conv1.weight"
    m = re.fullmatch(r"bn1\.(weight|bias|running_mean|running_var)", key)
    if m:
        return f"stem.conv1.norm.{m.group(1)}"
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(.+)", key)
    if not m:
        return None
    stage, block, rest = int(m.group(1)) + 1, m.group(2), m.group(3)
    rules = (
        (r"conv(\d)\.weight", r"conv\1.weight"),
        (r"bn(\d)\.(weight|bias|running_mean|running_var)", r"conv\1.norm.\2"),
        (r"conv2\.conv_offset\.(weight|bias)", r"conv2_offset.\1"),  # DCN / DCNv2 offsets (+ masks)
        (r"downsample\.0\.weight", "shortcut.weight"),
        (r"downsample\.1\.(weight|bias|running_mean|running_var)", r"shortcut.norm.\1"),
    )
    for pattern, repl in rules:
        if re.fullmatch(pattern, rest):
            return f"res{stage}.{block}." + re.sub(pattern, repl, rest)
    return None


def _tower_index(layer: int, part: str, has_norm: bool) -> int:
    # our conv_tower: [conv, norm, ReLU] per layer with a norm, [conv, ReLU] without
    per_layer = 3 if has_norm else 2
    return layer * per_layer + (0 if part == "conv" else 1)


def make_renamer(cfg, target_keys: Collection[str]) -> Callable[[str], Optional[str]]:
    """Renamer for a model built from ``cfg``: MMDetection FPN level i (of the used backbone levels,
    from ``start_level``) is our ``MODEL.FPN.IN_FEATURES[i]``; ``fpn_convs`` beyond them are
    the extra levels (our ``top_block.convs``); head towers follow ``MODEL.DENSE.NORM``.

    Args:
        cfg: our config. target_keys: the model's state-dict keys (VFNet's ``scales`` are our
            ``scales_init``).

    Returns:
        callable: MMDetection key -> our key, or ``None`` for a key with no counterpart.
    """
    levels = [int(f[-1]) for f in cfg.MODEL.FPN.IN_FEATURES]  # "res3" -> 3
    has_norm = bool(cfg.MODEL.DENSE.NORM)
    vfnet = "head.scales_init.0.scale" in target_keys

    def rename(key: str) -> Optional[str]:
        if key.startswith("backbone."):
            new = _backbone(key[len("backbone."):])
            return None if new is None else "backbone.bottom_up." + new
        m = re.fullmatch(r"neck\.(lateral_convs|fpn_convs)\.(\d+)\.conv\.(weight|bias)", key)
        if m:
            kind, i, param = m.group(1), int(m.group(2)), m.group(3)
            if i < len(levels):
                name = "fpn_lateral" if kind == "lateral_convs" else "fpn_output"
                return f"backbone.{name}{levels[i]}.{param}"
            if kind == "fpn_convs":
                return f"backbone.top_block.convs.{i - len(levels)}.{param}"
            return None
        if not key.startswith("bbox_head."):
            return None
        rest = key[len("bbox_head."):]
        m = re.fullmatch(r"(cls|reg)_convs\.(\d+)\.(conv|gn|bn)\.((?:conv_offset\.)?(?:weight|bias))", rest)
        if m:
            tower = "cls_tower" if m.group(1) == "cls" else "box_tower"
            return f"head.{tower}.{_tower_index(int(m.group(2)), m.group(3), has_norm)}.{m.group(4)}"
        m = re.fullmatch(r"inter_convs\.(\d+)\.(conv|gn|bn)\.(weight|bias)", rest)  # TOOD
        if m:
            return f"head.inter_convs.{m.group(1)}.{_tower_index(0, m.group(2), has_norm)}.{m.group(3)}"
        m = re.fullmatch(r"vfnet_reg_conv\.(conv|gn|bn)\.(weight|bias)", rest)  # VFNet
        if m:
            return f"head.box_init_conv.{_tower_index(0, m.group(1), has_norm)}.{m.group(2)}"
        m = re.fullmatch(r"(cls|reg)_decomp\.reduction_conv\.(conv|gn|bn)\.(weight|bias)", rest)  # TOOD
        if m:
            part = "reduction_conv" if m.group(2) == "conv" else "norm"
            return f"head.{m.group(1)}_decomp.{part}.{m.group(3)}"
        m = re.fullmatch(r"((cls|reg)_decomp\.layer_attention|cls_prob_module|reg_offset_module)\.(\d)\.(weight|bias)", rest)
        if m:  # TOOD: same Sequential layout (conv, ReLU, conv[, Sigmoid])
            return f"head.{m.group(1)}.{m.group(3)}.{m.group(4)}"
        m = re.fullmatch(r"scales\.(\d+)\.scale", rest)
        if m:
            return f"head.{'scales_init' if vfnet else 'scales'}.{m.group(1)}.scale"
        m = re.fullmatch(r"(\w+)\.(weight|bias|\d+\.scale)", rest)
        if m and m.group(1) in _HEAD_LAYERS:
            return f"head.{_HEAD_LAYERS[m.group(1)]}.{m.group(2)}"
        return None

    return rename


def _config_text(meta: Mapping[str, Any]) -> str:
    inner = meta.get("meta") or {}
    text = inner.get("config") or inner.get("cfg") or ""  # 2.x: "config"; 3.x runner: "cfg"
    return text if isinstance(text, str) else ""


def _floats(text: str, key: str) -> Optional[List[float]]:
    m = re.search(rf"\b{key}\s*=\s*\[([^\]]*)\]", text)
    return [float(v) for v in m.group(1).split(",") if v.strip()] if m else None


def check_config(state, meta: Mapping[str, Any], cfg) -> List[str]:
    """What the file says about its model, against ``cfg``; returns the problems found.

    * the head's predictor names: ATSSHead's ``atss_reg`` are anchor deltas
      (``MODEL.FCOS_HEAD.BOX_CODER "anchor_delta"``), FCOSHead's ``conv_reg`` distances ("ltrb");
    * when the file carries its config text (2.x ``meta["config"]``, 3.x ``meta["cfg"]``): the
      input mean / std and channel order (``mean=``, ``std=``, ``to_rgb=`` / ``bgr_to_rgb=``,
      against ``MODEL.PIXEL_MEAN/STD`` and ``INPUT.FORMAT``), the ResNet style (``style=``,
      against ``MODEL.RESNETS.STRIDE_IN_1X1``) and ``relu_before_extra_convs`` (against
      ``MODEL.FPN.TOP_LEVELS_RELU``; MMDetection's FPN default is False). Settings that the
      text does not state are not checked;
      test-time thresholds are not checked (they are the user's to change).
    """
    problems = []
    coder = cfg.MODEL.FCOS_HEAD.BOX_CODER
    if any(k.startswith("bbox_head.atss_reg.") for k in state) and coder != "anchor_delta":
        problems.append(f"the file is MMDetection's anchor-based ATSSHead (atss_reg deltas): set "
                        f"MODEL.FCOS_HEAD.BOX_CODER 'anchor_delta' (config has {coder!r}; "
                        "configs/zoo/mmdet/atss_r50_fpn_1x_coco.yaml)")
    if any(k.startswith(("bbox_head.conv_reg.", "bbox_head.fcos_reg.")) for k in state) and coder != "ltrb":
        problems.append(f"the file is MMDetection's FCOSHead (distances): MODEL.FCOS_HEAD.BOX_CODER must be "
                        f"'ltrb' (config has {coder!r})")
    text = _config_text(meta)
    if not text:
        return problems
    mean, std = _floats(text, "mean"), _floats(text, "std")
    rgb = re.search(r"\b(?:bgr_)?to_rgb\s*=\s*(True|False)", text)
    if rgb is not None:
        want = "RGB" if rgb.group(1) == "True" else "BGR"
        if cfg.INPUT.FORMAT != want:
            problems.append(f"the file's model takes {want} input (to_rgb={rgb.group(1)}): INPUT.FORMAT "
                            f"is {cfg.INPUT.FORMAT!r}")
    for name, values, ours in (("mean", mean, cfg.MODEL.PIXEL_MEAN), ("std", std, cfg.MODEL.PIXEL_STD)):
        if values is not None and values_differ(values, ours):
            problems.append(f"the file's model normalizes with {name}={values}: MODEL.PIXEL_"
                            f"{name.upper()} is {list(ours)}")
    style = re.search(r"\bstyle\s*=\s*'(caffe|pytorch)'", text)
    if style is not None and cfg.MODEL.RESNETS.STRIDE_IN_1X1 != (style.group(1) == "caffe"):
        problems.append(f"the file's ResNet is {style.group(1)}-style: MODEL.RESNETS.STRIDE_IN_1X1 must be "
                        f"{style.group(1) == 'caffe'}")
    relu = re.search(r"\brelu_before_extra_convs\s*=\s*(True|False)", text)
    if relu is not None or "type='FPN'" in text:  # FPN's default: False
        value = relu is not None and relu.group(1) == "True"
        if cfg.MODEL.FPN.TOP_LEVELS_RELU != value:
            problems.append(f"the file's FPN has relu_before_extra_convs={value}: "
                            f"MODEL.FPN.TOP_LEVELS_RELU must be {value}")
    return problems

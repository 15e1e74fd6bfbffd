"""Backbones from timm (MobileNet, EfficientNet, RegNet, CSP, ... : any model timm builds with
``features_only=True``) under our FPN with P6/P7.

``build_timm_fpn_backbone`` (``MODEL.BACKBONE.NAME``) = :class:`TimmBackbone` (``MODEL.TIMM``) +
``backbone.fpn_with_top_levels`` (``MODEL.FPN``). The timm model's feature levels are named by
their stride like detectron2's ResNet stages, "res{log2(stride)}": stride 8 is "res3", 16 "res4",
32 "res5", so ``MODEL.FPN.IN_FEATURES: ["res3", "res4", "res5"]`` gives P3-P5 for every
backbone. ImageNet weights load through timm's own loader (``torch.load`` with
``weights_only=True``, or safetensors): from a local file (``MODEL.TIMM.WEIGHTS``) or from timm's
hub when online (``MODEL.TIMM.PRETRAINED``); a detector checkpoint (``MODEL.WEIGHTS``) loads
afterwards as for every backbone.

timm's ImageNet models expect RGB input normalized with the ImageNet mean/std (0-255 scale:
``INPUT.FORMAT: "RGB"``, ``MODEL.PIXEL_MEAN: [123.675, 116.28, 103.53]``, ``MODEL.PIXEL_STD:
[58.395, 57.12, 57.375]``), which the detector applies; a model trained from scratch does not care.
"""
import difflib
import logging
import math
import os
from typing import Dict, List, Sequence

import torch
from torch import nn

from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone

from .backbone import fpn_with_top_levels

logger = logging.getLogger(__name__)

NORMS = ("BN", "FrozenBN", "SyncBN")


def import_timm():
    """timm, or ImportError naming the extra that installs it."""
    try:
        import timm
    except ImportError as e:  # pragma: no cover - exercised only without timm
        raise ImportError("timm backbones need the timm package: pip install 'd2_anchorfree[timm]' "
                          "(or pip install timm)") from e
    return timm


def check_model_name(name: str) -> None:
    """Raise ValueError naming ``MODEL.TIMM.NAME`` and the closest timm model names when timm has
    no model called ``name``."""
    timm = import_timm()
    if not name:
        raise ValueError("MODEL.TIMM.NAME is empty: set a timm model name, e.g. 'mobilenetv3_large_100'")
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    raise ValueError(f"MODEL.TIMM.NAME {name!r} is not a timm model"
                     + (f"; close names: {close}" if close else "") + " (timm.list_models() lists them)")


def stage_name(stride: int) -> str:
    """The feature name of a level of stride ``stride`` (a power of 2, pixels): "res{log2 stride}"."""
    return f"res{int(round(math.log2(stride)))}"


def _module_path(model: nn.Module, name: str) -> str:
    """The name under ``model`` of timm's feature-info module ``name``: as given, or with its dots
    replaced by "_" (timm's ``FeatureListNet`` flattens nested modules that way)."""
    names = dict(model.named_modules())
    for candidate in (name, name.replace(".", "_")):
        if candidate in names:
            return candidate
    raise KeyError(f"timm feature module {name!r} not found in {type(model).__name__}")


def _freeze_until(model: nn.Module, last: str) -> List[str]:
    """Freeze every module registered before ``last`` and ``last`` itself (the modules that
    compute a feature level, in timm's registration order, which is its forward order): their
    parameters stop training and their BatchNorms become ``FrozenBatchNorm2d``.

    Returns:
        the names of the frozen top-most modules.
    """
    frozen: List[str] = []
    for name, module in list(model.named_modules())[1:]:
        if any(name.startswith(f + ".") for f in frozen):
            continue
        if last.startswith(name + "."):  # an ancestor of ``last``: descend into it
            continue
        frozen.append(name)
        if name == last:
            break
    for name in frozen:
        module = model.get_submodule(name)
        for p in module.parameters():
            p.requires_grad_(False)
        _replace(model, name, FrozenBatchNorm2d.convert_frozen_batchnorm(module))
    return frozen


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


class TimmBackbone(Backbone):
    """A timm model with ``features_only=True`` as a detectron2 bottom-up ``Backbone``.

    Input [N, 3, H, W] (the detector's normalized images); output {name: [N, C, H / s, W / s]} for
    each name of ``out_features`` ("res{log2 s}", s = the level's stride in pixels; sizes rounded
    up as the model's strided convs do).
    """

    def __init__(self, *, model_name: str, out_features: Sequence[str], pretrained: bool = False,
                 weights: str = "", freeze_at: int = 0, norm: str = "BN", in_channels: int = 3):
        """
        Args:
            model_name: a timm model name (``timm.list_models()``), e.g. "mobilenetv3_large_100",
                "efficientnet_b0", "regnetx_002", "cspresnet50".
            out_features: the levels to output, "res{log2 stride}" (e.g. ["res3", "res4", "res5"]).
            pretrained: load timm's ImageNet weights (from its hub: needs the network, or timm's
                cache).
            weights: a local file of the timm model's weights (.pth / .bin / .safetensors), loaded
                by timm's loader (``weights_only=True``); implies ``pretrained``.
            freeze_at: how many feature levels, finest first in timm's ``feature_info``, have their
                modules (and everything before them) frozen; 0: train all.
            norm: "BN" (timm's BatchNorm, trained), "FrozenBN" (every BatchNorm frozen with its
                statistics: fine-tuning ImageNet weights with small batches, as detectron2's R-50
                configs) or "SyncBN" (BatchNorm synchronized across GPUs).
            in_channels: input channels (3).

        Raises:
            ValueError: unknown model name (closest names listed), a requested level the model
                does not produce (available ones listed), ``freeze_at`` outside [0, levels], an
                unknown ``norm``; each naming its ``MODEL.TIMM`` key.
            FileNotFoundError: ``weights`` does not exist.
        """
        super().__init__()
        timm = import_timm()
        check_model_name(model_name)
        if norm not in NORMS:
            raise ValueError(f"MODEL.TIMM.NORM must be one of {NORMS}, got {norm!r}")
        kwargs = {}
        if weights:
            if not os.path.isfile(weights):
                raise FileNotFoundError(f"MODEL.TIMM.WEIGHTS file not found: {weights}")
            kwargs["pretrained_cfg_overlay"] = {"file": weights}
        model = timm.create_model(model_name, pretrained=pretrained or bool(weights), features_only=True,
                                  in_chans=in_channels, **kwargs)
        info = model.feature_info
        available = {stage_name(s): i for i, s in enumerate(info.reduction())}
        missing = [f for f in out_features if f not in available]
        if missing or not out_features:
            raise ValueError(f"MODEL.TIMM.OUT_FEATURES {list(out_features)}: {model_name} gives the levels "
                             f"{list(available)} (strides {info.reduction()})")
        if not 0 <= freeze_at <= len(info):
            raise ValueError(f"MODEL.TIMM.FREEZE_AT must be in [0, {len(info)}] for {model_name}, got {freeze_at}")
        # the model returns every level of its feature_info; forward keeps the requested ones
        self._indices = sorted(available[f] for f in out_features)
        if freeze_at > 0:
            _freeze_until(model, _module_path(model, info.module_name(freeze_at - 1)))
        if norm == "FrozenBN":
            model = FrozenBatchNorm2d.convert_frozen_batchnorm(model)
        elif norm == "SyncBN":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model
        self.model_name = model_name
        self._names = [stage_name(info.reduction()[i]) for i in self._indices]
        self._out_features = list(self._names)
        self._out_feature_strides = {n: info.reduction()[i] for n, i in zip(self._names, self._indices)}
        self._out_feature_channels = {n: info.channels()[i] for n, i in zip(self._names, self._indices)}

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x: [N, C_in, H, W] -> {"res{k}": [N, C_k, ~H / 2^k, ~W / 2^k]}."""
        levels = self.model(x)
        return {name: levels[i] for name, i in zip(self._names, self._indices)}

    def output_shape(self) -> Dict[str, ShapeSpec]:
        return {n: ShapeSpec(channels=self._out_feature_channels[n], stride=self._out_feature_strides[n])
                for n in self._out_features}


def build_timm_backbone(cfg, input_shape: ShapeSpec) -> TimmBackbone:
    """:class:`TimmBackbone` from ``MODEL.TIMM`` (NAME, OUT_FEATURES, PRETRAINED, WEIGHTS,
    FREEZE_AT, NORM) and ``input_shape.channels``.

    Raises:
        see :class:`TimmBackbone`.
    """
    t = cfg.MODEL.TIMM
    return TimmBackbone(model_name=t.NAME, out_features=list(t.OUT_FEATURES), pretrained=t.PRETRAINED,
                        weights=t.WEIGHTS, freeze_at=t.FREEZE_AT, norm=t.NORM, in_channels=input_shape.channels)


@BACKBONE_REGISTRY.register()
def build_timm_fpn_backbone(cfg, input_shape: ShapeSpec):
    """:func:`build_timm_backbone` + :func:`~.backbone.fpn_with_top_levels` (P3-P5 from
    ``MODEL.FPN.IN_FEATURES``, P6/P7 from ``MODEL.FPN.TOP_LEVELS``).

    Raises:
        ValueError: see :class:`TimmBackbone` and ``fpn_with_top_levels``.
    """
    return fpn_with_top_levels(cfg, build_timm_backbone(cfg, input_shape))

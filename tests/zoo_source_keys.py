"""State-dict keys and shapes of published AdelaiDet and DeFCN checkpoints, built from the
module definitions of their source code (neither code base can be installed here).

Each generator mirrors one module of the source, in registration order, and cites the file it
mirrors. :data:`SOURCES` maps a checkpoint name ("<source>/<model>") to a function returning its
``[(key, shape), ...]``. The conversion rules live in ``d2_anchorfree/checkpoint/conversion/``.

Cross-checks against key listings found elsewhere (not the checkpoint files themselves, which
were not downloaded): a third-party AdelaiDet FCOS_RT_MS_R_50_4x_syncbn.pth -> PaddlePaddle
converter (miemie2013) reads ``backbone.fpn_lateral{3,4,5}.{weight,bias}``,
``backbone.fpn_output{3,4,5}.*``, ``proposal_generator.fcos_head.cls_tower.0.{weight,bias}`` (a
tower conv *with* bias), ``...cls_tower.1.{weight,bias}`` (GN), ``...ctrness.{weight,bias}``,
``...scales.{0,1,2}.scale`` and skips ``*num_batches_tracked*`` keys; MegEngine's DeFCN port
builds the same head modules (``cls_subnet``, ``bbox_subnet``, ``cls_score``, ``bbox_pred``,
``max3d``, ``filter``). No published listing of a DeFCN state dict was found.
"""
from typing import Callable, Dict, List, Optional, Tuple

Key = Tuple[str, Tuple[int, ...]]

# Blocks per stage (res2..res5) of the bottleneck ResNets: detectron2
# modeling/backbone/resnet.py build_resnet_backbone and cvpods modeling/backbone/resnet.py L715-723.
RESNET_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


def norm_keys(prefix: str, channels: int, kind: str) -> List[Key]:
    """Keys of one normalization module.

    ``kind``: "FrozenBN" (detectron2 / cvpods ``FrozenBatchNorm2d``: buffers weight, bias,
    running_mean, running_var), "BN" / "SyncBN" (torch ``BatchNorm2d``: the same plus the 0-d
    ``num_batches_tracked``), "GN" (``nn.GroupNorm``: weight, bias).
    """
    if kind == "GN":
        names = ("weight", "bias")
    elif kind == "FrozenBN":
        names = ("weight", "bias", "running_mean", "running_var")
    elif kind in ("BN", "SyncBN"):
        names = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    else:
        raise ValueError(kind)
    return [(f"{prefix}.{n}", () if n == "num_batches_tracked" else (channels,)) for n in names]


def conv_keys(prefix: str, out_ch: int, in_ch: int, k: int, bias: bool,
              norm: Optional[str] = None) -> List[Key]:
    """A conv (weight [out, in, k, k], optional bias) and, as detectron2's / cvpods' ``Conv2d``
    wrapper registers it, its ``norm`` child."""
    keys = [(f"{prefix}.weight", (out_ch, in_ch, k, k))]
    if bias:
        keys.append((f"{prefix}.bias", (out_ch,)))
    if norm:
        keys += norm_keys(f"{prefix}.norm", out_ch, norm)
    return keys


def resnet_keys(depth: int = 50, norm: str = "FrozenBN", freeze_at: int = 2,
                prefix: str = "backbone.bottom_up") -> List[Key]:
    """ResNet bottom-up of detectron2 (AdelaiDet) and cvpods (DeFCN): identical names.

    Mirrors detectron2 ``modeling/backbone/resnet.py`` (``BasicStem``, ``BottleneckBlock``,
    ``build_resnet_backbone``) and cvpods ``modeling/backbone/resnet.py`` (``BasicStem`` L488-523,
    ``BottleneckBlock`` L129-235: shortcut (1x1) when in != out, conv1 1x1, conv2 3x3, conv3 1x1,
    all without bias, each with a norm; ``build_resnet_backbone`` L671-: stem 7x7 3->64,
    res2 bottleneck 64 -> 256 doubling per stage). Stages up to ``freeze_at`` (stem = 1, res2 = 2)
    are converted to FrozenBN by ``freeze`` (``FrozenBatchNorm2d.convert_frozen_batchnorm``), so a
    "SyncBN" backbone keeps ``num_batches_tracked`` only in res3-res5.
    """
    keys = conv_keys(f"{prefix}.stem.conv1", 64, 3, 7, False, "FrozenBN" if freeze_at >= 1 else norm)
    in_ch, bottleneck, out_ch = 64, 64, 256
    for stage, num_blocks in enumerate(RESNET_BLOCKS[depth], start=2):
        stage_norm = "FrozenBN" if freeze_at >= stage else norm
        for b in range(num_blocks):
            p = f"{prefix}.res{stage}.{b}"
            if in_ch != out_ch:
                keys += conv_keys(f"{p}.shortcut", out_ch, in_ch, 1, False, stage_norm)
            keys += conv_keys(f"{p}.conv1", bottleneck, in_ch, 1, False, stage_norm)
            keys += conv_keys(f"{p}.conv2", bottleneck, bottleneck, 3, False, stage_norm)
            keys += conv_keys(f"{p}.conv3", out_ch, bottleneck, 1, False, stage_norm)
            in_ch = out_ch
        bottleneck, out_ch = bottleneck * 2, out_ch * 2
    return keys


def fpn_keys(stages=(3, 4, 5), out_ch: int = 256, top_levels: int = 2, top_in_ch: int = 256,
             prefix: str = "backbone") -> List[Key]:
    """FPN laterals/outputs (no norm: ``MODEL.FPN.NORM`` "" gives biased convs) and the P6/P7
    top block.

    Mirrors detectron2 / cvpods ``FPN.__init__`` (cvpods fpn.py L84-104: per input stage
    ``fpn_lateral{s}`` 1x1 C_s -> 256 and ``fpn_output{s}`` 3x3 256 -> 256, bias on) and
    ``LastLevelP6P7`` (AdelaiDet adet/modeling/backbone/fpn.py L14-32, cvpods fpn.py L204-227:
    ``p6`` 3x3/2 top_in_ch -> 256 and ``p7`` 3x3/2 256 -> 256, with bias). ``top_in_ch`` is 256
    when P6 comes from P5 and 2048 from C5 (DeFCN weights before commit a82393e).
    """
    stage_channels = {2: 256, 3: 512, 4: 1024, 5: 2048}
    keys: List[Key] = []
    for s in stages:
        keys += conv_keys(f"{prefix}.fpn_lateral{s}", out_ch, stage_channels[s], 1, True)
        keys += conv_keys(f"{prefix}.fpn_output{s}", out_ch, out_ch, 3, True)
    if top_levels == 2:
        keys += conv_keys(f"{prefix}.top_block.p6", out_ch, top_in_ch, 3, True)
        keys += conv_keys(f"{prefix}.top_block.p7", out_ch, out_ch, 3, True)
    elif top_levels != 0:
        raise ValueError(top_levels)
    return keys


def tower_keys(prefix: str, num_convs: int, channels: int, norm: str, num_levels: int) -> List[Key]:
    """A head tower: ``num_convs`` x (conv3x3 with bias, norm, ReLU) in an ``nn.Sequential``, so
    conv i is child 3i and its norm child 3i + 1.

    Mirrors AdelaiDet fcos.py L150-177 (``bias=True`` L158-162; "GN": ``nn.GroupNorm(32, C)``;
    "BN"/"SyncBN": ``ModuleListDial`` of one BN per FPN level, children ``<3i+1>.<level>``) and
    DeFCN fcos.py L595-616 (``nn.Conv2d`` default bias, ``nn.GroupNorm(32, C)``).
    """
    keys: List[Key] = []
    for i in range(num_convs):
        keys += conv_keys(f"{prefix}.{3 * i}", channels, channels, 3, True)
        if norm == "GN":
            keys += norm_keys(f"{prefix}.{3 * i + 1}", channels, "GN")
        elif norm in ("BN", "SyncBN"):
            for level in range(num_levels):
                keys += norm_keys(f"{prefix}.{3 * i + 1}.{level}", channels, norm)
        elif norm:
            raise ValueError(norm)
    return keys


def adelaidet_head_keys(num_classes: int = 80, channels: int = 256, num_levels: int = 5,
                        norm: str = "GN", num_convs: int = 4,
                        prefix: str = "proposal_generator.fcos_head") -> List[Key]:
    """AdelaiDet ``FCOSHead`` (adet/modeling/fcos/fcos.py L125-211): ``cls_tower``,
    ``bbox_tower``, ``share_tower`` (0 convs: no keys) (L135-177), ``cls_logits`` 3x3 -> K
    (L179), ``bbox_pred`` 3x3 -> 4 (L184), ``ctrness`` 3x3 -> 1 (L188), ``scales`` one
    ``Scale`` per level holding a [1] parameter (L20-26, L193-194)."""
    keys = tower_keys(f"{prefix}.cls_tower", num_convs, channels, norm, num_levels)
    keys += tower_keys(f"{prefix}.bbox_tower", num_convs, channels, norm, num_levels)
    keys += conv_keys(f"{prefix}.cls_logits", num_classes, channels, 3, True)
    keys += conv_keys(f"{prefix}.bbox_pred", 4, channels, 3, True)
    keys += conv_keys(f"{prefix}.ctrness", 1, channels, 3, True)
    keys += [(f"{prefix}.scales.{level}.scale", (1,)) for level in range(num_levels)]
    return keys


def adelaidet_fcos(resnet_norm: str = "FrozenBN", head_norm: str = "GN", rt: bool = False) -> List[Key]:
    """An AdelaiDet ``OneStageDetector`` FCOS checkpoint (adet/modeling/one_stage_detector.py
    L38-49, a detectron2 ``ProposalNetwork``): ``pixel_mean`` / ``pixel_std`` [3, 1, 1]
    persistent buffers (detectron2 rcnn.py before commit 3c0509e6, v0.4), ``backbone`` (FPN of
    adet/modeling/backbone/fpn.py L53-88: P6/P7 from P5, or none with ``FCOS.TOP_LEVELS`` 0 in
    the RT configs) and ``proposal_generator.fcos_head`` (``FCOSOutputs`` has no state)."""
    num_levels = 3 if rt else 5
    keys: List[Key] = [("pixel_mean", (3, 1, 1)), ("pixel_std", (3, 1, 1))]
    keys += fpn_keys(top_levels=0 if rt else 2)
    keys += resnet_keys(50, resnet_norm)
    keys += adelaidet_head_keys(num_levels=num_levels, norm=head_norm)
    return keys


def defcn_head_keys(num_classes: int = 80, channels: int = 256, num_levels: int = 5,
                    use_3dmf: bool = True, gn_in_3dmf: bool = True, num_convs: int = 4,
                    prefix: str = "head") -> List[Key]:
    """DeFCN ``FCOSHead`` (playground/.../poto.*/fcos.py L576-655): ``cls_subnet`` and
    ``bbox_subnet`` (L595-616), ``cls_score`` 3x3 -> K (L617-621; one shift per cell), ``bbox_pred``
    3x3 -> 4 (L622-626), with 3DMF ``max3d`` = ``MaxFiltering`` (L694-711: ``conv`` 3x3 C -> C
    with bias, ``norm`` GN(32), absent in "3dmf_wo_gn") and ``filter`` 3x3 -> 1 (L628-635), then
    ``scales`` (L654-655, cvpods ``Scale``: a [1] parameter, cvpods meta_arch/fcos.py L46-52)."""
    keys = tower_keys(f"{prefix}.cls_subnet", num_convs, channels, "GN", num_levels)
    keys += tower_keys(f"{prefix}.bbox_subnet", num_convs, channels, "GN", num_levels)
    keys += conv_keys(f"{prefix}.cls_score", num_classes, channels, 3, True)
    keys += conv_keys(f"{prefix}.bbox_pred", 4, channels, 3, True)
    if use_3dmf:
        keys += conv_keys(f"{prefix}.max3d.conv", channels, channels, 3, True)
        if gn_in_3dmf:
            keys += norm_keys(f"{prefix}.max3d.norm", channels, "GN")
        keys += conv_keys(f"{prefix}.filter", 1, channels, 3, True)
    keys += [(f"{prefix}.scales.{level}.scale", (1,)) for level in range(num_levels)]
    return keys


def defcn_poto(num_classes: int = 80, use_3dmf: bool = False, gn_in_3dmf: bool = True,
               p6_from_c5: bool = False) -> List[Key]:
    """A DeFCN (cvpods) checkpoint's ``model``: the playground ``FCOS`` module (fcos.py L55-97:
    ``backbone``, ``head``; ``shift_generator`` and the lambda ``normalizer`` have no state).
    Backbone from net.py ``build_retinanet_resnet_fpn_p5_backbone`` (cvpods fpn.py L264-301,
    L332-334): FrozenBN ResNet + FPN res3-res5 + P6/P7 from P5 (from C5 before DeFCN a82393e).
    The auxiliary loss adds no module (it reuses ``cls_score``), so "+Aux" checkpoints have the
    keys of their non-aux counterparts."""
    keys = fpn_keys(top_levels=2, top_in_ch=2048 if p6_from_c5 else 256)
    keys += resnet_keys(50, "FrozenBN")
    keys += defcn_head_keys(num_classes=num_classes, use_3dmf=use_3dmf, gn_in_3dmf=gn_in_3dmf)
    return keys


_COCO = "defcn/coco/poto.res50.fpn.coco.800size"
_CH = "defcn/crowdhuman/poto.res50.fpn.crowdhuman.800size.30k"

#: checkpoint name -> generator of its [(key, shape)]
SOURCES: Dict[str, Callable[[], List[Key]]] = {
    # AdelaiDet configs/FCOS-Detection (R_50_1x, MS_R_50_2x and the *_iou variants: same modules)
    "adelaidet/FCOS_R_50_1x": lambda: adelaidet_fcos(),
    "adelaidet/FCOS_MS_R_50_2x": lambda: adelaidet_fcos(),
    "adelaidet/FCOS_R_50_1x_iou": lambda: adelaidet_fcos(),
    "adelaidet/FCOS_MS_R_50_2x_iou": lambda: adelaidet_fcos(),
    # FCOS_RT/MS_R_50_4x_syncbn(_bn_head).yaml: RESNETS.NORM SyncBN, TOP_LEVELS 0, P3-P5
    "adelaidet/FCOS_RT_MS_R_50_4x_syncbn": lambda: adelaidet_fcos("SyncBN", "GN", rt=True),
    "adelaidet/FCOS_RT_MS_R_50_4x_syncbn_bn_head": lambda: adelaidet_fcos("SyncBN", "SyncBN", rt=True),
    # DeFCN playground/detection/coco (README "Results on COCO2017 val set" and ablations)
    f"{_COCO}.3x_ms": lambda: defcn_poto(),
    f"{_COCO}.6x_ms": lambda: defcn_poto(),
    f"{_COCO}.9x_ms": lambda: defcn_poto(),
    f"{_COCO}.3x_ms.argmax": lambda: defcn_poto(),
    f"{_COCO}.3x_ms.3dmf": lambda: defcn_poto(use_3dmf=True),
    f"{_COCO}.3x_ms.3dmf.aux": lambda: defcn_poto(use_3dmf=True),
    f"{_COCO}.3x_ms.3dmf_wo_gn": lambda: defcn_poto(use_3dmf=True, gn_in_3dmf=False),
    f"{_COCO}.3x_ms.3dmf_wo_gn.aux": lambda: defcn_poto(use_3dmf=True, gn_in_3dmf=False),
    # weights published before DeFCN commit a82393e (2021-02-04): P6 from C5
    "defcn-pre-a82393e/coco/poto.res50.fpn.coco.800size.3x_ms.3dmf.aux":
        lambda: defcn_poto(use_3dmf=True, p6_from_c5=True),
    # DeFCN playground/detection/crowdhuman: NUM_CLASSES 1
    _CH: lambda: defcn_poto(num_classes=1),
    f"{_CH}.3dmf": lambda: defcn_poto(num_classes=1, use_3dmf=True),
    f"{_CH}.3dmf.aux": lambda: defcn_poto(num_classes=1, use_3dmf=True),
}

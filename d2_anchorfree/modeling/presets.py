"""The named detectors as presets of :class:`~d2_anchorfree.modeling.detector.AnchorFreeDetector`.

A preset is a set of config values: the ``MODEL.DENSE`` choices (HEAD, ASSIGNER, AUX_ASSIGNER,
INITIAL_ASSIGNER, LOSSES, INITIAL_LOSSES, POSTPROCESS) and the few keys whose paper values differ
between detectors for a shared loss term (``MODEL.BOX_LOSS`` TYPE / WEIGHT / WEIGHTING /
INITIAL_WEIGHTING, ``MODEL.QFL.TARGET``). ``components.apply_preset`` sets them on a copy of the
config where the config leaves them at their defaults ("the preset's"), before any component is
built; every other number comes from the config (``configs/<Detector>/`` hold each paper's
values). ``META_ARCHITECTURE: "AnchorFreeDetector"`` is the bare detector: HEAD, ASSIGNER and
LOSSES from the config, the rest from ``components.BARE_DETECTOR_CHOICES``.
So "FCOS with POTO" is ``META_ARCHITECTURE: "FCOS"`` plus ``MODEL.DENSE.ASSIGNER: "POTOAssigner"``.
"""
from detectron2.modeling import META_ARCH_REGISTRY

from .detector import AnchorFreeDetector

FCOS_LOSSES = ["FocalLoss", "BoxLoss", "CenternessLoss"]
D, BOX = "MODEL.DENSE.", "MODEL.BOX_LOSS."

PRESETS = {
    # Tian et al., ICCV 2019: focal + IoU weighted by centerness targets + centerness BCE.
    "FCOS": {D + "HEAD": "FCOSHead", D + "ASSIGNER": "FCOSAssigner", D + "LOSSES": FCOS_LOSSES,
             BOX + "TYPE": "iou", BOX + "WEIGHT": 1.0, BOX + "WEIGHTING": "centerness",
             D + "POSTPROCESS": "nms"},
    # Zhang et al., CVPR 2020: the FCOS detector with ATSS assignment.
    "ATSS": {D + "HEAD": "FCOSHead", D + "ASSIGNER": "ATSSAssigner", D + "LOSSES": FCOS_LOSSES,
             BOX + "TYPE": "giou", BOX + "WEIGHT": 2.0, BOX + "WEIGHTING": "centerness",
             D + "POSTPROCESS": "nms"},
    # Li et al., NeurIPS 2020: QFL + GIoU and DFL weighted by the max class score.
    "GFL": {D + "HEAD": "GFLHead", D + "ASSIGNER": "ATSSAssigner",
            D + "LOSSES": ["QualityFocalLoss", "BoxLoss", "DistributionFocalLoss"],
            BOX + "TYPE": "giou", BOX + "WEIGHT": 2.0, BOX + "WEIGHTING": "max_score",
            D + "POSTPROCESS": "nms"},
    # Zhang et al., CVPR 2021: VFL + IoU-weighted GIoU on the initial and refined boxes.
    "VFNet": {D + "HEAD": "VFNetHead", D + "ASSIGNER": "ATSSAssigner",
              D + "LOSSES": ["VarifocalLoss", "InitBoxLoss", "BoxLoss"],
              BOX + "TYPE": "giou", BOX + "WEIGHT": 2.0, BOX + "WEIGHTING": "iou",
              D + "POSTPROCESS": "nms"},
    # Wang et al., CVPR 2021: POTO one-to-one + auxiliary one-to-many loss, NMS-free.
    "DeFCN": {D + "HEAD": "DeFCNHead", D + "ASSIGNER": "POTOAssigner", D + "AUX_ASSIGNER": "POTOAuxAssigner",
              D + "LOSSES": ["FocalLoss", "BoxLoss"], BOX + "TYPE": "giou", BOX + "WEIGHT": 2.0,
              BOX + "WEIGHTING": "none", D + "POSTPROCESS": "topk"},
    # Feng et al., ICCV 2021: TAL assignment, QFL on the normalized alignment metric + GIoU weighted
    # by it; for the first MODEL.DENSE.INITIAL_ASSIGNER_ITERS ATSS, focal loss and GIoU weighted by
    # the centerness targets (the reference's initial_epoch / initial_loss_cls).
    "TOOD": {D + "HEAD": "TOODHead", D + "ASSIGNER": "TaskAlignedAssigner", D + "INITIAL_ASSIGNER": "ATSSAssigner",
             D + "LOSSES": ["QualityFocalLoss", "BoxLoss"], D + "INITIAL_LOSSES": ["FocalLoss", "BoxLoss"],
             BOX + "INITIAL_WEIGHTING": "centerness", BOX + "TYPE": "giou", BOX + "WEIGHT": 2.0,
             BOX + "WEIGHTING": "quality", "MODEL.QFL.TARGET": "assigner", D + "POSTPROCESS": "nms"},
}


def _register(name: str, preset):
    doc = f"The ``{name}`` preset of :class:`AnchorFreeDetector` (choices: {preset})."
    cls = type(name, (AnchorFreeDetector,), {"PRESET": preset, "__doc__": doc})
    cls.__module__ = __name__
    META_ARCH_REGISTRY.register(cls)
    return cls


META_ARCH_REGISTRY.register(AnchorFreeDetector)
FCOS = _register("FCOS", PRESETS["FCOS"])
ATSS = _register("ATSS", PRESETS["ATSS"])
GFL = _register("GFL", PRESETS["GFL"])
VFNet = _register("VFNet", PRESETS["VFNet"])
DeFCN = _register("DeFCN", PRESETS["DeFCN"])
TOOD = _register("TOOD", PRESETS["TOOD"])

"""The named detectors as presets of :class:`~d2_anchorfree.modeling.detector.AnchorFreeDetector`.

A preset chooses components: it fills the ``MODEL.DENSE`` choices (HEAD, ASSIGNER, AUX_ASSIGNER,
INITIAL_ASSIGNER, LOSSES, INITIAL_LOSSES, POSTPROCESS) and the few keys whose paper values differ
between detectors for a shared loss term (``MODEL.BOX_LOSS`` TYPE / WEIGHT / WEIGHTING /
INITIAL_WEIGHTING, ``MODEL.QFL.TARGET``) where the config leaves them empty; every other number
comes from the config (``configs/<Detector>/`` hold each paper's values). ``META_ARCHITECTURE: "AnchorFreeDetector"`` is the bare detector: every choice from the
config.
So "FCOS with POTO" is ``META_ARCHITECTURE: "FCOS"`` plus ``MODEL.DENSE.ASSIGNER: "POTOAssigner"``.
"""
from detectron2.modeling import META_ARCH_REGISTRY

from .detector import AnchorFreeDetector

FCOS_LOSSES = ["FocalLoss", "BoxLoss", "CenternessLoss"]

PRESETS = {
    # Tian et al., ICCV 2019: focal + IoU weighted by centerness targets + centerness BCE.
    "FCOS": {"HEAD": "FCOSHead", "ASSIGNER": "FCOSAssigner", "LOSSES": FCOS_LOSSES,
             "BOX_LOSS_TYPE": "iou", "BOX_LOSS_WEIGHT": 1.0, "BOX_WEIGHTING": "centerness",
             "POSTPROCESS": "nms"},
    # Zhang et al., CVPR 2020: the FCOS detector with ATSS assignment.
    "ATSS": {"HEAD": "FCOSHead", "ASSIGNER": "ATSSAssigner", "LOSSES": FCOS_LOSSES,
             "BOX_LOSS_TYPE": "giou", "BOX_LOSS_WEIGHT": 2.0, "BOX_WEIGHTING": "centerness",
             "POSTPROCESS": "nms"},
    # Li et al., NeurIPS 2020: QFL + GIoU and DFL weighted by the max class score.
    "GFL": {"HEAD": "GFLHead", "ASSIGNER": "ATSSAssigner",
            "LOSSES": ["QualityFocalLoss", "BoxLoss", "DistributionFocalLoss"],
            "BOX_LOSS_TYPE": "giou", "BOX_LOSS_WEIGHT": 2.0, "BOX_WEIGHTING": "max_score",
            "POSTPROCESS": "nms"},
    # Zhang et al., CVPR 2021: VFL + IoU-weighted GIoU on the initial and refined boxes.
    "VFNet": {"HEAD": "VFNetHead", "ASSIGNER": "ATSSAssigner",
              "LOSSES": ["VarifocalLoss", "InitBoxLoss", "BoxLoss"],
              "BOX_LOSS_TYPE": "giou", "BOX_LOSS_WEIGHT": 2.0, "BOX_WEIGHTING": "iou",
              "POSTPROCESS": "nms"},
    # Wang et al., CVPR 2021: POTO one-to-one + auxiliary one-to-many loss, NMS-free.
    "DeFCN": {"HEAD": "DeFCNHead", "ASSIGNER": "POTOAssigner", "AUX_ASSIGNER": "POTOAuxAssigner",
              "LOSSES": ["FocalLoss", "BoxLoss"], "BOX_LOSS_TYPE": "giou", "BOX_LOSS_WEIGHT": 2.0,
              "BOX_WEIGHTING": "none", "POSTPROCESS": "topk"},
    # Feng et al., ICCV 2021: TAL assignment, QFL on the normalized alignment metric + GIoU weighted
    # by it; for the first MODEL.DENSE.INITIAL_ASSIGNER_ITERS ATSS, focal loss and GIoU weighted by
    # the centerness targets (the reference's initial_epoch / initial_loss_cls).
    "TOOD": {"HEAD": "TOODHead", "ASSIGNER": "TaskAlignedAssigner", "INITIAL_ASSIGNER": "ATSSAssigner",
             "LOSSES": ["QualityFocalLoss", "BoxLoss"], "INITIAL_LOSSES": ["FocalLoss", "BoxLoss"],
             "INITIAL_BOX_WEIGHTING": "centerness", "BOX_LOSS_TYPE": "giou", "BOX_LOSS_WEIGHT": 2.0,
             "BOX_WEIGHTING": "quality", "QFL_TARGET": "assigner", "POSTPROCESS": "nms"},
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

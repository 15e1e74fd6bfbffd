"""The detectors and target assigners under test, built alike for every section.

This is the only module of the benchmark that uses d2_anchorfree's internals (its config keys
``MODEL.DENSE.*``, ``build_assigner``, the assigners' call signature and ``AssignResult``, POTO's
``match_one_to_one`` / ``pair_quality``, the models' ``criterion.assigner`` / ``aux_assigner`` /
``test_nms_thresh`` attributes): when the library changes, adapt this file.

Models (``--models``): ours FCOS, ATSS, GFL, VFNet, DeFCN (+ "DeFCN+NMS": the same DeFCN model
with class-aware NMS instead of NMS-free top-k, inference only), TOOD, and detectron2's
``d2-RetinaNet`` (yacs:
configs/baselines/RetinaNet_R_50_FPN_1x.yaml, configs/tiny/RetinaNet_tiny_R_18_cpu.yaml) and
``d2-FCOS`` (``detectron2.modeling.meta_arch.fcos.FCOS`` from the LazyConfig
``COCO-Detection/fcos_R_50_FPN_1x.py`` via ``model_zoo.get_config`` + ``instantiate``; its
backbone is replaced by the very backbone module our FCOS config builds, and its head width /
number of convs / classes / test settings are set from that config). Backbones (``--backbones``):
``R50`` (the *_R_50_FPN_1x configs, 80 classes) and ``tiny`` (the *_tiny_R_18_cpu configs,
R-18 + FPN-64, 1 class). All models are detectron2 ``DenseDetector`` subclasses, so the same
calls time every one of them.

Assigners (``--assigners``, :func:`make_assign_fn`): ours FCOS (scale ranges + center sampling
1.5), ATSS, POTO (prior + quality + Hungarian matching), POTO's auxiliary one-to-many
assignment and TOOD's TAL; the dense FCOS baseline (benchmarks/dense_fcos_baseline.py, [points x GT x 4] tensors);
detectron2's FCOS ``match_anchors`` and RetinaNet ``label_anchors`` (both dense too).
"""
import os
import sys
from types import SimpleNamespace
from typing import Callable, Dict, List, Tuple

import torch

from .dense_fcos_baseline import dense_fcos_assign

from . import REPO
from .inputs import STRIDES

OUR_MODELS = ["FCOS", "ATSS", "GFL", "VFNet", "DeFCN", "TOOD"]
D2_MODELS = ["d2-RetinaNet", "d2-FCOS"]
CONFIGS = {  # model -> {backbone: config file}
    "FCOS": {"R50": "configs/FCOS/FCOS_imprv_R_50_FPN_1x.yaml", "tiny": "configs/FCOS/FCOS_tiny_R_18_cpu.yaml"},
    "ATSS": {"R50": "configs/ATSS/ATSS_R_50_FPN_1x.yaml", "tiny": "configs/ATSS/ATSS_tiny_R_18_cpu.yaml"},
    "GFL": {"R50": "configs/GFL/GFL_R_50_FPN_1x.yaml", "tiny": "configs/GFL/GFL_tiny_R_18_cpu.yaml"},
    "VFNet": {"R50": "configs/VFNet/VFNet_R_50_FPN_1x.yaml", "tiny": "configs/VFNet/VFNet_tiny_R_18_cpu.yaml"},
    "DeFCN": {"R50": "configs/DeFCN/POTO_3DMF_Aux_R_50_FPN_1x.yaml",
              "tiny": "configs/DeFCN/DeFCN_tiny_R_18_cpu.yaml"},
    "TOOD": {"R50": "configs/TOOD/TOOD_R_50_FPN_1x.yaml", "tiny": "configs/TOOD/TOOD_tiny_R_18_cpu.yaml"},
    "d2-RetinaNet": {"R50": "configs/baselines/RetinaNet_R_50_FPN_1x.yaml",
                     "tiny": "configs/tiny/RetinaNet_tiny_R_18_cpu.yaml"},
    # d2-FCOS: LazyConfig; backbone, head width and test settings from our FCOS config
    "d2-FCOS": {"R50": "configs/FCOS/FCOS_imprv_R_50_FPN_1x.yaml", "tiny": "configs/FCOS/FCOS_tiny_R_18_cpu.yaml"},
}
ASSIGNERS = ["FCOS", "ATSS", "POTO", "POTOAux", "TAL", "dense-FCOS", "d2-FCOS", "d2-RetinaNet"]
OUR_ASSIGNERS = {"FCOS": "FCOSAssigner", "ATSS": "ATSSAssigner", "POTO": "POTOAssigner",
                 "POTOAux": "POTOAuxAssigner", "TAL": "TaskAlignedAssigner"}
DENSE_ASSIGNERS = {"dense-FCOS", "d2-FCOS", "d2-RetinaNet"}  # memory grows with points x GT


def import_library():
    """Import d2_anchorfree, which registers our meta-architectures and assigners."""
    import d2_anchorfree  # noqa: F401


def load_yacs(config_file: str, device: str, opts=()):
    from detectron2.config import get_cfg

    from d2_anchorfree import add_anchorfree_config

    cfg = get_cfg()
    add_anchorfree_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, config_file))
    cfg.merge_from_list(["MODEL.DEVICE", device, "MODEL.WEIGHTS", "", *opts])
    return cfg


def build_d2_fcos(cfg):
    """detectron2's FCOS from its model-zoo LazyConfig, on the backbone built from ``cfg``.

    The LazyConfig ``COCO-Detection/fcos_R_50_FPN_1x.py`` is loaded with
    ``model_zoo.get_config``; its ``model.backbone`` is replaced by ``build_backbone(cfg)`` (the
    module our FCOS builds: same ResNet/FPN/P6-P7 from P5), and the head width, number of convs,
    norm, classes, pixel statistics and test settings are set from ``cfg.MODEL.DENSE``. On v0.6
    the GN head needs the ``get_norm(norm, 32)`` fix that tools/install_detectron2.py applies
    (and ``model_zoo`` the ``pkg_resources`` one).
    """
    from detectron2 import model_zoo
    from detectron2.config import instantiate
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import build_backbone

    c = cfg.MODEL.DENSE
    lazy = model_zoo.get_config("COCO-Detection/fcos_R_50_FPN_1x.py").model
    lazy.backbone = build_backbone(cfg)
    channels = cfg.MODEL.FPN.OUT_CHANNELS
    lazy.head.input_shape = [ShapeSpec(channels=channels)] * len(c.IN_FEATURES)
    lazy.head.conv_dims = [channels] * c.NUM_CONVS
    lazy.head.norm = c.NORM
    lazy.head_in_features = list(c.IN_FEATURES)
    lazy.num_classes = c.NUM_CLASSES
    lazy.center_sampling_radius = c.CENTER_SAMPLING_RADIUS or 1.5
    lazy.pixel_mean = list(cfg.MODEL.PIXEL_MEAN)
    lazy.pixel_std = list(cfg.MODEL.PIXEL_STD)
    lazy.test_score_thresh = c.SCORE_THRESH_TEST
    lazy.test_topk_candidates = c.TOPK_CANDIDATES_TEST
    lazy.test_nms_thresh = c.NMS_THRESH_TEST
    lazy.max_detections_per_image = cfg.TEST.DETECTIONS_PER_IMAGE
    return instantiate(lazy).to(torch.device(cfg.MODEL.DEVICE))


def build(name: str, backbone: str, device: str):
    """(model, num_classes) for a model name of ``--models`` on backbone "R50" or "tiny"."""
    from detectron2.modeling import build_model

    cfg = load_yacs(CONFIGS[name][backbone], device)
    if name == "d2-FCOS":
        return build_d2_fcos(cfg), cfg.MODEL.DENSE.NUM_CLASSES
    num_classes = cfg.MODEL.RETINANET.NUM_CLASSES if name == "d2-RetinaNet" else cfg.MODEL.DENSE.NUM_CLASSES
    return build_model(cfg), num_classes


def build_entries(args, backbone: str, results: Dict) -> List[Dict]:
    """Build every ``--models`` model on ``backbone``: entries {label, name, model, num_classes,
    nms_thresh}; DeFCN adds a "DeFCN+NMS" inference entry on the same model (NMS at
    ``MODEL.DENSE.NMS_THRESH_TEST``). A model that fails to build gets error rows and no entry."""
    entries = []
    for name in args.models:
        try:
            model, num_classes = build(name, backbone, args.device)
        except Exception as e:  # a detector still being written must not stop the others
            err = f"{type(e).__name__}: {e}"
            print(f"[{backbone}] {name}: build failed: {err}", file=sys.stderr)
            for size in args.sizes:
                for sec in ("inference", "train"):
                    results[sec].append({"model": name, "backbone": backbone, "size": size, "error": err})
            continue
        if args.score_thresh >= 0:
            model.test_score_thresh = args.score_thresh
        nms_thresh = getattr(model, "test_nms_thresh", "n/a")
        entries.append({"label": name, "name": name, "model": model, "num_classes": num_classes,
                        "nms_thresh": nms_thresh})
        if name == "DeFCN" and nms_thresh is None:
            nms = load_yacs(CONFIGS[name][backbone], args.device).MODEL.DENSE.NMS_THRESH_TEST
            entries.append({"label": "DeFCN+NMS", "name": name, "model": model, "num_classes": num_classes,
                            "nms_thresh": nms, "infer_only": True})
    return entries


def set_variant(entry: Dict):
    """Put the entry's model in the entry's variant (DeFCN: NMS-free or NMS)."""
    if entry["nms_thresh"] != "n/a":
        entry["model"].test_nms_thresh = entry["nms_thresh"]


def assign_hooks(model) -> List[Tuple[object, str]]:
    """(owner, attribute) pairs holding the target assignment: ours ``criterion.assigner``
    (+ ``criterion.aux_assigner``), detectron2's ``model.label_anchors``."""
    criterion = getattr(model, "criterion", None)
    if criterion is not None:
        return [(criterion, n) for n in ("assigner", "aux_assigner") if getattr(criterion, n, None) is not None]
    return [(model, "label_anchors")] if hasattr(model, "label_anchors") else []


def make_assign_fn(name: str, shifts, gt, logits, boxes, device: str) -> Callable[[], torch.Tensor]:
    """A no-argument callable running assigner ``name`` on one image (see ``ASSIGNERS``),
    returning its matched indices [R]."""
    from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

    from d2_anchorfree.modeling.assigners import build_assigner

    cfg = load_yacs("configs/FCOS/Base-FCOS.yaml", device, ["MODEL.DENSE.CENTER_SAMPLING_RADIUS", 1.5])
    if name in OUR_ASSIGNERS:
        assigner = build_assigner(OUR_ASSIGNERS[name], cfg, STRIDES)
        probs = torch.sigmoid(logits)
        return lambda: assigner(shifts, gt, pred_scores=probs, pred_boxes=boxes).matched
    if name == "dense-FCOS":
        c = cfg.MODEL.DENSE
        return lambda: dense_fcos_assign(shifts, gt.gt_boxes.tensor, STRIDES, c.SIZES_OF_INTEREST,
                                         c.CENTER_SAMPLING_RADIUS)
    feats = [torch.empty(1, 1, len(torch.unique(s[:, 1])), len(torch.unique(s[:, 0])), device=device)
             for s in shifts]
    if name == "d2-FCOS":
        from detectron2.modeling.meta_arch.fcos import FCOS

        # detectron2's FCOS builds exactly this generator: one stride-sized box per location.
        anchors = DefaultAnchorGenerator(sizes=[[s] for s in STRIDES], aspect_ratios=[1.0],
                                         strides=STRIDES).to(device)(feats)
        this = SimpleNamespace(center_sampling_radius=1.5)
        return lambda: FCOS.match_anchors(this, anchors, [gt])[0]
    if name == "d2-RetinaNet":
        from detectron2.modeling.matcher import Matcher
        from detectron2.modeling.meta_arch.retinanet import RetinaNet

        sizes = [[x, x * 2 ** (1.0 / 3), x * 2 ** (2.0 / 3)] for x in [32, 64, 128, 256, 512]]
        anchors = DefaultAnchorGenerator(sizes=sizes, aspect_ratios=[0.5, 1.0, 2.0], strides=STRIDES,
                                         offset=0.0).to(device)(feats)
        this = SimpleNamespace(anchor_matcher=Matcher([0.4, 0.5], [0, -1, 1], allow_low_quality_matches=True),
                               num_classes=logits.shape[1])
        return lambda: RetinaNet.label_anchors(this, anchors, [gt])[0][0]
    raise ValueError(f"unknown assigner {name!r}; known: {ASSIGNERS}")


class PotoMatching:
    """POTOAssigner of configs/DeFCN/Base-DeFCN.yaml taken apart: its in-prior (point, GT)
    pairs with their matching quality, the one-to-one matching of those pairs by either exact
    solver of ``match_one_to_one``, and the whole assigner."""

    def __init__(self, device: str):
        from d2_anchorfree.modeling.assigners import build_assigner
        from d2_anchorfree.modeling.assigners.poto import match_one_to_one, pair_quality

        self.assigner = build_assigner("POTOAssigner", load_yacs("configs/DeFCN/Base-DeFCN.yaml", device), STRIDES)
        self.match_one_to_one, self.pair_quality = match_one_to_one, pair_quality

    def pairs(self, shifts, gt, logits, boxes):
        """(point index, GT index, quality) of the in-prior pairs."""
        point_idx, gt_idx = self.assigner.prior_pairs(shifts, gt)
        probs = torch.sigmoid(logits)
        return point_idx, gt_idx, self.pair_quality(point_idx, gt_idx, gt, probs, boxes, self.assigner.alpha)

    def match(self, point_idx, gt_idx, quality, num_gt: int, num_points: int, solver: str):
        """The matching by ``solver`` "dense" (``linear_sum_assignment`` on the [G x in-prior
        columns] matrix) or "sparse" (LAPJVsp on the pairs)."""
        return self.match_one_to_one(point_idx, gt_idx, quality, num_gt, num_points,
                                     max_dense_elements=2**62 if solver == "dense" else 0)

    def solver_for(self, num_gt: int, columns: int) -> str:
        """The solver the assigner picks for ``num_gt`` GTs and ``columns`` in-prior points."""
        return "dense" if num_gt * columns <= self.assigner.prior.chunk_elements else "sparse"

    def __call__(self, shifts, gt, logits, boxes):
        return self.assigner(shifts, gt, pred_scores=torch.sigmoid(logits), pred_boxes=boxes).matched

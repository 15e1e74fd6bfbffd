"""Config keys of the model (read by ``modeling``): the FPN's extra levels, the shift generator,
``MODEL.DENSE`` (shared by every dense detector), one section per head, assigner and loss term,
3D Max Filtering; and the keys of the pre-composition layout, registered as renamed."""
from detectron2.config import CfgNode as CN


def add_model_config(cfg):
    """Add the model's keys: ``MODEL.FPN`` TOP_LEVELS* and BOTTOM_UP_PATH, ``MODEL.TIMM``, ``MODEL.SHIFT_GENERATOR``, ``MODEL.DENSE``,
    the head / assigner / loss-term sections, ``MODEL.MAX_FILTER``, and the renamed keys of the
    old layout (:data:`MOVED_KEYS`).

    Args:
        cfg (CfgNode): a detectron2 config; modified in place (called by
            ``d2_anchorfree.config.add_anchorfree_config``, which adds every section).

    Returns:
        CfgNode: the same ``cfg``.
    """
    _C = cfg
    # ---- memory layout of the whole detector: True stores its 4-D weights channels-last (NHWC), so
    # convolutions, norms and activations run in that layout (oneDNN's faster one on CPUs; torch's
    # "channels_last"). Same outputs within float rounding; the exported graphs do not depend on it.
    _C.MODEL.CHANNELS_LAST = False

    # ---- backbone: ResNet-FPN with P6/P7 (FCOS paper: from P5; RetinaNet: from C5)
    _C.MODEL.FPN.TOP_LEVELS = 2  # number of extra levels above P5 (P6, P7)
    _C.MODEL.FPN.TOP_LEVELS_IN_FEATURE = "p5"  # "p5" (FCOS) or "res5" (RetinaNet)
    # ReLU before each extra conv but the first (P7 = conv(relu(P6)), FCOS and RetinaNet); False:
    # P7 = conv(P6) (MMDetection's relu_before_extra_convs=False: its ATSS, GFL, VFNet, TOOD).
    _C.MODEL.FPN.TOP_LEVELS_RELU = True
    # PANet's bottom-up path after the FPN's top-down one (Liu et al., CVPR 2018, Sec. 3.1;
    # MMDetection's PAFPN, YOLO's PAN neck): N3 = P3, N(i+1) = conv3x3(P(i+1) + conv3x3/2(Ni)); the
    # extra levels then come from N5. Needs TOP_LEVELS_IN_FEATURE "p5".
    _C.MODEL.FPN.BOTTOM_UP_PATH = False

    # ---- timm backbones (MODEL.BACKBONE.NAME "build_timm_fpn_backbone", modeling/backbone_timm.py)
    _C.MODEL.TIMM = CN()
    _C.MODEL.TIMM.NAME = ""  # a timm model name, e.g. "mobilenetv3_large_100", "regnetx_002"
    # Levels given to the FPN, named by stride: "res3" = stride 8, "res4" = 16, "res5" = 32.
    _C.MODEL.TIMM.OUT_FEATURES = ["res3", "res4", "res5"]
    # ImageNet weights through timm's loader: from timm's hub (needs the network or timm's cache),
    # or from a local file (.pth / .safetensors; loaded with weights_only=True).
    _C.MODEL.TIMM.PRETRAINED = False
    _C.MODEL.TIMM.WEIGHTS = ""
    # Feature levels (finest first, timm's feature_info) whose modules are frozen; 0 = none.
    _C.MODEL.TIMM.FREEZE_AT = 0
    # "BN" (trained; from scratch), "FrozenBN" (fine-tuning ImageNet weights with small batches) or
    # "SyncBN".
    _C.MODEL.TIMM.NORM = "BN"

    # ---- shift (location) generator: one point per feature-map cell
    _C.MODEL.SHIFT_GENERATOR = CN()
    _C.MODEL.SHIFT_GENERATOR.NAME = "ShiftGenerator"
    # Offset of the point inside its cell, in stride units: 0.5 puts it at (i + 0.5) * stride,
    # i.e. stride // 2 for even strides (FCOS paper, Sec. 3.1).
    _C.MODEL.SHIFT_GENERATOR.OFFSET = 0.5

    # ---- what every dense detector shares (read by d2_anchorfree.modeling.detector)
    _C.MODEL.DENSE = CN()
    _C.MODEL.DENSE.NUM_CLASSES = 80
    _C.MODEL.DENSE.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    # Components, by registered name. "" (and [] for LOSSES) = the choice of the preset named by
    # MODEL.META_ARCHITECTURE (see modeling/presets.py); set them to compose a new detector.
    _C.MODEL.DENSE.HEAD = ""  # HEAD_REGISTRY: FCOSHead, GFLHead, VFNetHead, DeFCNHead, TOODHead
    _C.MODEL.DENSE.ASSIGNER = ""  # ASSIGNER_REGISTRY: FCOSAssigner, ATSSAssigner, POTOAssigner, ...
    # One-to-many auxiliary assigner ("none": no auxiliary loss): it labels the head's auxiliary
    # classifier, trained by an auxiliary focal loss (DeFCN Sec. 3.4: POTOAuxAssigner).
    _C.MODEL.DENSE.AUX_ASSIGNER = ""
    # Assigner of the first INITIAL_ASSIGNER_ITERS iterations (TOOD: ATSS in the first epochs).
    _C.MODEL.DENSE.INITIAL_ASSIGNER = ""
    _C.MODEL.DENSE.INITIAL_ASSIGNER_ITERS = 0
    # Loss terms while the initial assigner is used ([] = the preset's, else LOSSES; TOOD: focal
    # loss on hard labels and the box loss weighted by MODEL.BOX_LOSS.INITIAL_WEIGHTING).
    _C.MODEL.DENSE.INITIAL_LOSSES = []
    _C.MODEL.DENSE.LOSSES = []  # LOSS_REGISTRY names, e.g. ["FocalLoss", "BoxLoss", "CenternessLoss"]
    # "nms": class-aware NMS at NMS_THRESH_TEST; "topk": NMS-free, the top TEST.DETECTIONS_PER_IMAGE
    # (a branch trained one-to-one); "peaks": NMS-free, the top scores after the score-peak rule
    # below (CenterNet's max-pool decoding; any head).
    _C.MODEL.DENSE.POSTPROCESS = ""
    # Towers of every head: depth, norm ("GN", "BN" or ""), classifier prior.
    _C.MODEL.DENSE.NUM_CONVS = 4
    _C.MODEL.DENSE.NORM = "GN"
    # Bias of the tower convs: "auto" = only without a norm (a norm's shift makes it redundant;
    # MMDetection's conv_bias="auto"); "always" (the FCOS authors' and AdelaiDet's towers,
    # MMDetection's FCOS with conv_bias=True).
    _C.MODEL.DENSE.TOWER_CONV_BIAS = "auto"
    # The last conv of the cls and box towers is a DCNv2 with its own offset conv (MMDetection's
    # dcn_on_last_conv, e.g. its VFNet R-50 DCN checkpoints); heads with the shared towers only.
    _C.MODEL.DENSE.DCN_ON_LAST_CONV = False
    _C.MODEL.DENSE.PRIOR_PROB = 0.01  # cls bias init: -log((1 - p) / p)
    # Regress ranges: level i takes objects whose max(l, t, r, b) (pixels) lies in
    # [SIZES[i-1], SIZES[i]], with 0 and +inf at the ends (FCOS Sec. 3.2; the FCOS assigner and
    # POTO's "fcos" level prior).
    _C.MODEL.DENSE.SIZES_OF_INTEREST = [64, 128, 256, 512]
    # Center sampling radius in stride units, of the assigners with a center prior (FCOS "imprv",
    # POTO's "center" spatial prior); 0 = the whole GT box.
    _C.MODEL.DENSE.CENTER_SAMPLING_RADIUS = 0.0
    # GT boxes are processed in chunks so that the dense [points x chunk] tensors of assignment
    # stay below this many elements (memory bound for crowded images; results are identical).
    _C.MODEL.DENSE.ASSIGN_CHUNK_ELEMENTS = 1 << 20
    # Inference
    _C.MODEL.DENSE.SCORE_THRESH_TEST = 0.05
    _C.MODEL.DENSE.TOPK_CANDIDATES_TEST = 1000  # per level, before NMS / top-k
    # Which score picks those candidates: "score" (the ranking score, e.g. FCOS's p * centerness;
    # the FCOS authors) or "candidate" (the thresholded class probability; MMDetection).
    _C.MODEL.DENSE.TOPK_CANDIDATES_BY = "score"
    # At most as many candidates as the level has points (min(TOPK_CANDIDATES_TEST, H x W); DeFCN's
    # cvpods code); False: TOPK_CANDIDATES_TEST (point, class) pairs whatever the level's size.
    _C.MODEL.DENSE.TOPK_CANDIDATES_WITHIN_POINTS = False
    _C.MODEL.DENSE.NMS_THRESH_TEST = 0.6
    # Score voting after NMS (PAA, Kim & Lee, ECCV 2020) when > 0: each kept box becomes
    # the average of the candidates of its class that overlap it, weighted by score *
    # exp(-(1 - IoU)^2 / SCORE_VOTING_SIGMA) (PAA: 0.025); scores unchanged. POSTPROCESS "nms"
    # only. 0.0: off.
    _C.MODEL.DENSE.SCORE_VOTING_SIGMA = 0.0
    # POSTPROCESS "peaks": per level and class, a point scoring below the maximum of the
    # PEAK_KERNEL x PEAK_KERNEL points around it (odd, >= 3) has its score multiplied by
    # NON_PEAK_SCORE_FACTOR (in [0, 1); 0 drops it). With 0.3, every non-peak scores at most 0.3:
    # a display threshold above 0.3 shows peaks only, while COCO AP still counts the recall of
    # the ranking's tail (+0.9 AP against 0 for the SGD-trained real-time GFL on the bundled tree crowns).
    _C.MODEL.DENSE.PEAK_KERNEL = 3
    _C.MODEL.DENSE.NON_PEAK_SCORE_FACTOR = 0.3

    # ---- heads (one section each; the tower keys are in MODEL.DENSE)
    _C.MODEL.FCOS_HEAD = CN()
    # False: distances = exp(s_i * x) (paper). True: relu(s_i * x) * stride (normalized targets).
    _C.MODEL.FCOS_HEAD.NORM_REG_TARGETS = False
    _C.MODEL.FCOS_HEAD.CENTERNESS_ON_REG = False  # centerness branch on the box tower (imprv)
    # score = (p_cls * centerness) ** SCORE_EXPONENT; 0.5 = sqrt of the product, 1.0 = product.
    _C.MODEL.FCOS_HEAD.SCORE_EXPONENT = 0.5
    # "ltrb": the 4 outputs are distances (above); "anchor_delta": MMDetection's anchor-based
    # ATSS, deltas (dx, dy, dw, dh) of a square anchor of side MODEL.ATSS.ANCHOR_SCALE * stride
    # centred on the point (for its converted checkpoints).
    _C.MODEL.FCOS_HEAD.BOX_CODER = "ltrb"
    _C.MODEL.GFL_HEAD = CN()  # GFL (Li et al., NeurIPS 2020) and GFLv2's DGQP (CVPR 2021)
    _C.MODEL.GFL_HEAD.REG_MAX = 16  # distribution over REG_MAX + 1 bins, in stride units
    _C.MODEL.GFL_HEAD.DGQP = False  # GFLv2 Distribution-Guided Quality Predictor
    _C.MODEL.GFL_HEAD.DGQP_TOPK = 4
    _C.MODEL.GFL_HEAD.DGQP_HIDDEN = 64
    _C.MODEL.VFNET_HEAD = CN()  # VarifocalNet (Zhang et al., CVPR 2021)
    # Gradient into the initial box through the star-conv offsets is scaled by this (paper: 0.1).
    _C.MODEL.VFNET_HEAD.OFFSET_GRAD_MUL = 0.1
    # Initial box: "reg_denom" exp(s x) * 8 stride (the authors'), "stride" exp(s x) * stride,
    # "relu" relu(s x) * stride (starting at 4 strides per side).
    _C.MODEL.VFNET_HEAD.INIT_BOX_NORM = "reg_denom"
    _C.MODEL.DEFCN_HEAD = CN()  # DeFCN (Wang et al., CVPR 2021): FCOS towers, no centerness
    _C.MODEL.DEFCN_HEAD.NORM_REG_TARGETS = True
    _C.MODEL.TOOD_HEAD = CN()  # TOOD (Feng et al., ICCV 2021)
    _C.MODEL.TOOD_HEAD.LA_DOWN_RATE = 8  # layer attention hidden width = C // this (reference: C / 8)

    # ---- 3D Max Filtering (DeFCN Sec. 3.3), on any head: a filter branch on the box tower whose
    # sigmoid multiplies the class score
    _C.MODEL.MAX_FILTER = CN()
    _C.MODEL.MAX_FILTER.ENABLED = False
    _C.MODEL.MAX_FILTER.KERNEL = 3  # k x k spatial window
    _C.MODEL.MAX_FILTER.TAU = 2  # scale window: tau + 1 neighbouring levels

    # ---- Dual assignment (YOLOv10, Wang et al., NeurIPS 2024, Sec. 3.1), on any head: a second,
    # one-to-one branch trained beside the head's one-to-many one (MODEL.DENSE.ASSIGNER / LOSSES);
    # inference from the one-to-one branch, NMS-free (see modeling/heads/dual_head.py)
    _C.MODEL.DUAL = CN()
    _C.MODEL.DUAL.ENABLED = False
    # Assigner of the one-to-one branch: "TaskAlignedAssigner" (top-1 of the one-to-many metric:
    # MODEL.TAL ALPHA / BETA, "consistent matching") or "POTOAssigner" (MODEL.POTO).
    _C.MODEL.DUAL.ONE_TO_ONE_ASSIGNER = "TaskAlignedAssigner"
    _C.MODEL.DUAL.ONE_TO_ONE_TOPK = 1  # the top-k of a TaskAlignedAssigner one-to-one rule: must be 1
    # One-to-few warm-up of the one-to-one branch (TaskAlignedAssigner rule only): for its first
    # ONE_TO_ONE_INITIAL_ITERS iterations the rule takes the top ONE_TO_ONE_INITIAL_TOPK (> 1) points
    # of the metric, each with TAL's normalized soft target (below the best point's), then top-1.
    # More positives while the branch learns, one per GT from then on (O2F, Li et al., CVPR 2023:
    # soft anchors positive early, negative later). 1 and 0: off (YOLOv10).
    _C.MODEL.DUAL.ONE_TO_ONE_INITIAL_TOPK = 1
    _C.MODEL.DUAL.ONE_TO_ONE_INITIAL_ITERS = 0
    # Loss terms of the one-to-one branch ([] = MODEL.DENSE.LOSSES); reported with an "_o2o" suffix.
    _C.MODEL.DUAL.ONE_TO_ONE_LOSSES = []
    _C.MODEL.DUAL.ONE_TO_ONE_WEIGHT = 1.0  # multiplies every loss of the one-to-one branch
    # The QFL modulating exponent of the one-to-one branch (None: MODEL.QFL.BETA, as the
    # one-to-many branch). 0.0 is YOLOv10's plain BCE on the IoU target: a neighbour of the one
    # positive scoring 0.3 is pushed down at full weight instead of 0.3^2 of it.
    _C.MODEL.DUAL.ONE_TO_ONE_QFL_BETA = None
    # "separate" (YOLOv10: the one-to-one branch is a copy of the head, own towers) or "shared"
    # (own predictors on the one-to-many branch's tower features).
    _C.MODEL.DUAL.TOWERS = "separate"
    # The one-to-one branch's inputs are detached (YOLOv10's v10Detect): its gradient never reaches
    # the backbone (or, with shared towers, the towers), which the one-to-many branch trains.
    _C.MODEL.DUAL.DETACH = True
    # Whose predictions rank the one-to-one candidates: "own" (YOLOv10's code: each branch its own)
    # or "one_to_many" (the one-to-one positive is exactly the one-to-many branch's best point).
    _C.MODEL.DUAL.MATCH_ON = "own"
    # Branch used at inference: "one_to_one" (with MODEL.DENSE.POSTPROCESS "topk": NMS-free) or
    # "one_to_many" (with "nms": the same weights as an NMS detector, for comparison).
    _C.MODEL.DUAL.INFERENCE_BRANCH = "one_to_one"

    # ---- assigners (one section each)
    _C.MODEL.ATSS = CN()  # ATSS (Zhang et al., CVPR 2020)
    _C.MODEL.ATSS.TOPK = 9  # candidates per level per GT, closest to the GT center
    _C.MODEL.ATSS.ANCHOR_SCALE = 8.0  # square anchor side = ANCHOR_SCALE * stride (pixels)
    _C.MODEL.POTO = CN()  # POTO one-to-one assignment (DeFCN, Wang et al., CVPR 2021)
    _C.MODEL.POTO.ALPHA = 0.8  # Q = p^(1 - alpha) * IoU^alpha (also POTOAuxAssigner's)
    # Spatial prior: "center" (MODEL.DENSE.CENTER_SAMPLING_RADIUS around the center) or "inside".
    _C.MODEL.POTO.SPATIAL_PRIOR = "center"
    # Allowed FPN levels per GT: "all" or "fcos" (MODEL.DENSE.SIZES_OF_INTEREST); also POTOAux's.
    _C.MODEL.POTO.LEVEL_PRIOR = "all"
    _C.MODEL.POTO_AUX = CN()  # DeFCN's one-to-many auxiliary assignment (Sec. 3.4)
    _C.MODEL.POTO_AUX.TOPK = 9
    _C.MODEL.TAL = CN()  # TOOD's Task Alignment Learning (Sec. 3.2)
    _C.MODEL.TAL.TOPK = 13
    _C.MODEL.TAL.ALPHA = 1.0  # t = s^ALPHA * u^BETA
    _C.MODEL.TAL.BETA = 6.0

    # ---- loss terms (one section each; WEIGHT multiplies the normalized term)
    _C.MODEL.FOCAL_LOSS = CN()  # Lin et al., ICCV 2017, Eq. 5, on hard labels
    _C.MODEL.FOCAL_LOSS.ALPHA = 0.25
    _C.MODEL.FOCAL_LOSS.GAMMA = 2.0
    _C.MODEL.FOCAL_LOSS.WEIGHT = 1.0
    _C.MODEL.QFL = CN()  # Quality Focal Loss (GFL Eq. 5) on a soft IoU target
    _C.MODEL.QFL.BETA = 2.0
    # Soft target: "iou" = IoU(predicted box, GT) (GFL); "assigner" = the assigner's quality
    # (TOOD: the normalized alignment metric); "" = the preset's ("iou" without one).
    _C.MODEL.QFL.TARGET = ""
    _C.MODEL.QFL.WEIGHT = 1.0
    _C.MODEL.VFL = CN()  # Varifocal Loss (VFNet Eq. 2) on the IoU of the (refined) box
    _C.MODEL.VFL.ALPHA = 0.75
    _C.MODEL.VFL.GAMMA = 2.0
    _C.MODEL.VFL.IOU_WEIGHTED = True
    _C.MODEL.VFL.WEIGHT = 1.0
    # IoU-family loss on the (final) boxes of the positives. The detectors' papers differ in all
    # three keys, so "" / a negative WEIGHT mean the preset's value (modeling/presets.py).
    _C.MODEL.BOX_LOSS = CN()
    # "iou" (-log((I + 1) / (U + 1)), areas in pixels^2: the FCOS authors' IoU loss),
    # "linear_iou" (1 - IoU), "giou" (1 - GIoU), "diou" or "ciou" (Distance / Complete IoU, the box
    # loss of YOLOv8 and YOLO11; torchvision.ops); see losses/iou.py.
    _C.MODEL.BOX_LOSS.TYPE = ""
    _C.MODEL.BOX_LOSS.WEIGHT = -1.0
    # Per-positive weight and normalizer: "none" (1, / positives), "centerness" (FCOS: the
    # centerness target), "max_score" (GFL: highest predicted class score), "iou" (VFNet: IoU of
    # the box with its GT), "quality" (TOOD: the assigner's soft target); "" = the preset's.
    _C.MODEL.BOX_LOSS.WEIGHTING = ""
    # The weighting while the initial assigner is used ("" = the preset's, else WEIGHTING; TOOD:
    # "centerness", as the reference's warm-up).
    _C.MODEL.BOX_LOSS.INITIAL_WEIGHTING = ""
    _C.MODEL.INIT_BOX_LOSS = CN()  # VFNet: GIoU on the initial boxes, IoU-weighted
    _C.MODEL.INIT_BOX_LOSS.WEIGHT = 1.5
    _C.MODEL.CENTERNESS_LOSS = CN()  # FCOS: BCE on the centerness targets (Eq. 3)
    _C.MODEL.CENTERNESS_LOSS.WEIGHT = 1.0
    _C.MODEL.DFL = CN()  # Distribution Focal Loss (GFL Eq. 7), weighted like BOX_LOSS
    _C.MODEL.DFL.WEIGHT = 0.25
    _C.MODEL.AUX_LOSS = CN()  # focal loss of the auxiliary classifier (FOCAL_LOSS alpha/gamma)
    _C.MODEL.AUX_LOSS.WEIGHT = 1.0

    register_moved_keys(_C)
    return cfg


# Old key -> new key (or a sentence when there is no one-to-one replacement).
MOVED_KEYS = {
    "MODEL.FCOS.NUM_CLASSES": "MODEL.DENSE.NUM_CLASSES",
    "MODEL.FCOS.IN_FEATURES": "MODEL.DENSE.IN_FEATURES",
    "MODEL.FCOS.NUM_CONVS": "MODEL.DENSE.NUM_CONVS",
    "MODEL.FCOS.NORM": "MODEL.DENSE.NORM",
    "MODEL.FCOS.PRIOR_PROB": "MODEL.DENSE.PRIOR_PROB",
    "MODEL.FCOS.SIZES_OF_INTEREST": "MODEL.DENSE.SIZES_OF_INTEREST",
    "MODEL.FCOS.CENTER_SAMPLING_RADIUS": "MODEL.DENSE.CENTER_SAMPLING_RADIUS",
    "MODEL.FCOS.ASSIGNER": "MODEL.DENSE.ASSIGNER (a registered name: 'FCOSAssigner', 'ATSSAssigner', ...)",
    "MODEL.FCOS.NORM_REG_TARGETS": "MODEL.FCOS_HEAD.NORM_REG_TARGETS (DeFCN: MODEL.DEFCN_HEAD.NORM_REG_TARGETS)",
    "MODEL.FCOS.CENTERNESS_ON_REG": "MODEL.FCOS_HEAD.CENTERNESS_ON_REG",
    "MODEL.FCOS.BOX_LOSS_TYPE": "MODEL.BOX_LOSS.TYPE",
    "MODEL.FCOS.FOCAL_LOSS_ALPHA": "MODEL.FOCAL_LOSS.ALPHA",
    "MODEL.FCOS.FOCAL_LOSS_GAMMA": "MODEL.FOCAL_LOSS.GAMMA",
    "MODEL.FCOS.LOSS_WEIGHT_CLS": "MODEL.FOCAL_LOSS.WEIGHT",
    "MODEL.FCOS.LOSS_WEIGHT_BOX": "MODEL.BOX_LOSS.WEIGHT",
    "MODEL.FCOS.LOSS_WEIGHT_CENTERNESS": "MODEL.CENTERNESS_LOSS.WEIGHT",
    "MODEL.FCOS.SCORE_THRESH_TEST": "MODEL.DENSE.SCORE_THRESH_TEST",
    "MODEL.FCOS.TOPK_CANDIDATES_TEST": "MODEL.DENSE.TOPK_CANDIDATES_TEST",
    "MODEL.FCOS.NMS_THRESH_TEST": "MODEL.DENSE.NMS_THRESH_TEST",
    "MODEL.FCOS.SCORE_EXPONENT": "MODEL.FCOS_HEAD.SCORE_EXPONENT",
    "MODEL.FCOS.ASSIGN_CHUNK_ELEMENTS": "MODEL.DENSE.ASSIGN_CHUNK_ELEMENTS",
    "MODEL.GFL.REG_MAX": "MODEL.GFL_HEAD.REG_MAX",
    "MODEL.GFL.QFL_BETA": "MODEL.QFL.BETA",
    "MODEL.GFL.LOSS_WEIGHT_QFL": "MODEL.QFL.WEIGHT",
    "MODEL.GFL.LOSS_WEIGHT_DFL": "MODEL.DFL.WEIGHT",
    "MODEL.GFL.LOSS_WEIGHT_BOX": "MODEL.BOX_LOSS.WEIGHT",
    "MODEL.GFL.DGQP": "MODEL.GFL_HEAD.DGQP",
    "MODEL.GFL.DGQP_TOPK": "MODEL.GFL_HEAD.DGQP_TOPK",
    "MODEL.GFL.DGQP_HIDDEN": "MODEL.GFL_HEAD.DGQP_HIDDEN",
    "MODEL.GFL.ASSIGNER": "MODEL.DENSE.ASSIGNER (a registered name: 'ATSSAssigner', 'FCOSAssigner', ...)",
    "MODEL.VFNET.ALPHA": "MODEL.VFL.ALPHA",
    "MODEL.VFNET.GAMMA": "MODEL.VFL.GAMMA",
    "MODEL.VFNET.IOU_WEIGHTED": "MODEL.VFL.IOU_WEIGHTED",
    "MODEL.VFNET.LOSS_WEIGHT_VFL": "MODEL.VFL.WEIGHT",
    "MODEL.VFNET.LOSS_WEIGHT_BOX_INIT": "MODEL.INIT_BOX_LOSS.WEIGHT",
    "MODEL.VFNET.LOSS_WEIGHT_BOX_REFINE": "MODEL.BOX_LOSS.WEIGHT",
    "MODEL.VFNET.OFFSET_GRAD_MUL": "MODEL.VFNET_HEAD.OFFSET_GRAD_MUL",
    "MODEL.VFNET.USE_ATSS": "MODEL.DENSE.ASSIGNER ('ATSSAssigner' is VFNet's default)",
    "MODEL.POTO.CENTER_SAMPLING_RADIUS": "MODEL.DENSE.CENTER_SAMPLING_RADIUS",
    "MODEL.POTO.AUX_TOPK": "MODEL.POTO_AUX.TOPK",
    "MODEL.POTO.AUX_LOSS_WEIGHT": "MODEL.AUX_LOSS.WEIGHT",
    "MODEL.DEFCN.USE_3DMF": "MODEL.MAX_FILTER.ENABLED",
    "MODEL.DEFCN.MAX_FILTER_KERNEL": "MODEL.MAX_FILTER.KERNEL",
    "MODEL.DEFCN.MAX_FILTER_TAU": "MODEL.MAX_FILTER.TAU",
    "MODEL.DEFCN.USE_AUX_LOSS": "MODEL.DENSE.AUX_ASSIGNER ('POTOAuxAssigner', or 'none' for no auxiliary loss)",
    "MODEL.DEFCN.NMS_FREE": "MODEL.DENSE.POSTPROCESS ('topk': NMS-free, 'nms')",
}


# Sections of the old layout that no longer exist at all: a YAML that sets a key under one is
# caught by yacs at the section level, so the section is registered too, its message listing
# where each of its keys went.
REMOVED_SECTIONS = {"MODEL.FCOS": "MODEL.DENSE", "MODEL.GFL": "MODEL.GFL_HEAD",
                    "MODEL.VFNET": "MODEL.VFNET_HEAD", "MODEL.DEFCN": "MODEL.MAX_FILTER"}


def register_moved_keys(cfg) -> None:
    """Register :data:`MOVED_KEYS` as yacs renamed keys of ``cfg``: merging a YAML file or an
    option list that sets one raises ``KeyError`` naming the new key. A YAML section of the old
    layout (e.g. ``MODEL: FCOS: NUM_CLASSES: 3``) raises naming the new key of every key of that
    section (yacs stops at the first unknown level, the section)."""
    for old, new in MOVED_KEYS.items():
        target = new.split(" ")[0]
        note = new[len(target):].strip(" ()") or None
        cfg.register_renamed_key(old, target, message=note)
    for section, target in REMOVED_SECTIONS.items():
        moves = "; ".join(f"{old[len(section) + 1:]} -> {new.split(' ')[0]}"
                          for old, new in MOVED_KEYS.items() if old.startswith(section + "."))
        cfg.register_renamed_key(section, target, message=f"the keys of {section} moved: {moves}")

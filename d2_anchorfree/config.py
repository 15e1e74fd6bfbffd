"""Config keys of d2_anchorfree, added to a detectron2 yacs ``CfgNode``.

``add_anchorfree_config(cfg)`` adds every key below with its default. Unknown keys in a YAML file
still fail loudly (yacs raises ``KeyError: 'Non-existent config key: ...'``).
"""
from detectron2.config import CfgNode as CN


def add_anchorfree_config(cfg):
    """Add the ``MODEL.FCOS``, ``MODEL.SHIFT_GENERATOR``, ``MODEL.ATSS``, ``MODEL.GFL``,
    ``MODEL.VFNET``, ``MODEL.POTO`` and ``MODEL.DEFCN`` sections (and a few FPN/data keys) to ``cfg``.

    Args:
        cfg (CfgNode): a detectron2 config, e.g. ``detectron2.config.get_cfg()``; modified in place.

    Returns:
        CfgNode: the same ``cfg``, for chaining.

    Idempotent: calling it twice leaves the config unchanged.
    """
    if hasattr(cfg.MODEL, "FCOS"):
        return cfg
    _C = cfg

    # ---- backbone: ResNet-FPN with P6/P7 (FCOS paper: from P5; RetinaNet: from C5)
    _C.MODEL.FPN.TOP_LEVELS = 2  # number of extra levels above P5 (P6, P7)
    _C.MODEL.FPN.TOP_LEVELS_IN_FEATURE = "p5"  # "p5" (FCOS) or "res5" (RetinaNet)

    # ---- shift (location) generator: one point per feature-map cell
    _C.MODEL.SHIFT_GENERATOR = CN()
    _C.MODEL.SHIFT_GENERATOR.NAME = "ShiftGenerator"
    # Offset of the point inside its cell, in stride units: 0.5 puts it at (i + 0.5) * stride,
    # i.e. stride // 2 for even strides (FCOS paper, Sec. 3.1).
    _C.MODEL.SHIFT_GENERATOR.OFFSET = 0.5

    # ---- FCOS (Tian et al., ICCV 2019); also the shared dense-head keys of the other detectors
    _C.MODEL.FCOS = CN()
    _C.MODEL.FCOS.NUM_CLASSES = 80
    _C.MODEL.FCOS.IN_FEATURES = ["p3", "p4", "p5", "p6", "p7"]
    _C.MODEL.FCOS.NUM_CONVS = 4  # convs in each of the cls and box towers
    _C.MODEL.FCOS.NORM = "GN"  # "GN", "BN" or "" (none) in the towers
    _C.MODEL.FCOS.PRIOR_PROB = 0.01  # cls bias init: -log((1 - p) / p)
    # Regress ranges: level i takes objects whose max(l, t, r, b) (pixels) lies in
    # [SIZES[i-1], SIZES[i]], with 0 and +inf at the ends (paper Sec. 3.2).
    _C.MODEL.FCOS.SIZES_OF_INTEREST = [64, 128, 256, 512]
    # Center sampling radius in stride units (FCOS "imprv"); 0 = whole GT box is positive.
    _C.MODEL.FCOS.CENTER_SAMPLING_RADIUS = 0.0
    # Which assigner labels locations: "FCOS" (scale ranges) or "ATSS" (the "FCOS + ATSS" setting).
    _C.MODEL.FCOS.ASSIGNER = "FCOS"
    # False: distances = exp(s_i * x) (paper). True: relu(s_i * x) * stride (normalized targets).
    _C.MODEL.FCOS.NORM_REG_TARGETS = False
    _C.MODEL.FCOS.CENTERNESS_ON_REG = False  # centerness branch on the box tower (imprv)
    _C.MODEL.FCOS.BOX_LOSS_TYPE = "iou"  # "iou" (-log IoU), "linear_iou" (1 - IoU) or "giou"
    _C.MODEL.FCOS.FOCAL_LOSS_ALPHA = 0.25
    _C.MODEL.FCOS.FOCAL_LOSS_GAMMA = 2.0
    _C.MODEL.FCOS.LOSS_WEIGHT_CLS = 1.0
    _C.MODEL.FCOS.LOSS_WEIGHT_BOX = 1.0
    _C.MODEL.FCOS.LOSS_WEIGHT_CENTERNESS = 1.0
    # Inference
    _C.MODEL.FCOS.SCORE_THRESH_TEST = 0.05
    _C.MODEL.FCOS.TOPK_CANDIDATES_TEST = 1000  # per level, before NMS
    _C.MODEL.FCOS.NMS_THRESH_TEST = 0.6
    # score = (p_cls * centerness) ** SCORE_EXPONENT; 0.5 = sqrt of the product, 1.0 = product.
    _C.MODEL.FCOS.SCORE_EXPONENT = 0.5
    # GT boxes are processed in chunks so that the dense [points x chunk] distance tensors stay
    # below this many elements (memory bound for crowded images; results are identical).
    _C.MODEL.FCOS.ASSIGN_CHUNK_ELEMENTS = 1 << 20

    # ---- ATSS assignment (Zhang et al., CVPR 2020)
    _C.MODEL.ATSS = CN()
    _C.MODEL.ATSS.TOPK = 9  # candidates per level per GT, closest to the GT center
    _C.MODEL.ATSS.ANCHOR_SCALE = 8.0  # square anchor side = ANCHOR_SCALE * stride (pixels)

    # ---- GFL (Li et al., NeurIPS 2020) and GFLv2's DGQP (Li et al., CVPR 2021)
    _C.MODEL.GFL = CN()
    _C.MODEL.GFL.REG_MAX = 16  # distribution over REG_MAX + 1 bins, in stride units
    _C.MODEL.GFL.QFL_BETA = 2.0
    _C.MODEL.GFL.LOSS_WEIGHT_QFL = 1.0
    _C.MODEL.GFL.LOSS_WEIGHT_DFL = 0.25
    _C.MODEL.GFL.LOSS_WEIGHT_BOX = 2.0  # GIoU
    _C.MODEL.GFL.DGQP = False  # GFLv2 Distribution-Guided Quality Predictor
    _C.MODEL.GFL.DGQP_TOPK = 4
    _C.MODEL.GFL.DGQP_HIDDEN = 64
    # Assigner of the GFL detector: "ATSS" (paper), "FCOS" or a registered assigner class name.
    _C.MODEL.GFL.ASSIGNER = "ATSS"

    # ---- VarifocalNet (Zhang et al., CVPR 2021)
    _C.MODEL.VFNET = CN()
    _C.MODEL.VFNET.ALPHA = 0.75
    _C.MODEL.VFNET.GAMMA = 2.0
    _C.MODEL.VFNET.IOU_WEIGHTED = True
    _C.MODEL.VFNET.LOSS_WEIGHT_VFL = 1.0
    _C.MODEL.VFNET.LOSS_WEIGHT_BOX_INIT = 1.5
    _C.MODEL.VFNET.LOSS_WEIGHT_BOX_REFINE = 2.0
    # Gradient into the initial box through the star-conv offsets is scaled by this (paper: 0.1).
    _C.MODEL.VFNET.OFFSET_GRAD_MUL = 0.1
    _C.MODEL.VFNET.USE_ATSS = True

    # ---- POTO one-to-one assignment (DeFCN, Wang et al., CVPR 2021)
    _C.MODEL.POTO = CN()
    _C.MODEL.POTO.ALPHA = 0.8  # Q = p^(1 - alpha) * IoU^alpha
    # Spatial prior: "center" (center sampling with CENTER_SAMPLING_RADIUS) or "inside" (GT box).
    _C.MODEL.POTO.SPATIAL_PRIOR = "center"
    _C.MODEL.POTO.CENTER_SAMPLING_RADIUS = 1.5
    # Allowed FPN levels per GT: "all" or "fcos" (FCOS scale ranges).
    _C.MODEL.POTO.LEVEL_PRIOR = "all"
    _C.MODEL.POTO.AUX_TOPK = 9  # one-to-many auxiliary assignment
    _C.MODEL.POTO.AUX_LOSS_WEIGHT = 1.0

    # ---- DeFCN head options
    _C.MODEL.DEFCN = CN()
    _C.MODEL.DEFCN.USE_3DMF = True
    _C.MODEL.DEFCN.MAX_FILTER_KERNEL = 3  # k x k spatial window
    _C.MODEL.DEFCN.MAX_FILTER_TAU = 2  # scale window: tau + 1 neighbouring levels
    _C.MODEL.DEFCN.USE_AUX_LOSS = True
    _C.MODEL.DEFCN.NMS_FREE = True  # False: class-aware NMS at MODEL.FCOS.NMS_THRESH_TEST

    # ---- data: COCO-format datasets registered from the config (no Python needed)
    # Each entry: "name,path/to/annotations.json,path/to/image_root".
    _C.DATASETS.REGISTER_COCO = []
    # Check every annotation (file exists, box inside image, positive size, known category).
    _C.DATASETS.VALIDATE_ANNOTATIONS = True
    # The "area" of every annotation (COCOeval's APs/APm/APl split by it). With a segmentation it
    # must lie in (0, w*h*(1 + AREA_TOLERANCE)] (a mask is smaller than its box); without one,
    # within AREA_TOLERANCE (relative) of the box's w*h. "error": a wrong area stops loading,
    # naming the annotations; "recompute": a corrected json (areas from the segmentation, else
    # w*h) is written to OUTPUT_DIR/datasets/ at registration and evaluation uses it; "ignore".
    _C.DATASETS.AREA_CHECK = "error"
    _C.DATASETS.AREA_TOLERANCE = 0.1
    # Decode every image when the dataset is loaded, naming all unreadable files (corrupt,
    # truncated, 16-bit/float, wrong size) before training starts: "auto" (datasets of at most
    # 5000 images), "always" or "never".
    _C.DATASETS.VALIDATE_IMAGES = "auto"

    # ---- training health (d2_anchorfree.engine.health.TrainingHealthCheck)
    _C.SOLVER.HEALTH_CHECK = CN()
    _C.SOLVER.HEALTH_CHECK.ENABLED = True
    # Stop when the weights' global L2 norm exceeds this multiple of its value at the start of the
    # run (exploding weights under gradient clipping keep the loss finite); 0 disables.
    _C.SOLVER.HEALTH_CHECK.MAX_WEIGHT_NORM_GROWTH = 100.0

    # ---- evaluation
    # COCOeval maxDets becomes [1, 10, this]; AP is computed at this many detections per image.
    # Raise it (with TEST.DETECTIONS_PER_IMAGE) for crowded images such as tree-crown tiles.
    _C.TEST.COCO_MAX_DETS_PER_IMAGE = 100

    # ---- mixed precision (with detectron2's SOLVER.AMP.ENABLED, CUDA only)
    # Autocast dtype of AMPTrainer: "float16" (default, every detectron2) or "bfloat16" (needs a
    # detectron2 whose AMPTrainer takes `precision`, i.e. main after v0.6; see compat.py).
    _C.SOLVER.AMP.PRECISION = "float16"
    return cfg

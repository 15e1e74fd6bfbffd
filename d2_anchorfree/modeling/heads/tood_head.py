"""TOOD's task-aligned head (T-head): shared task-interactive convs, layer-attention task
decomposition, and task-aligned predictors (probability map for classification, per-side spatial
offsets for localization).

Source: Feng et al., "TOOD: Task-aligned One-stage Object Detection", ICCV 2021, Sec. 3.1 and
Fig. 3, with the layer layout and initialisation of the authors' code (fcjian/TOOD
``mmdet/models/dense_heads/tood_head.py``; MMDetection 3.x ``dense_heads/tood_head.py``,
``TOODHead`` with ``anchor_type='anchor_free'`` and ``TaskDecomposition``).
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec

from ...layers import Scale
from ...layers.deform_conv import deform_conv2d_fp32
from ...layers.level_norm import apply_norm, level_norm
from .base import HEAD_REGISTRY, ClassScores, DenseHead, DenseOutputs
from .towers import MAX_EXP_INPUT, conv_tower, prior_bias


def aligned_scores(logits: torch.Tensor, prob_logits: torch.Tensor) -> torch.Tensor:
    """TOOD's aligned classification score P_align = sqrt(P * M) (Sec. 3.1, "task-aligned
    predictor"; reference ``(cls_logits.sigmoid() * cls_prob.sigmoid()).sqrt()``).

    Args:
        logits: [N, K, H, W] class logits. prob_logits: [N, 1, H, W] probability-map logits
            (broadcast over the classes).

    Returns:
        Tensor [N, K, H, W] in [0, 1]. Computed as exp((logsigmoid(a) + logsigmoid(b)) / 2): the
        same value, but a finite gradient where the product underflows (sqrt'(0) = inf).
    """
    return torch.exp(0.5 * (F.logsigmoid(logits) + F.logsigmoid(prob_logits)))


def deform_sample(maps: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample each channel of ``maps`` at its own offset from every location (TOOD
    Sec. 3.1: B_align(i, j, c) = B(i + O(i, j, 2c), j + O(i, j, 2c + 1), c); reference
    ``TOODHead.deform_sampling``).

    Implemented, as the reference does, as a depthwise deformable convolution with a 1x1 kernel of
    weight 1 (``torchvision.ops.deform_conv2d`` through ``layers.deform_conv.deform_conv2d_fp32``, which
    computes in float32 under AMP): it is the reference's operator, so borders behave the same
    (samples outside the map read 0 and are blended bilinearly, as in mmcv/torchvision), offsets are
    taken directly in feature-map pixels (no [-1, 1] normalization as ``grid_sample`` would need),
    and it is differentiable in both inputs.

    Args:
        maps: [N, C, H, W]. offsets: [N, 2C, H, W] in feature-map pixels; channel 2c is dy (rows,
            down positive) and 2c + 1 is dx (columns, right positive) of channel c.

    Returns:
        Tensor [N, C, H, W] (dtype of ``maps``): out[n, c, y, x] = maps[n, c] bilinearly sampled at
        row y + dy, column x + dx. Zero offsets return ``maps`` exactly.

    Raises:
        ValueError: ``offsets`` not [N, 2C, H, W].
    """
    n, c, h, w = maps.shape
    if not torch.jit.is_tracing() and tuple(offsets.shape) != (n, 2 * c, h, w):  # traced sizes: no check
        raise ValueError(f"offsets must be {(n, 2 * c, h, w)} for maps {tuple(maps.shape)}, got {tuple(offsets.shape)}")
    weight = maps.new_ones(c, 1, 1, 1)
    return deform_conv2d_fp32(maps, offsets, weight, None, (1, 1), (0, 0), (1, 1))


class TaskDecomposition(nn.Module):
    """Layer-attention task decomposition (TOOD Sec. 3.1, Fig. 3b).

    From the concatenated task-interactive features X [N, C * n, H, W] (n = num_convs layers of C
    channels): w = sigmoid(conv1x1(relu(conv1x1(avgpool(X))))) [N, n], one weight per layer,
    X_task = concat_k(w_k * X_k), then relu(norm(conv1x1(X_task))) [N, C, H, W]. The attention is
    folded into the reduction conv's weight (reference: "to save memory and FLOPs"), which is the
    same as scaling the features first.

    The attention's hidden width is C // la_down_rate (= C * n // (n * la_down_rate)): the
    reference builds ``TaskDecomposition(feat_channels, stacked_convs, stacked_convs * 8)``, whose
    hidden width is C * n // (8 n) = C / 8 (32 for C = 256).
    Init (reference): attention convs normal std 0.001, bias 0; reduction conv normal std 0.01.
    """

    def __init__(self, channels: int, num_convs: int, la_down_rate: int, norm: str, num_levels: int = 1):
        """channels: C. num_convs: n. la_down_rate: the attention's reduction. norm: "GN", "BN"
        or "" (a BatchNorm is per level, :func:`~d2_anchorfree.layers.level_norm.level_norm`).
        num_levels: the FPN levels sharing the layer."""
        super().__init__()
        self.channels = channels
        self.num_convs = num_convs
        in_channels = channels * num_convs
        hidden = channels // la_down_rate
        self.layer_attention = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, num_convs, 1), nn.Sigmoid())
        self.reduction_conv = nn.Conv2d(in_channels, channels, 1, bias=not norm)
        self.norm = level_norm(norm, channels, num_levels) if norm else None
        for m in self.layer_attention:
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.001)
                nn.init.constant_(m.bias, 0)
        nn.init.normal_(self.reduction_conv.weight, std=0.01)
        if self.reduction_conv.bias is not None:
            nn.init.constant_(self.reduction_conv.bias, 0)

    def forward(self, feat: torch.Tensor, avg_feat: torch.Tensor, level: int = 0) -> torch.Tensor:
        """
        Args:
            feat: [N, C * n, H, W] concatenated task-interactive features.
            avg_feat: [N, C * n, 1, 1] their global average (shared by the two decompositions).
            level: the FPN level (0 = the finest), for a per-level BatchNorm.

        Returns:
            Tensor [N, C, H, W], >= 0.
        """
        n, _, h, w = feat.shape
        c, k = self.channels, self.num_convs
        attention = self.layer_attention(avg_feat).reshape(n, 1, k, 1)
        weight = attention * self.reduction_conv.weight.reshape(1, c, k, c)  # [N, C, n, C]
        out = torch.bmm(weight.reshape(n, c, k * c), feat.reshape(n, k * c, h * w)).reshape(n, c, h, w)
        if self.reduction_conv.bias is not None:
            out = out + self.reduction_conv.bias[None, :, None, None]
        out = apply_norm(self.norm, out, level)
        return F.relu(out)


@HEAD_REGISTRY.register()
class TOODHead(DenseHead):
    """TOOD's task-aligned head (paper Sec. 3.1, Fig. 3), anchor-free, shared across FPN levels.

    Per level (stride s, C channels, K classes):
      * ``inter_convs``: ``num_convs`` (paper 6) x (3x3 conv, norm, ReLU) applied in sequence; all
        their outputs are concatenated into X_inter [N, C * num_convs, H, W];
      * two :class:`TaskDecomposition` (``cls_decomp``, ``reg_decomp``) give cls/reg features;
      * classification: ``tood_cls`` (3x3 conv) -> K logits; probability map M from X_inter by
        ``cls_prob_module`` (1x1 conv C * num_convs -> C/4, ReLU, 3x3 conv -> 1 logit); the score
        is P_align = sqrt(sigmoid(logits) * sigmoid(prob)) (:func:`aligned_scores`);
      * localization: ``tood_reg`` (3x3 conv) -> d = Scale_s(exp(min(x, MAX_EXP_INPUT))), the
        distances (l, t, r, b) in **stride units** (reference anchor-free branch, Scale applied
        after exp), decoded to a box around the level's point; offset map O from X_inter by
        ``reg_offset_module`` (1x1 conv -> C/4, ReLU, 3x3 conv -> 8 = one (dy, dx) per box side, in
        feature-map pixels); the aligned box takes each of its four coordinates (x0, y0, x1, y1)
        from that coordinate's map bilinearly sampled at location + (dy, dx) (:func:`deform_sample`,
        done in stride units as in the reference, so the zero padding outside the map is the same).

    Points: cell (r, c) of a level of stride s has its point at ((c + point_offset) * s,
    (r + point_offset) * s) pixels, the ShiftGenerator convention (``MODEL.SHIFT_GENERATOR.OFFSET``);
    the head builds these grids itself from ``input_shape``'s strides, so ``point_offset`` must
    equal the detector's shift offset.

    Outputs of :meth:`forward` (dict of lists over levels):
      * ``"logits"``: [N, K, H, W] class logits;
      * ``"prob"``: [N, 1, H, W] probability-map logits (score: :func:`aligned_scores`);
      * ``"ltrb"``: [N, 4, H, W] float32, pixels: (x - x0, y - y0, x1 - x, y1 - y) of the aligned
        box around the cell's point (x, y). Because each side is sampled elsewhere, the aligned box
        need not contain its point, so entries **may be negative** (decode with x0 = x - l etc.,
        which stays correct; "positive distance" assumptions do not hold). An aligned box that
        comes out inverted (x0 > x1 or y0 > y1) is replaced as a whole by the unaligned box d
        around the point (reference ``TOODHead.forward``, mmdet ``tood_head.py``): l + r >= 0 and
        t + b >= 0 always, and IoU losses keep a gradient (through d). With zero offsets
        ltrb = d * s.

    Post-processing (reference ``_predict_by_feat_single``): the boxes are not clipped to the image
    before NMS (:attr:`clip_boxes_before_nms`; the detections are clipped afterwards, as every
    detectron2 model's).

    Init (reference): inter convs normal std 0.01; ``tood_cls`` std 0.01, bias prior_bias;
    ``tood_reg`` std 0.01, bias 0; ``cls_prob_module`` std 0.01, last bias prior_bias;
    ``reg_offset_module`` std 0.001, bias 0; decomposition: see :class:`TaskDecomposition`; Scales 1.

    As a :class:`DenseHead`: the level features are "cls" / "box" (the two decompositions) and
    "inter"; the classification scores are the probabilities P_align (``cls_scores_activated``),
    trained with the Quality Focal Loss; 3DMF and the auxiliary classifier attach as on any head.
    """

    EXTRAS = ("prob",)
    #: the reference clips no box before NMS (only the final detections are clipped)
    clip_boxes_before_nms = False

    @configurable
    def __init__(self, *, input_shape: List[ShapeSpec], num_classes: int, num_convs: int = 6,
                 norm: str = "GN", tower_conv_bias: str = "auto", dcn_on_last_conv: bool = False,
                 prior_prob: float = 0.01, la_down_rate: int = 8,
                 point_offset: float = 0.5, max_filter: Optional[Tuple[int, int]] = None,
                 aux_classifier: bool = False):
        """
        Args:
            input_shape: per level ShapeSpec (same channels C on every level; ``stride`` set).
            num_classes: K >= 1.
            num_convs: task-interactive convs (paper 6), >= 1.
            norm: "GN" (C divisible by 32), "BN", "SyncBN" or "" (convs then get a bias).
            prior_prob: initial probability of both sigmoid(logits) and sigmoid(prob), in (0, 1).
            la_down_rate: layer-attention reduction, hidden width C // la_down_rate (reference
                effective value 8, see :class:`TaskDecomposition`), >= 1 and <= C.
            point_offset: position of a point in its cell, stride units, in [0, 1).
            tower_conv_bias, dcn_on_last_conv, max_filter, aux_classifier: as :class:`DenseHead`.

        Raises:
            ValueError: levels with different channels or no stride, K < 1, C < 4, a bad
                num_convs / la_down_rate / point_offset / prior_prob, or GN with C % 32 != 0.
        """
        super().__init__(input_shape=input_shape, num_classes=num_classes, num_convs=num_convs,
                         norm=norm, name="TOOD", tower_conv_bias=tower_conv_bias,
                         dcn_on_last_conv=dcn_on_last_conv, towers=False)
        c = self.in_channels
        if any(s.stride is None or s.stride <= 0 for s in input_shape):
            raise ValueError(f"TOOD head needs a positive stride on every level, got {input_shape}")
        if num_convs < 1:
            raise ValueError(f"MODEL.DENSE.NUM_CONVS must be >= 1 for TOOD, got {num_convs}")
        if c < 4:
            raise ValueError(f"TOOD head needs >= 4 channels (C/4 in the predictors), got {c}")
        if not 1 <= la_down_rate <= c:
            raise ValueError(f"MODEL.TOOD_HEAD.LA_DOWN_RATE must be in [1, {c}], got {la_down_rate}")
        if not 0.0 <= point_offset < 1.0:
            raise ValueError(f"MODEL.SHIFT_GENERATOR.OFFSET must be in [0, 1), got {point_offset}")
        bias = prior_bias(prior_prob)
        self.point_offset = float(point_offset)
        levels = len(self.strides)
        self.inter_convs = nn.ModuleList([conv_tower(c, 1, norm, tower_conv_bias, num_levels=levels)
                                          for _ in range(num_convs)])
        self.cls_decomp = TaskDecomposition(c, num_convs, la_down_rate, norm, levels)
        self.reg_decomp = TaskDecomposition(c, num_convs, la_down_rate, norm, levels)
        self.tood_cls = nn.Conv2d(c, num_classes, 3, padding=1)
        self.tood_reg = nn.Conv2d(c, 4, 3, padding=1)
        self.cls_prob_module = nn.Sequential(
            nn.Conv2d(c * num_convs, c // 4, 1), nn.ReLU(), nn.Conv2d(c // 4, 1, 3, padding=1))
        self.reg_offset_module = nn.Sequential(
            nn.Conv2d(c * num_convs, c // 4, 1), nn.ReLU(), nn.Conv2d(c // 4, 8, 3, padding=1))
        self.scales = nn.ModuleList([Scale(1.0) for _ in self.strides])

        for module, std in ((self.inter_convs, 0.01), (self.tood_cls, 0.01), (self.tood_reg, 0.01),
                            (self.cls_prob_module, 0.01), (self.reg_offset_module, 0.001)):
            for m in module.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.normal_(m.weight, std=std)
                    if m.bias is not None:
                        nn.init.constant_(m.bias, 0)
        nn.init.constant_(self.tood_cls.bias, bias)
        nn.init.constant_(self.cls_prob_module[-1].bias, bias)
        self.finish(prior_prob, max_filter, aux_classifier, init_all=False)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        """Raises ValueError unless the detector's points come from ``ShiftGenerator`` (the head
        rebuilds its grid with ``MODEL.SHIFT_GENERATOR.OFFSET``)."""
        if cfg.MODEL.SHIFT_GENERATOR.NAME != "ShiftGenerator":
            raise ValueError(f"TOODHead builds the ShiftGenerator's point grid itself; "
                             f"MODEL.SHIFT_GENERATOR.NAME {cfg.MODEL.SHIFT_GENERATOR.NAME!r} is not supported")
        return {**cls.base_config(cfg, input_shape), "la_down_rate": cfg.MODEL.TOOD_HEAD.LA_DOWN_RATE,
                "point_offset": cfg.MODEL.SHIFT_GENERATOR.OFFSET}

    def point_grid(self, height: int, width: int, device=None) -> torch.Tensor:
        """[2, H, W] float32 points (x, y) of one level in **stride units**: (c + offset, r + offset);
        times the level's stride they are the ShiftGenerator's points in pixels."""
        ys = torch.arange(height, dtype=torch.float32, device=device) + self.point_offset
        xs = torch.arange(width, dtype=torch.float32, device=device) + self.point_offset
        return torch.stack([xs[None, :].expand(height, width), ys[:, None].expand(height, width)])

    def level_features(self, feature: torch.Tensor, level: int) -> Dict[str, torch.Tensor]:
        """Task-interactive features X_inter [N, C * n, H, W] ("inter") and the two task
        decompositions, "cls" and "box" [N, C, H, W], of level ``level`` (0 = the finest)."""
        inter = []
        x = feature
        for conv in self.inter_convs:
            x = conv(x, level)
            inter.append(x)
        inter_feat = torch.cat(inter, dim=1)
        avg_feat = F.adaptive_avg_pool2d(inter_feat, 1)
        return {"inter": inter_feat, "cls": self.cls_decomp(inter_feat, avg_feat, level),
                "box": self.reg_decomp(inter_feat, avg_feat, level)}

    def predict_level(self, feats: Dict[str, torch.Tensor], level: int) -> Dict[str, torch.Tensor]:
        """"logits" [N, K, H, W], "prob" [N, 1, H, W] logits and "ltrb" [N, 4, H, W] pixels (see
        the class docstring)."""
        inter_feat, stride = feats["inter"], self.strides[level]
        # Box in stride units around the point (reference: decoded at anchor_center / stride,
        # in float32).
        dist = self.scales[level](torch.exp(self.tood_reg(feats["box"]).float().clamp(max=MAX_EXP_INPUT)))
        h, w = inter_feat.shape[-2:]
        grid = self.point_grid(h, w, inter_feat.device)[None]  # [1, 2, H, W]
        box = torch.cat([grid - dist[:, :2], grid + dist[:, 2:]], dim=1)  # (x0, y0, x1, y1)
        aligned = deform_sample(box, self.reg_offset_module(inter_feat).float())
        # Each coordinate is sampled elsewhere, so x0 > x1 (or y0 > y1) can happen: such a box is
        # replaced by the unaligned one (reference), which is valid and keeps an IoU gradient.
        inverted = (aligned[:, 0:1] > aligned[:, 2:3]) | (aligned[:, 1:2] > aligned[:, 3:4])
        aligned = torch.where(inverted, box, aligned)
        return {
            "logits": self.tood_cls(feats["cls"]),
            "prob": self.cls_prob_module(inter_feat),
            "ltrb": torch.cat([grid - aligned[:, :2], aligned[:, 2:] - grid], dim=1) * stride,
        }

    @property
    def cls_scores_activated(self) -> bool:
        return True

    def cls_scores(self, out: DenseOutputs) -> ClassScores:
        """P_align = sqrt(sigmoid(cls) * sigmoid(prob)) [N, R, K] (3DMF, if on, folded into cls)."""
        return ClassScores.from_probabilities(aligned_scores(super().cls_scores(out).logits, out.extras["prob"]))

    def inference_scores(self, out: DenseOutputs):
        """P_align [N, R, K], also what the score threshold applies to."""
        return self.cls_scores(out).probabilities, None

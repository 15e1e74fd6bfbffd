"""The VarifocalNet head: IoU-aware classification score (IACS), star-shaped box feature
representation and bounding-box refinement.

Source: Zhang et al., "VarifocalNet: An IoU-aware Dense Object Detector", CVPR 2021, Sec. 4 and
Fig. 3, with the layer layout of the authors' code (mmdet ``VFNetHead``).
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec

from ...layers import Scale
from ...layers.deform_conv import DeformConv
from .base import HEAD_REGISTRY, DenseHead
from .towers import MAX_EXP_INPUT, conv_tower, decode_ltrb

# Initial-box parametrizations (see VFNetHead).
INIT_BOX_NORMS = ("reg_denom", "stride", "relu")

# Regular 3x3 grid of a dilation-1 kernel, (dy, dx) per kernel position k = 3 i + j (row-major).
_GRID = [(i - 1, j - 1) for i in range(3) for j in range(3)]


def star_offsets(ltrb: torch.Tensor, stride: float) -> torch.Tensor:
    """Offsets of a 3x3 deformable conv (stride 1, padding 1, dilation 1) that sample the star-shaped
    box representation (VFNet paper, Sec. 4.1, Fig. 3).

    A location (x, y) with box distances (l, t, r, b) samples nine points: itself (x, y), the four
    points where the horizontal and vertical lines through it meet the box sides
    (x - l, y), (x, y - t), (x + r, y), (x, y + b), and the four box corners
    (x - l, y - t), (x + r, y - t), (x - l, y + b), (x + r, y + b). (The paper's list; the edge
    points are projections of (x, y), not edge midpoints.) Kernel position k = 3 i + j (row-major,
    regular sample (i - 1, j - 1)) takes the point at vertical position (-t, 0, b)[i] and horizontal
    position (-l, 0, r)[j] relative to (x, y), so the kernel's layout is kept (e.g. k = 0 is the
    top-left corner, k = 4 the location itself). In feature-map units (pixels / stride) the offset
    is ``point_k / stride - regular_k``.

    Args:
        ltrb: [N, 4, H, W] distances (l, t, r, b) in pixels (>= 0 for a valid box).
        stride: the level's stride in pixels (> 0).

    Returns:
        Tensor [N, 18, H, W] (same dtype/device as ``ltrb``), the layout of
        :mod:`d2_anchorfree.layers.deform_conv`: channel 2k is dy, 2k + 1 is dx, in feature-map
        pixels. Differentiable in ``ltrb``.

    Raises:
        ValueError: ``ltrb`` not [N, 4, H, W], or a non-positive stride.
    """
    if ltrb.dim() != 4 or (not torch.jit.is_tracing() and ltrb.shape[1] != 4):  # traced sizes: no check
        raise ValueError(f"ltrb must be [N, 4, H, W], got {tuple(ltrb.shape)}")
    if stride <= 0:
        raise ValueError(f"stride must be > 0, got {stride}")
    left, top, right, bottom = (ltrb / stride).unbind(dim=1)
    zero = torch.zeros_like(left)
    rows, cols = (-top, zero, bottom), (-left, zero, right)
    offsets = []
    for k, (gy, gx) in enumerate(_GRID):
        offsets.append(rows[k // 3] - gy)
        offsets.append(cols[k % 3] - gx)
    return torch.stack(offsets, dim=1)


def scale_offset_gradient(x: torch.Tensor, grad_mul: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient flowing back into ``x`` by ``grad_mul``
    (``(1 - m) * x.detach() + m * x``; m = 0 detaches, m = 1 is the identity).

    Used on the initial box before :func:`star_offsets` (authors' code, ``gradient_mul = 0.1``).
    """
    if grad_mul == 0:
        return x.detach()
    if grad_mul == 1:
        return x
    return (1 - grad_mul) * x.detach() + grad_mul * x


@HEAD_REGISTRY.register()
class VFNetHead(DenseHead):
    """VarifocalNet head (paper Fig. 3), shared across FPN levels.

    Layers (authors' code): a cls tower and a box tower of ``num_convs`` x (3x3 conv, norm, ReLU);
    on the box tower one more (3x3 conv, norm, ReLU) and a 3x3 conv x (per-level learnable Scale
    s_i) predict the initial box, by ``init_box_norm``:
      * "reg_denom" (default, the authors' ``bbox_norm_type='reg_denom'``, mmdet
        ``vfnet_head.py``): ltrb_init = exp(s_i x) * D_i pixels, D_i the upper end of level i's
        regress range and twice the last one for the top level (``MODEL.DENSE.SIZES_OF_INTEREST``:
        64, 128, 256, 512, 1024 by default, i.e. 8 strides on P3-P7); the bias starts at 0, so
        every initial box starts as a square of side 2 D_i;
      * "stride" (the authors' ``bbox_norm_type='stride'``): exp(s_i x) * s_i, bias 0;
      * "relu": relu(s_i x) * s_i (FCOS-style normalized regression; this project's choice before
        the converted checkpoints), the bias starting at ``init_ltrb`` so that every initial box
        starts as a square of side 2 * init_ltrb * s_i (default 4: the 8-stride ATSS anchor;
        without it the initial boxes start at a few pixels, their IoU with the GT is ~0, and the
        IoU-weighted losses and IoU targets start near zero).
    ``star_offsets(ltrb_init)`` (gradient scaled by ``offset_grad_mul``) drive two 3x3 deformable
    convs (+ ReLU):
      * on the box tower -> 3x3 conv -> 4 factors f = exp(scale_refine_i * x), and
        ltrb_refine = f * ltrb_init.detach() (the refinement learns per-side scale factors; as in
        the authors' code the refined loss does not move the initial box);
      * on the cls tower -> 3x3 conv -> K IACS logits (sigmoid per class; trained with the
        Varifocal Loss towards the IoU of the refined box).

    Outputs per level l (stride s_l): "logits" [N, K, H_l, W_l] IACS logits, "ltrb" [N, 4, H_l, W_l]
    the refined distances (pixels, >= 0), "ltrb_init" [N, 4, H_l, W_l] the initial ones (pixels,
    >= 0). Score: sigmoid(IACS logits) (paper Sec. 4: the IACS ranks the detections, no
    centerness). With 3DMF the filter branch reads the box tower, before the star convolution.
    """

    EXTRAS = ("ltrb_init",)


    @configurable
    def __init__(self, *, input_shape: List[ShapeSpec], num_classes: int, num_convs: int = 3,
                 norm: str = "GN", tower_conv_bias: str = "auto", dcn_on_last_conv: bool = False,
                 prior_prob: float = 0.01, offset_grad_mul: float = 0.1,
                 init_box_norm: str = "reg_denom", sizes_of_interest: Optional[Sequence[float]] = None,
                 init_ltrb: float = 4.0,
                 max_filter: Optional[Tuple[int, int]] = None,
                 aux_classifier: bool = False):
        """
        Args:
            input_shape: per level ShapeSpec; all levels must have the same channel count.
            num_classes: K >= 1. num_convs: tower depth >= 0 (paper: 3). norm: "GN", "BN" or "".
            prior_prob: initial foreground probability of the IACS classifier.
            offset_grad_mul: in [0, 1], multiplier of the gradient reaching the initial box through
                the star-conv offsets (0 = detached; paper code: 0.1).
            init_box_norm: "reg_denom", "stride" or "relu" (``MODEL.VFNET_HEAD.INIT_BOX_NORM``),
                see the class docstring.
            sizes_of_interest: the regress-range bounds of "reg_denom", pixels, one fewer than
                the levels (``MODEL.DENSE.SIZES_OF_INTEREST``); None: 8 strides per level (what
                the default bounds give on P3-P7).
            init_ltrb: initial box distances in stride units (> 0) with "relu".
            tower_conv_bias, dcn_on_last_conv, max_filter, aux_classifier: as :class:`DenseHead`.

        Raises:
            ValueError: levels with different channels, or a bad class count / tower depth /
                offset_grad_mul / init_box_norm / init_ltrb, or "reg_denom" with
                ``sizes_of_interest`` not one fewer than the levels.
        """
        super().__init__(input_shape=input_shape, num_classes=num_classes, num_convs=num_convs,
                         norm=norm, name="VFNet", tower_conv_bias=tower_conv_bias,
                         dcn_on_last_conv=dcn_on_last_conv)
        if not 0.0 <= offset_grad_mul <= 1.0:
            raise ValueError(f"MODEL.VFNET_HEAD.OFFSET_GRAD_MUL must be in [0, 1], got {offset_grad_mul}")
        if init_box_norm not in INIT_BOX_NORMS:
            raise ValueError(f"MODEL.VFNET_HEAD.INIT_BOX_NORM must be one of {INIT_BOX_NORMS}, "
                             f"got {init_box_norm!r}")
        if init_box_norm == "reg_denom" and sizes_of_interest is not None \
                and len(sizes_of_interest) != len(self.strides) - 1:
            raise ValueError(f"MODEL.VFNET_HEAD.INIT_BOX_NORM 'reg_denom' needs MODEL.DENSE.SIZES_OF_INTEREST "
                             f"with one bound fewer than the {len(self.strides)} levels, got {list(sizes_of_interest)}")
        if init_ltrb <= 0:
            raise ValueError(f"init_ltrb must be > 0 (stride units), got {init_ltrb}")
        c = self.in_channels
        self.offset_grad_mul = float(offset_grad_mul)
        self.box_init_conv = conv_tower(c, 1, norm, tower_conv_bias, num_levels=len(self.strides))
        self.box_init_pred = nn.Conv2d(c, 4, 3, padding=1)
        self.box_refine_dconv = DeformConv(c, c, 3, padding=1)
        self.box_refine_pred = nn.Conv2d(c, 4, 3, padding=1)
        self.cls_dconv = DeformConv(c, c, 3, padding=1)
        self.cls_logits = nn.Conv2d(c, num_classes, 3, padding=1)
        self.scales_init = nn.ModuleList([Scale(1.0) for _ in self.strides])
        self.scales_refine = nn.ModuleList([Scale(1.0) for _ in self.strides])
        self.finish(prior_prob, max_filter, aux_classifier)
        for dconv in (self.box_refine_dconv, self.cls_dconv):
            nn.init.normal_(dconv.weight, std=0.01)
        self.init_box_norm = init_box_norm
        # pixels per unit of exp(s x), per level
        if init_box_norm == "reg_denom" and sizes_of_interest is not None:
            self.init_box_scales = [float(d) for d in sizes_of_interest] + [2.0 * float(sizes_of_interest[-1])]
        elif init_box_norm == "reg_denom":
            self.init_box_scales = [8.0 * st for st in self.strides]
        else:
            self.init_box_scales = [float(st) for st in self.strides]
        nn.init.constant_(self.box_init_pred.bias, float(init_ltrb) if init_box_norm == "relu" else 0.0)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        h = cfg.MODEL.VFNET_HEAD
        return {**cls.base_config(cfg, input_shape), "offset_grad_mul": h.OFFSET_GRAD_MUL,
                "init_box_norm": h.INIT_BOX_NORM,
                # the "reg_denom" scales only (the unused-key check sees what is read)
                "sizes_of_interest": cfg.MODEL.DENSE.SIZES_OF_INTEREST if h.INIT_BOX_NORM == "reg_denom" else None}

    def predict_level(self, feats, level: int) -> Dict[str, torch.Tensor]:
        """"logits" [N, K, H, W], "ltrb" (refined) and "ltrb_init" [N, 4, H, W] pixels."""
        cls_feat, box_feat = feats["cls"], feats["box"]
        stride = self.strides[level]
        init_reg = self.scales_init[level](self.box_init_pred(self.box_init_conv(box_feat, level)))
        if self.init_box_norm == "relu":
            init = decode_ltrb(init_reg, stride, norm_reg_targets=True)  # relu(x) * stride, pixels
        else:
            init = torch.exp(init_reg.float().clamp(max=MAX_EXP_INPUT)) * self.init_box_scales[level]
        offsets = star_offsets(scale_offset_gradient(init, self.offset_grad_mul), stride)
        refine_feat = F.relu(self.box_refine_dconv(box_feat, offsets))
        refine_reg = self.scales_refine[level](self.box_refine_pred(refine_feat))
        # clamp: keep exp finite early in training (exp(20) ~ 5e8 is far beyond any image).
        factors = torch.exp(refine_reg.clamp(max=MAX_EXP_INPUT))
        return {
            "logits": self.cls_logits(F.relu(self.cls_dconv(cls_feat, offsets))),
            "ltrb": factors * init.detach(),
            "ltrb_init": init,
        }

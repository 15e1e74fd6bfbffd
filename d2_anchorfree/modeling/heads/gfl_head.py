"""The GFL head: joint classification-IoU logits and a general distribution per box side,
optionally with GFLv2's Distribution-Guided Quality Predictor (DGQP)."""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from detectron2.config import configurable
from detectron2.layers import ShapeSpec

from ...layers import Scale
from .base import HEAD_REGISTRY, ClassScores, DenseHead, DenseOutputs


def distribution_to_distance(box_logits: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Integral of the general distribution of each box side (GFL paper, Eq. 6).

    y_hat = sum_{i=0}^{n} i * P(i), with P = softmax over the n + 1 = REG_MAX + 1 bins.

    Args:
        box_logits: [..., 4 * (reg_max + 1)] bin logits, side-major (l bins, t bins, r bins,
            b bins).
        reg_max: n >= 1.

    Returns:
        Tensor [..., 4]: expected (l, t, r, b) in **stride units**, in [0, reg_max]; multiply by
        the level's stride for pixels.

    Raises:
        ValueError: if the last dim is not 4 * (reg_max + 1).
    """
    bins = reg_max + 1
    if not torch.jit.is_tracing() and box_logits.shape[-1] != 4 * bins:  # traced sizes: no check
        raise ValueError(
            f"box logits have {box_logits.shape[-1]} channels, expected 4 * (REG_MAX + 1) = {4 * bins}")
    # float32, and an element-wise sum rather than a matmul, which autocast would run in fp16/bf16.
    probs = F.softmax(box_logits.float().reshape(*box_logits.shape[:-1], 4, bins), dim=-1)
    return (probs * torch.arange(bins, dtype=probs.dtype, device=probs.device)).sum(dim=-1)


class DGQP(nn.Module):
    """Distribution-Guided Quality Predictor (Li et al., "Generalized Focal Loss V2", CVPR 2021,
    Sec. 3, Fig. 4).

    Per location and side, the top-k probabilities of the side's distribution and their mean
    form a 4 * (k + 1) statistic; two fully connected layers (1x1 convs: Linear(4(k+1), hidden),
    ReLU, Linear(hidden, 1)) and a sigmoid map it to a quality score in (0, 1) that multiplies
    the classification score. Shapes: [N, 4 * (n + 1), H, W] logits -> [N, 1, H, W].
    """

    def __init__(self, reg_max: int, topk: int = 4, hidden: int = 64):
        """
        Args:
            reg_max: n, the distributions have n + 1 bins (``MODEL.GFL_HEAD.REG_MAX``).
            topk: k, the top-k probabilities taken per side (paper: 4, ``MODEL.GFL_HEAD.DGQP_TOPK``).
            hidden: channels of the hidden layer (paper: 64, ``MODEL.GFL_HEAD.DGQP_HIDDEN``).

        Raises:
            ValueError: ``topk`` outside [1, reg_max + 1] or ``hidden`` < 1.
        """
        super().__init__()
        if not 1 <= topk <= reg_max + 1:
            raise ValueError(f"MODEL.GFL_HEAD.DGQP_TOPK must be in [1, REG_MAX + 1 = {reg_max + 1}], got {topk}")
        if hidden < 1:
            raise ValueError(f"MODEL.GFL_HEAD.DGQP_HIDDEN must be >= 1, got {hidden}")
        self.reg_max = reg_max
        self.topk = topk
        self.fc1 = nn.Conv2d(4 * (topk + 1), hidden, 1)
        self.fc2 = nn.Conv2d(hidden, 1, 1)

    def forward(self, box_logits: torch.Tensor) -> torch.Tensor:
        """
        Args:
            box_logits: [N, 4 * (n + 1), H, W] bin logits of one level, side-major (as
                :class:`GFLHead` outputs them; not detached: the quality's gradient reaches them).

        Returns:
            Tensor [N, 1, H, W]: the quality score in (0, 1) (GFLv2 Sec. 3).
        """
        n, _, h, w = box_logits.shape
        probs = F.softmax(box_logits.reshape(n, 4, self.reg_max + 1, h, w), dim=2)
        top = probs.topk(self.topk, dim=2).values
        stats = torch.cat([top, top.mean(dim=2, keepdim=True)], dim=2).reshape(n, -1, h, w)
        return torch.sigmoid(self.fc2(F.relu(self.fc1(stats))))


@HEAD_REGISTRY.register()
class GFLHead(DenseHead):
    """GFL head (Li et al., NeurIPS 2020, Sec. 3 and Fig. 3), shared across FPN levels.

    Outputs per level l:
      * "logits" [N, K, H_l, W_l]: joint classification-IoU logits (sigmoid per class), trained
        with Quality Focal Loss; no centerness branch;
      * "box_logits" [N, 4 * (REG_MAX + 1), H_l, W_l]: bin logits of the distribution of each side
        (l, t, r, b), side-major, multiplied by a learnable per-level Scale; the flattened "ltrb"
        is their integral (:func:`distribution_to_distance`, Eq. 6, stride units) times the stride;
      * "quality" [N, 1, H_l, W_l] in (0, 1) from :class:`DGQP` when ``dgqp`` is on; then the score
        is sigmoid(logits) * quality (GFLv2 Eq. 4), also in training (QFL on the product).
    Score: sigmoid(logits) (times the DGQP quality, times sigmoid(filter) with 3DMF).
    """

    EXTRAS = ("box_logits",)  # and "quality" with DGQP

    @configurable
    def __init__(self, *, input_shape: List[ShapeSpec], num_classes: int, reg_max: int = 16,
                 num_convs: int = 4, norm: str = "GN", tower_conv_bias: str = "auto", dcn_on_last_conv: bool = False,
                 prior_prob: float = 0.01, dgqp: bool = False,
                 dgqp_topk: int = 4, dgqp_hidden: int = 64,
                 max_filter: Optional[Tuple[int, int]] = None, aux_classifier: bool = False):
        """
        Args:
            input_shape: per level ShapeSpec; all levels must have the same channel count.
            num_classes: K >= 1. reg_max: n >= 1 (bins 0..n, stride units).
            num_convs: tower depth >= 0. norm: "GN", "BN" or "".
            prior_prob: initial foreground probability of the classifier.
            dgqp, dgqp_topk, dgqp_hidden: GFLv2 quality predictor, see :class:`DGQP`.
            tower_conv_bias, dcn_on_last_conv, max_filter, aux_classifier: as :class:`DenseHead`.

        Raises:
            ValueError: levels with different channels, or bad sizes.
        """
        super().__init__(input_shape=input_shape, num_classes=num_classes, num_convs=num_convs,
                         norm=norm, name="GFL", tower_conv_bias=tower_conv_bias,
                         dcn_on_last_conv=dcn_on_last_conv)
        if reg_max < 1:
            raise ValueError(f"MODEL.GFL_HEAD.REG_MAX must be >= 1, got {reg_max}")
        self.reg_max = reg_max
        self.cls_logits = nn.Conv2d(self.in_channels, num_classes, 3, padding=1)
        self.box_pred = nn.Conv2d(self.in_channels, 4 * (reg_max + 1), 3, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in input_shape])
        self.dgqp = DGQP(reg_max, dgqp_topk, dgqp_hidden) if dgqp else None
        self.finish(prior_prob, max_filter, aux_classifier)

    @classmethod
    def from_config(cls, cfg, input_shape: List[ShapeSpec]):
        g = cfg.MODEL.GFL_HEAD
        return {**cls.base_config(cfg, input_shape), "reg_max": g.REG_MAX, "dgqp": g.DGQP,
                "dgqp_topk": g.DGQP_TOPK, "dgqp_hidden": g.DGQP_HIDDEN}

    def predict_level(self, feats, level: int) -> Dict[str, torch.Tensor]:
        """"logits" [N, K, H, W], "box_logits" [N, 4 (n + 1), H, W] and, with DGQP, "quality"."""
        cls_feat, box_feat = feats["cls"], feats["box"]
        box_logits = self.scales[level](self.box_pred(box_feat))
        out = {"logits": self.cls_logits(cls_feat), "box_logits": box_logits}
        if self.dgqp is not None:
            out["quality"] = self.dgqp(box_logits)
        return out

    def decode_ltrb(self, flat: Dict[str, torch.Tensor], point_strides: torch.Tensor) -> torch.Tensor:
        """[N, R, 4] pixels: the integral of each side's distribution (Eq. 6) times the stride;
        "box_logits" stays in the extras (for the Distribution Focal Loss)."""
        return distribution_to_distance(flat["box_logits"], self.reg_max) * point_strides[:, None]

    @property
    def cls_scores_activated(self) -> bool:
        return self.dgqp is not None

    def cls_scores(self, out: DenseOutputs) -> ClassScores:
        """The joint logits; with DGQP the probabilities sigmoid(logits) * quality (GFLv2)."""
        scores = super().cls_scores(out)
        if self.dgqp is not None:
            return ClassScores.from_probabilities(torch.sigmoid(scores.logits) * out.extras["quality"])
        return scores

    def inference_scores(self, out: DenseOutputs):
        """sigmoid(logits) [N, R, K] (times the DGQP quality, GFLv2 Eq. 4; also what the score
        threshold applies to)."""
        probs = self.class_probabilities(out)
        if self.dgqp is not None:
            probs = probs * out.extras["quality"]
        return probs, None

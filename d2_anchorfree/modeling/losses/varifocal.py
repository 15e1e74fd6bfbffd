"""Varifocal Loss (Zhang et al., "VarifocalNet: An IoU-aware Dense Object Detector", CVPR 2021, Eq. 2)."""
import torch
import torch.nn.functional as F

from .reduction import reduce_loss


def varifocal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.75,
    gamma: float = 2.0,
    iou_weighted: bool = True,
    reduction: str = "sum",
) -> torch.Tensor:
    """Varifocal loss between IoU-aware classification scores and their IoU targets (Eq. 2):

        VFL(p, q) = -q (q log p + (1 - q) log(1 - p))      if q > 0   (positives)
                  = -alpha p^gamma log(1 - p)               if q = 0   (negatives)

    with p = sigmoid(logit). Positives are weighted by their target q (``iou_weighted``) or by 1
    (``iou_weighted=False``, the paper's ablation); only negatives are down-weighted by
    alpha p^gamma. The modulating factor p^gamma is part of the graph (not detached), as in focal
    loss; the target q is treated as a constant.

    Args:
        logits: [R, K] IoU-aware classification score logits (IACS, paper Sec. 3).
        targets: [R, K] float in [0, 1]: the IoU between the predicted and the GT box at the GT
            class of a positive location, 0 everywhere else. Callers should clamp positive IoUs
            away from 0 (e.g. to >= 1e-6) so that a positive with IoU 0 is not read as negative.
        alpha: negative weight (paper: 0.75). gamma: negative focusing exponent (paper: 2).
        iou_weighted: weight positives by q (True, paper default) or by 1.
        reduction: "sum" (the caller divides by the number of positives, paper Sec. 3),
            "mean" or "none" ([R, K]).

    Returns:
        Tensor: scalar ("sum"/"mean") or [R, K] ("none"); >= 0, float32 whatever the input
        dtype (under autocast the IoU targets would otherwise be rounded to the logits' bf16/fp16).

    Raises:
        ValueError: shape mismatch, targets outside [0, 1], or an unknown ``reduction``.
    """
    if logits.shape != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} must match")
    if targets.numel() and (targets.min() < 0 or targets.max() > 1):
        raise ValueError(
            f"varifocal targets must lie in [0, 1], got range "
            f"[{targets.min().item()}, {targets.max().item()}]"
        )
    logits, targets = logits.float(), targets.float()
    prob = logits.sigmoid()
    positive = targets > 0
    pos_weight = targets if iou_weighted else torch.ones_like(targets)
    weight = torch.where(positive, pos_weight, alpha * prob.pow(gamma))
    # BCE with soft target q: -(q log p + (1 - q) log(1 - p)); for negatives (q = 0) -log(1 - p).
    loss = F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * weight
    return reduce_loss(loss, reduction)

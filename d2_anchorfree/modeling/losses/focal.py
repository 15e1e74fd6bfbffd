"""Sigmoid focal loss (Lin et al., ICCV 2017, Eq. 5), from fvcore, with one-hot targets."""
import torch
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss_jit


def focal_loss_with_labels(
    logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, alpha: float, gamma: float
) -> torch.Tensor:
    """Summed sigmoid focal loss over valid locations, with integer labels.

    Args:
        logits: [R, K] class logits.
        labels: [R] long, class id in [0, K) for positives, K for background.
        valid: [R] bool, False for ignored locations (e.g. inside crowd boxes).
        alpha: weight of positives in [0, 1] (negatives get 1 - alpha); < 0 disables.
        gamma: focusing exponent >= 0.

    Returns:
        Tensor: scalar, the sum (not normalized; the caller divides by the number of positives).
    """
    num_classes = logits.shape[1]
    targets = F.one_hot(labels, num_classes + 1)[:, :num_classes].to(logits.dtype)
    return sigmoid_focal_loss_jit(logits[valid], targets[valid], alpha=alpha, gamma=gamma, reduction="sum")

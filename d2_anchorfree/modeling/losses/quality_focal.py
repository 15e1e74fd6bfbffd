"""Quality Focal Loss (Li et al., "Generalized Focal Loss", NeurIPS 2020, Eq. 5)."""
import torch
import torch.nn.functional as F

_EPS = 1e-12  # probabilities are clamped to [_EPS, 1 - _EPS] inside the logs (log >= -27.6)


def quality_focal_loss(
    pred: torch.Tensor, target: torch.Tensor, beta: float = 2.0, activated: bool = False
) -> torch.Tensor:
    """Summed Quality Focal Loss over all (location, class) pairs.

    GFL paper, Eq. 5, with sigma = sigmoid(pred) (or ``pred`` itself when ``activated``):

        QFL(sigma) = -|y - sigma|^beta * ((1 - y) log(1 - sigma) + y log(sigma))

    The target y is the soft joint classification-IoU label: the IoU of the predicted box with
    its GT at the GT's class for positive locations, 0 for every other (location, class). The
    modulating factor |y - sigma|^beta is part of the loss (not detached), as in the paper and
    the authors' code.

    Args:
        pred: [R, K] logits (``activated=False``), or probabilities in [0, 1]
            (``activated=True``, e.g. GFLv2's cls probability times the DGQP quality).
        target: [R, K] soft labels y in [0, 1]; all zeros for an image with no object.
        beta: modulating exponent >= 0 (paper: 2).
        activated: see ``pred``. For probabilities the logs are taken of sigma and 1 - sigma
            clamped to at least 1e-12, so sigma = 0 or 1 stays finite (no NaN gradient).

    Returns:
        Tensor: scalar, the sum (not normalized; the caller divides by the number of positives).

    Raises:
        ValueError: shapes differ or ``beta`` is negative.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"quality_focal_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if beta < 0:
        raise ValueError(f"MODEL.QFL.BETA must be >= 0, got {beta}")
    pred, target = pred.float(), target.float()  # fp16 (autocast) would round _EPS to 0
    if activated:
        sigma = pred
        # Written out rather than F.binary_cross_entropy, which refuses to run under autocast.
        bce = -(target * torch.log(pred.clamp(min=_EPS))
                + (1 - target) * torch.log((1 - pred).clamp(min=_EPS)))
    else:
        sigma = torch.sigmoid(pred)
        bce = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    return (bce * (target - sigma).abs().pow(beta)).sum()

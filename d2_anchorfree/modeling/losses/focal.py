"""Sigmoid focal loss (Lin et al., ICCV 2017, Eq. 5), from fvcore, with one-hot targets.

fvcore's eager ``sigmoid_focal_loss`` is used, not its TorchScript twin ``sigmoid_focal_loss_jit``:
TorchScript's profiling executor switches to an optimized graph (symbolic autodiff) after a few
calls, whose gradients differ from eager autograd in the last bits, so a run resumed in a fresh
process would not equal an uninterrupted one bitwise.
"""
import torch
import torch.nn.functional as F
from fvcore.nn import sigmoid_focal_loss


def check_focal_parameters(alpha: float, gamma: float, alpha_key: str, gamma_key: str,
                           negative_alpha_disables: bool = True) -> None:
    """Validate focal-style loss parameters (Lin et al., ICCV 2017, Eq. 5).

    Args:
        alpha: weight in [0, 1]; with ``negative_alpha_disables`` any alpha < 0 is also accepted
            (fvcore's ``sigmoid_focal_loss``: alpha < 0 means no alpha weighting).
        gamma: focusing exponent, >= 0.
        alpha_key, gamma_key: the config keys named in the error message.

    Raises:
        ValueError: alpha or gamma outside its range (NaN included), naming the config key.
    """
    alpha_ok = alpha <= 1.0 and (alpha >= 0.0 or (negative_alpha_disables and alpha < 0.0))
    if not alpha_ok:
        allowed = "[0, 1] (or < 0 to disable alpha weighting)" if negative_alpha_disables else "[0, 1]"
        raise ValueError(f"{alpha_key} must be in {allowed}, got {alpha}")
    if not gamma >= 0.0:
        raise ValueError(f"{gamma_key} must be >= 0, got {gamma}")


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
        Tensor: scalar float32, the sum (not normalized; the caller divides by the number of
        positives). Computed in float32 whatever the dtype of ``logits`` (bf16/fp16 under
        autocast would round p_t and the sum).

    Raises:
        ValueError: a label outside [0, K], naming the first offending value.
    """
    logits = logits.float()
    targets = one_hot_targets(labels, logits.shape[1]).to(logits.dtype)
    return sigmoid_focal_loss(logits[valid], targets[valid], alpha=alpha, gamma=gamma, reduction="sum")


def one_hot_targets(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[R] labels in [0, K] (K = background) -> [R, K] one-hot long targets (background: zeros).

    Raises:
        ValueError: a label outside [0, K], naming the first offending value.
    """
    bad = (labels < 0) | (labels > num_classes)
    if bad.any():
        first = labels[bad][0].item()
        raise ValueError(f"focal loss labels must be in [0, K={num_classes}] (K = background), got {first}")
    return F.one_hot(labels, num_classes + 1)[:, :num_classes]


def focal_loss_on_probabilities(
    probs: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, alpha: float, gamma: float
) -> torch.Tensor:
    """Summed focal loss (Lin et al., ICCV 2017, Eq. 5) over valid locations, for heads whose
    classification scores are already probabilities (TOOD's P_align, GFLv2's quality-weighted
    score): FL = -alpha_t (1 - p_t)^gamma log(p_t), with p_t = p for the label's class and 1 - p
    otherwise (MMDetection's ``py_focal_loss_with_prob``, which TOOD's warm-up loss
    ``initial_loss_cls`` uses).

    Args:
        probs: [R, K] probabilities in [0, 1]. labels: [R] long in [0, K] (K = background).
        valid: [R] bool (False: ignored). alpha: weight of positives in [0, 1], < 0 disables.
        gamma: focusing exponent >= 0.

    Returns:
        Tensor: scalar float32 sum (the caller normalizes). log(p) and log(1 - p) are clamped at
        -100, as ``torch.nn.functional.binary_cross_entropy`` does, so p in {0, 1} stays finite.

    Raises:
        ValueError: a label outside [0, K] (see :func:`one_hot_targets`).
    """
    probs = probs.float()
    targets = one_hot_targets(labels, probs.shape[1]).to(probs.dtype)
    p, t = probs[valid], targets[valid]
    log_p = torch.log(p).clamp(min=-100.0)
    log_not_p = torch.log1p(-p).clamp(min=-100.0)
    p_t = p * t + (1 - p) * (1 - t)
    loss = -(t * log_p + (1 - t) * log_not_p) * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * t + (1 - alpha) * (1 - t))
    return loss.sum()

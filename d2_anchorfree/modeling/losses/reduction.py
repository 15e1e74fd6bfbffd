"""The ``reduction`` argument shared by the element-wise losses (iou_loss, varifocal_loss)."""
import torch

REDUCTIONS = ("sum", "mean", "none")


def reduce_loss(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    """Reduce an element-wise loss.

    Args:
        loss: any shape.
        reduction: "sum" (the detectors divide by their own normalizer, e.g. the number of
            positives), "mean" (0 for an empty ``loss``, not NaN) or "none" (unchanged).

    Returns:
        Tensor: a scalar ("sum"/"mean") or ``loss`` itself ("none").

    Raises:
        ValueError: an unknown ``reduction``.
    """
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if loss.numel() else loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'sum', 'mean' or 'none', got {reduction!r}")

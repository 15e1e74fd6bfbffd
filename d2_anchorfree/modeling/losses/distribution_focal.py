"""Distribution Focal Loss (Li et al., "Generalized Focal Loss", NeurIPS 2020, Eq. 7)."""
import torch
import torch.nn.functional as F

#: DFL targets stop this far (stride units) below REG_MAX: MMDetection's ``bbox2distance`` ``eps``.
DFL_TARGET_EPS = 0.1


def dfl_targets(distances: torch.Tensor, reg_max: int) -> torch.Tensor:
    """GT distances (stride units) as DFL targets: clamped to [0, REG_MAX - 0.1].

    Source: MMDetection 3.3.0 ``mmdet/models/dense_heads/gfl_head.py`` lines 297-299 encode the
    targets with ``DistancePointBBoxCoder.encode(..., max_dis=self.reg_max)``, i.e.
    ``mmdet/structures/bbox/transforms.py`` ``bbox2distance`` (lines 206-230): each side
    clamped to [0, max_dis - eps], eps = 0.1 (:data:`DFL_TARGET_EPS`), "to ensure target <
    max_dis". So a distance at or beyond REG_MAX (a large object on its level) trains the last
    two bins with weights (0.1, 0.9), not the last bin alone; a point outside its GT's box (a
    negative distance) trains bin 0.

    Args:
        distances: any shape, (l, t, r, b) from the point to its GT box in stride units.
        reg_max: n >= 1 (``MODEL.GFL_HEAD.REG_MAX``; the distributions have n + 1 bins).

    Returns:
        Tensor of the same shape and dtype, in [0, n - 0.1].

    Raises:
        ValueError: ``reg_max`` < 1.
    """
    if reg_max < 1:
        raise ValueError(f"MODEL.GFL_HEAD.REG_MAX must be >= 1, got {reg_max}")
    return distances.clamp(min=0.0, max=reg_max - DFL_TARGET_EPS)


def distribution_focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-distance Distribution Focal Loss.

    GFL paper, Eq. 7: the distance y (stride units) is represented by a discrete distribution S
    over the bins 0, 1, ..., n (n = REG_MAX); with y_i <= y <= y_{i+1} its two neighbouring
    bins,

        DFL(S_i, S_{i+1}) = -((y_{i+1} - y) log S_i + (y - y_i) log S_{i+1}),

    i.e. a cross-entropy towards the two bins around y, weighted so that the optimum (S_i, S_{i+1})
    = (y_{i+1} - y, y - y_i) has expectation y. At the upper edge y == n the bins are (n-1, n), so
    the loss is -log S_n; an integer y < n puts all the weight on bin y. (GFL's targets stop at
    n - 0.1, see :func:`dfl_targets`; this function accepts all of [0, n].)

    Args:
        logits: [M, n + 1] bin logits (S = softmax over the last dim), n >= 1.
        target: [M] distances in stride units, in [0, n].

    Returns:
        Tensor [M] float32 (whatever the input dtype: bf16 would round the distance targets to
        8 bits): the loss of each distance (the caller weights, sums and normalizes; GFL
        averages the four sides of a box). Finite for every target in [0, n].

    Raises:
        ValueError: shapes that do not match, or a target outside [0, n] (the value is named).
    """
    if logits.dim() != 2 or logits.shape[1] < 2 or target.shape != logits.shape[:1]:
        raise ValueError(
            f"distribution_focal_loss: logits must be [M, n+1] (n >= 1) and target [M], got "
            f"{tuple(logits.shape)} and {tuple(target.shape)}"
        )
    reg_max = logits.shape[1] - 1
    bad = (target < 0) | (target > reg_max)
    if bad.any():
        raise ValueError(f"DFL target {target[bad][0].item()} outside [0, REG_MAX={reg_max}] (stride units)")
    logits, target = logits.float(), target.float()
    left = target.floor().long().clamp(max=reg_max - 1)
    right = left + 1
    weight_left = right.to(logits.dtype) - target
    weight_right = target - left.to(logits.dtype)
    log_probs = F.log_softmax(logits, dim=1)
    return -(weight_left * log_probs.gather(1, left[:, None]).squeeze(1)
             + weight_right * log_probs.gather(1, right[:, None]).squeeze(1))

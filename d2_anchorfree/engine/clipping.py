"""Per-parameter gradient clipping (``SOLVER.CLIP_GRADIENTS``) in a few batched calls.

detectron2's ``maybe_add_gradient_clipping`` clips every parameter on its own: before each
``optimizer.step`` it calls ``torch.nn.utils.clip_grad_norm_(p, CLIP_VALUE, NORM_TYPE)`` (or
``clip_grad_value_``) once per parameter tensor, about ten small tensor operations each. On the
CPU those calls are dispatch overhead rather than arithmetic: the optimizer step (clipping +
SGD) of the real-time GFL (configs/realtime, 169 tensors, 2.7 M parameters) took 26 ms with
them and 10 ms with the batched clipping below, paired in one process on the 2-core machine
(``OMP_WAIT_POLICY=PASSIVE``, load 7.7); in the trainer its "step" phase went from 29-30 ms to
11 ms (docs/results.md, "Training throughput").

:func:`clip_gradients_per_parameter` computes the very same per-parameter clipping with
``torch._foreach_*`` calls over all gradients of a device and dtype at once, the same
element-wise operations in the same order per tensor, so the clipped gradients are bitwise
those of detectron2 (tests/engine/test_clipping.py compares them bit for bit, NaN and inf
included). :func:`add_gradient_clipping` gives an optimizer a ``step`` that clips that way
first; ``AnchorFreeTrainer.build_optimizer`` uses it in place of detectron2's.

Source: detectron2 ``detectron2/solver/build.py`` (``_create_gradient_clipper``,
``_generate_optimizer_class_with_gradient_clipping``); torch ``torch/nn/utils/clip_grad.py``.
"""
from collections import defaultdict
from typing import Iterable

import torch

__all__ = ["CLIP_TYPES", "clip_gradients_per_parameter", "add_gradient_clipping"]

#: ``SOLVER.CLIP_GRADIENTS.CLIP_TYPE`` values, as detectron2's ``GradientClipType``.
CLIP_TYPES = ("value", "norm")


def _grads_by_device_and_dtype(params: Iterable[torch.Tensor]):
    groups = defaultdict(list)
    for p in params:
        if p.grad is not None:
            groups[(p.grad.device, p.grad.dtype)].append(p.grad)
    return groups.values()


@torch.no_grad()
def clip_gradients_per_parameter(params: Iterable[torch.Tensor], clip_type: str, clip_value: float,
                                 norm_type: float = 2.0) -> None:
    """Clip every parameter's gradient on its own, in place, as detectron2's per-parameter
    clipper does, bitwise.

    * ``"norm"``: ``g *= min(clip_value / (||g||_p + 1e-6), 1)`` for each gradient ``g``, where
      ``||g||_p`` is ``torch.nn.utils.clip_grad_norm_``'s total norm of the one tensor
      (``vector_norm`` of its ``_foreach_norm``). A non-finite norm makes that gradient NaN (as
      torch does with ``error_if_nonfinite=False``).
    * ``"value"``: ``g`` clamped to ``[-clip_value, clip_value]`` (``clip_grad_value_``).

    Args:
        params: tensors whose ``.grad`` is clipped (those without a gradient are skipped).
        clip_type: "norm" or "value" (``SOLVER.CLIP_GRADIENTS.CLIP_TYPE``).
        clip_value: the maximum norm or value (``CLIP_VALUE``).
        norm_type: p of the p-norm, ``float("inf")`` allowed (``NORM_TYPE``; "norm" only).

    Raises:
        ValueError: ``clip_type`` not in :data:`CLIP_TYPES`.
    """
    if clip_type not in CLIP_TYPES:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE = {clip_type!r}: must be one of {list(CLIP_TYPES)}")
    clip_value, norm_type = float(clip_value), float(norm_type)
    for grads in _grads_by_device_and_dtype(params):
        if clip_type == "value":
            torch._foreach_clamp_min_(grads, -clip_value)
            torch._foreach_clamp_max_(grads, clip_value)
            continue
        norms = torch.stack(torch._foreach_norm(grads, norm_type))  # [P], one per tensor
        # torch's total norm of one tensor: vector_norm of the 1-vector of its norm.
        totals = torch.linalg.vector_norm(norms.unsqueeze(1), norm_type, dim=1)
        coefs = torch.clamp(clip_value / (totals + 1e-6), max=1.0)
        torch._foreach_mul_(grads, list(coefs.unbind(0)))


def add_gradient_clipping(optimizer: torch.optim.Optimizer, clip_cfg) -> torch.optim.Optimizer:
    """Make ``optimizer.step`` clip the gradients of all its parameter groups per parameter
    (:func:`clip_gradients_per_parameter`) before stepping, as detectron2's
    ``maybe_add_gradient_clipping`` does with an optimizer instance: the instance's class becomes a
    subclass named ``<Optimizer>WithGradientClip`` whose ``step`` clips, then calls the original.

    Args:
        optimizer: an optimizer without clipping (e.g. detectron2's ``build_optimizer`` of a config
            with ``SOLVER.CLIP_GRADIENTS.ENABLED False``).
        clip_cfg: ``cfg.SOLVER.CLIP_GRADIENTS`` (``CLIP_TYPE``, ``CLIP_VALUE``, ``NORM_TYPE``).

    Returns:
        the same optimizer object.

    Raises:
        ValueError: a ``CLIP_TYPE`` not in :data:`CLIP_TYPES`.
    """
    clip_type, clip_value, norm_type = clip_cfg.CLIP_TYPE, float(clip_cfg.CLIP_VALUE), float(clip_cfg.NORM_TYPE)
    if clip_type not in CLIP_TYPES:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE = {clip_type!r}: must be one of {list(CLIP_TYPES)}")
    base = type(optimizer)

    def step(self, closure=None):
        clip_gradients_per_parameter((p for group in self.param_groups for p in group["params"]),
                                     clip_type, clip_value, norm_type)
        return base.step(self, closure)

    optimizer.__class__ = type(base.__name__ + "WithGradientClip", (base,), {"step": step})
    return optimizer

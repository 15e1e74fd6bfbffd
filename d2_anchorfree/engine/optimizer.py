"""The optimizer of the trainer: detectron2's SGD, or AdamW (``SOLVER.OPTIMIZER``).

detectron2's ``build_optimizer`` builds SGD only. Short schedules from scratch, the regime of the
CPU configs, are where adaptive optimizers help: Ultralytics' default optimizer ("auto") picks
AdamW with lr 0.002 for 1 class and momentum (beta1) 0.9 when a run has fewer than 10^4
iterations (``ultralytics/engine/trainer.py``, ``build_optimizer``); RTMDet and DETR-family
detectors train with AdamW throughout.

Both optimizers get the same parameter groups, detectron2's ``get_default_optimizer_params``:
``SOLVER.WEIGHT_DECAY_NORM`` on normalization weights and biases, ``SOLVER.BIAS_LR_FACTOR`` and
``SOLVER.WEIGHT_DECAY_BIAS`` on other biases, ``SOLVER.WEIGHT_DECAY`` elsewhere. With AdamW the
decay is decoupled (Loshchilov & Hutter, ICLR 2019, Algorithm 2: ``p -= lr * wd * p`` beside the
Adam step), ``SOLVER.MOMENTUM`` is beta1 (as Ultralytics passes its momentum) and
``SOLVER.ADAMW.BETA2`` / ``SOLVER.ADAMW.EPS`` are beta2 and epsilon.
"""
import math

import torch

from detectron2.solver import build_optimizer as detectron2_build_optimizer
from detectron2.solver.build import get_default_optimizer_params

#: Values of ``SOLVER.OPTIMIZER``.
OPTIMIZERS = ("SGD", "AdamW")


def check_optimizer_config(cfg) -> None:
    """Reject optimizer settings that would be ignored or cannot train, naming the key.

    Checks: ``SOLVER.OPTIMIZER`` in :data:`OPTIMIZERS`; with "AdamW": ``SOLVER.NESTEROV`` False
    (AdamW has no Nesterov variant; the key would be ignored), ``SOLVER.ADAMW.BETA2`` in [0, 1),
    ``SOLVER.ADAMW.EPS`` finite and > 0. (``SOLVER.MOMENTUM``, beta1, is checked by
    ``health.check_solver_config``: in [0, 1).)

    Raises:
        ValueError: naming the offending key and its value.
    """
    s = cfg.SOLVER
    if s.OPTIMIZER not in OPTIMIZERS:
        raise ValueError(f"SOLVER.OPTIMIZER = {s.OPTIMIZER!r}: must be one of {list(OPTIMIZERS)}")
    if s.OPTIMIZER != "AdamW":
        return
    if s.NESTEROV:
        raise ValueError("SOLVER.NESTEROV = True: AdamW (SOLVER.OPTIMIZER) has no Nesterov momentum; "
                         "set SOLVER.NESTEROV False")
    beta2, eps = s.ADAMW.BETA2, s.ADAMW.EPS
    if not (isinstance(beta2, (int, float)) and 0 <= beta2 < 1):
        raise ValueError(f"SOLVER.ADAMW.BETA2 = {beta2!r}: must be in [0, 1)")
    if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
        raise ValueError(f"SOLVER.ADAMW.EPS = {eps!r}: must be a finite number > 0")


def build_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by ``SOLVER.OPTIMIZER``, without gradient clipping (the trainer adds it).

    "SGD": detectron2's ``build_optimizer`` of ``cfg`` (the same object it builds; call it with
    ``SOLVER.CLIP_GRADIENTS.ENABLED`` False to get no clipping). "AdamW": ``torch.optim.AdamW``
    over detectron2's parameter groups (module docstring) with lr ``SOLVER.BASE_LR``, betas
    (``SOLVER.MOMENTUM``, ``SOLVER.ADAMW.BETA2``), eps ``SOLVER.ADAMW.EPS``; each group's
    ``weight_decay`` from the groups. The LR scheduler (``SOLVER.LR_SCHEDULER_NAME``, warm-up,
    steps) scales every group's lr the same way for both.

    Args:
        cfg: a config with ``SOLVER.OPTIMIZER`` (``add_anchorfree_config``).
        model: the model to train; its parameters with ``requires_grad`` False are left out.

    Raises:
        ValueError: see :func:`check_optimizer_config`.
    """
    check_optimizer_config(cfg)
    s = cfg.SOLVER
    if s.OPTIMIZER == "SGD":
        return detectron2_build_optimizer(cfg, model)
    params = get_default_optimizer_params(model, base_lr=s.BASE_LR, weight_decay=s.WEIGHT_DECAY,
                                          weight_decay_norm=s.WEIGHT_DECAY_NORM,
                                          bias_lr_factor=s.BIAS_LR_FACTOR, weight_decay_bias=s.WEIGHT_DECAY_BIAS)
    return torch.optim.AdamW(params, lr=s.BASE_LR, betas=(s.MOMENTUM, s.ADAMW.BETA2), eps=s.ADAMW.EPS,
                             weight_decay=s.WEIGHT_DECAY)

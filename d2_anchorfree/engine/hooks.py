"""Trainer hooks that tell the model what the trainer knows."""
from detectron2.engine import HookBase


def unwrap_model(model):
    """The model inside a ``DistributedDataParallel`` (or ``DataParallel``) wrapper, else ``model``."""
    return getattr(model, "module", model)


class CriterionIterationHook(HookBase):
    """Before every step, set the iteration of the model's training criterion
    (``DenseCriterion.set_iteration``), which picks its training phase (TOOD: the ATSS warm-up for
    the first ``MODEL.DENSE.INITIAL_ASSIGNER_ITERS`` iterations).

    The iteration is the trainer's (``trainer.iter``, restored from the checkpoint on
    ``--resume``), so a resumed run is in the same phase as an uninterrupted one. Models without
    a ``criterion`` (e.g. detectron2's RetinaNet) are left alone.
    """

    def before_step(self):
        criterion = getattr(unwrap_model(self.trainer.model), "criterion", None)
        if criterion is not None:
            criterion.set_iteration(self.trainer.iter)

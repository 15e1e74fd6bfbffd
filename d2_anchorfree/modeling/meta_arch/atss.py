"""ATSS meta-architecture (Zhang et al., CVPR 2020): the FCOS detector with ATSS assignment."""
from detectron2.modeling import META_ARCH_REGISTRY

from .fcos import FCOS


@META_ARCH_REGISTRY.register()
class ATSS(FCOS):
    """FCOS head, losses and inference with the :class:`ATSSAssigner` (paper Sec. 4, the
    anchor-free "FCOS + ATSS" detector with one point per location).

    As in the paper and the authors' code the centerness branch is kept: focal loss for
    classification, GIoU (``MODEL.FCOS.BOX_LOSS_TYPE``) weighted by the centerness targets, BCE
    for centerness; score = sqrt(p_cls * centerness). The assigner is always ATSS
    (``MODEL.FCOS.ASSIGNER`` is ignored unless it names a third assigner, which is an error);
    its keys are ``MODEL.ATSS.TOPK``, ``MODEL.ATSS.ANCHOR_SCALE`` and
    ``MODEL.FCOS.ASSIGN_CHUNK_ELEMENTS``. Equivalent to ``FCOS`` with
    ``MODEL.FCOS.ASSIGNER: "ATSS"``.
    """

    @classmethod
    def from_config(cls, cfg):
        """FCOS's arguments with ``MODEL.FCOS.ASSIGNER`` forced to "ATSS".

        Raises:
            ValueError: ``MODEL.FCOS.ASSIGNER`` names another assigner than the default "FCOS"
                or "ATSS" (use ``META_ARCHITECTURE: "FCOS"`` to combine the head with it).
        """
        if cfg.MODEL.FCOS.ASSIGNER not in ("FCOS", "ATSS", "ATSSAssigner"):
            raise ValueError(
                f"META_ARCHITECTURE 'ATSS' always uses the ATSS assigner, but MODEL.FCOS.ASSIGNER is "
                f"{cfg.MODEL.FCOS.ASSIGNER!r}; use META_ARCHITECTURE 'FCOS' for another assigner"
            )
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.FCOS.ASSIGNER = "ATSS"
        return super().from_config(cfg)

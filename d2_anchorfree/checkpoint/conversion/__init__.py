"""Checkpoints of the reference implementations -> d2_anchorfree models (``d2af convert``).

Sources: MMDetection 2.x / 3.x (:mod:`.mmdet`), AdelaiDet (:mod:`.adelaidet`), DeFCN / cvpods
(:mod:`.defcn`). A conversion is complete and exact or it fails (:class:`ConversionError`).
"""
import logging
from typing import Any, Dict, Optional

import torch

from . import adelaidet, defcn, mmdet
from .core import ConversionError, ConversionReport, convert_state_dict, load_source_checkpoint

__all__ = ["SOURCES", "ConversionError", "ConversionReport", "convert_checkpoint", "convert_state_dict",
           "detect_source", "load_source_checkpoint"]

logger = logging.getLogger(__name__)

SOURCES: Dict[str, Any] = {"mmdet": mmdet, "adelaidet": adelaidet, "defcn": defcn}


def detect_source(state: Dict[str, torch.Tensor]) -> str:
    """The name in :data:`SOURCES` of the framework that wrote ``state``.

    Raises:
        ConversionError: no source or several sources recognise it (listing a few keys).
    """
    found = [name for name, module in SOURCES.items() if module.detect(state)]
    if len(found) != 1:
        sample = ", ".join(sorted(state)[:6])
        what = "no known source" if not found else f"several sources ({', '.join(found)})"
        raise ConversionError(f"{what} recognises this state dict (keys: {sample}, ...); "
                              f"pass the source explicitly, one of {sorted(SOURCES)}")
    return found[0]


def convert_checkpoint(path: str, cfg, output: Optional[str] = None, source: str = "auto"):
    """Convert the checkpoint ``path`` for the model that ``cfg`` builds, check that the model loads
    it strictly, and write it (detectron2 layout ``{"model": state, "__author__": ...}``, readable
    by ``MODEL.WEIGHTS``) to ``output`` if given.

    Args:
        path: source checkpoint (read without running code from it).
        cfg: our config (d2_anchorfree keys added), e.g. ``configs/zoo/mmdet/*.yaml``.
        output: where to write the ``.pth``; ``None`` to only return it.
        source: a key of :data:`SOURCES` or "auto" (:func:`detect_source`).

    Returns:
        (state dict with our names, :class:`ConversionReport`).

    Raises:
        ConversionError, UnsafeWeightFileError, FileNotFoundError: see :func:`convert_state_dict`
        and :func:`load_source_checkpoint`; KeyError for an unknown ``source``.
    """
    from detectron2.modeling import build_model

    from ..checkpointer import atomic_write

    state, meta = load_source_checkpoint(path)
    name = detect_source(state) if source == "auto" else source
    if name not in SOURCES:
        raise KeyError(f"unknown checkpoint source {name!r}; known: {sorted(SOURCES)}")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    model = build_model(cfg)
    target = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    converted, report = convert_state_dict(state, SOURCES[name], cfg, target, meta)
    model.load_state_dict(converted, strict=True)  # the exactness check of the last resort
    logger.info(report.summary())
    if output:
        blob = {"model": converted, "__author__": f"d2_anchorfree convert_checkpoint from {report.source}",
                "matching_heuristics": False}
        atomic_write(output, lambda f: torch.save(blob, f))
    return converted, report

"""Which components a config chooses, and the check that it sets no key of a component it does
not use."""
from typing import Dict, Iterable, List, NamedTuple, Optional

from .assigners import ASSIGNER_REGISTRY
from .heads import HEAD_REGISTRY
from .losses.terms import BOX_WEIGHTINGS, LOSS_REGISTRY

POSTPROCESS_MODES = ("nms", "topk")
# Sections read whatever the components: MODEL.DENSE (shared) and the shift generator.
ALWAYS_READ = ("DENSE", "SHIFT_GENERATOR")


class Components(NamedTuple):
    """Resolved component names (registry names; None for an absent optional one)."""

    head: str
    assigner: str
    aux_assigner: Optional[str]
    initial_assigner: Optional[str]
    losses: List[str]
    box_type: str
    box_weight: float
    box_weighting: str
    qfl_target: str
    postprocess: str


def resolve_components(cfg, preset: Optional[Dict[str, object]], arch: str) -> Components:
    """The components of ``cfg``: each ``MODEL.DENSE`` choice (HEAD, ASSIGNER, AUX_ASSIGNER,
    INITIAL_ASSIGNER, LOSSES, POSTPROCESS), ``MODEL.BOX_LOSS`` TYPE / WEIGHT / WEIGHTING and
    ``MODEL.QFL.TARGET``, or where it is left empty (a negative WEIGHT) the preset's.

    Args:
        cfg: the config. preset: the preset's choices (keys as in ``presets.PRESETS``), or None.
        arch: ``MODEL.META_ARCHITECTURE`` (for error messages).

    Returns:
        :class:`Components`. "none" for AUX_ASSIGNER / INITIAL_ASSIGNER gives None; an initial
        assigner with ``INITIAL_ASSIGNER_ITERS`` 0 is None.

    Raises:
        ValueError: a required choice left empty with no preset value, an unknown POSTPROCESS or
            WEIGHTING, or a negative INITIAL_ASSIGNER_ITERS; naming the key.
    """
    d = cfg.MODEL.DENSE
    preset = preset or {}

    def choice(key: str, value, default=None):
        if value not in ("", [], ()):
            return value
        if key in preset:
            return preset[key]
        if default is not None:
            return default
        raise ValueError(f"MODEL.DENSE.{key} is empty and META_ARCHITECTURE {arch!r} has no preset "
                         f"for it; set it (see the README's composition table)")

    aux = choice("AUX_ASSIGNER", d.AUX_ASSIGNER, "none")
    initial = choice("INITIAL_ASSIGNER", d.INITIAL_ASSIGNER, "none")
    if d.INITIAL_ASSIGNER_ITERS < 0:
        raise ValueError(f"MODEL.DENSE.INITIAL_ASSIGNER_ITERS must be >= 0, got {d.INITIAL_ASSIGNER_ITERS}")
    postprocess = choice("POSTPROCESS", d.POSTPROCESS, "nms")
    if postprocess not in POSTPROCESS_MODES:
        raise ValueError(f"MODEL.DENSE.POSTPROCESS must be one of {POSTPROCESS_MODES}, got {postprocess!r}")
    weighting = cfg.MODEL.BOX_LOSS.WEIGHTING or preset.get("BOX_WEIGHTING", "none")
    if weighting not in BOX_WEIGHTINGS:
        raise ValueError(f"MODEL.BOX_LOSS.WEIGHTING must be one of {BOX_WEIGHTINGS}, got {weighting!r}")
    losses = list(choice("LOSSES", list(d.LOSSES)))
    if "AuxFocalLoss" in losses:
        raise ValueError("MODEL.DENSE.LOSSES must not list AuxFocalLoss: it is added with MODEL.DENSE.AUX_ASSIGNER")
    b = cfg.MODEL.BOX_LOSS
    box_weight = b.WEIGHT if b.WEIGHT >= 0 else float(preset.get("BOX_LOSS_WEIGHT", 1.0))
    return Components(
        head=choice("HEAD", d.HEAD),
        assigner=choice("ASSIGNER", d.ASSIGNER),
        aux_assigner=None if aux == "none" else aux,
        initial_assigner=None if initial == "none" or d.INITIAL_ASSIGNER_ITERS == 0 else initial,
        losses=losses,
        box_type=b.TYPE or preset.get("BOX_LOSS_TYPE", "giou"),
        box_weight=box_weight,
        box_weighting=weighting,
        qfl_target=cfg.MODEL.QFL.TARGET or preset.get("QFL_TARGET", "iou"),
        postprocess=postprocess,
    )


def component_sections() -> List[str]:
    """Every config section (under MODEL) that belongs to a registered component, plus
    MAX_FILTER (the 3DMF add-on)."""
    sections = {"MAX_FILTER"}
    for registry in (HEAD_REGISTRY, ASSIGNER_REGISTRY, LOSS_REGISTRY):
        for _, obj in registry:
            sections.update(getattr(obj, "CONFIG_SECTIONS", ()))
    return sorted(sections)


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def check_unused_sections(cfg, components: Iterable) -> None:
    """Reject a config that sets (to a non-default value) a key of a component the detector does
    not use: e.g. ``MODEL.GFL_HEAD.REG_MAX`` with the FCOS head, or ``MODEL.ATSS.TOPK`` with the
    FCOS assigner, which would otherwise be silently ignored.

    Args:
        cfg: the config. components: the built components (None entries are skipped); each
            reads the sections of its ``CONFIG_SECTIONS``; ``MODEL.MAX_FILTER`` is read when
            ``MODEL.MAX_FILTER.ENABLED``.

    Raises:
        ValueError: naming every such key and the components in use.

    A key set to its default value cannot be told apart from an unset one and is accepted.
    """
    from detectron2.config import get_cfg

    from ..config import add_anchorfree_config

    components = [c for c in components if c is not None]
    used = set(ALWAYS_READ)
    for c in components:
        used.update(getattr(c, "CONFIG_SECTIONS", ()))
    if cfg.MODEL.MAX_FILTER.ENABLED:
        used.add("MAX_FILTER")
    defaults = add_anchorfree_config(get_cfg()).MODEL
    unused = []
    for section in component_sections():
        if section in used:
            continue
        for key, value in cfg.MODEL[section].items():
            if not _same(value, defaults[section][key]):
                unused.append(f"MODEL.{section}.{key}")
    if unused:
        names = ", ".join(type(c).__name__ for c in components)
        raise ValueError(
            f"{unused} set in the config, but no component of this detector reads them (components: "
            f"{names}); remove them, or choose components that use them (MODEL.DENSE.HEAD / "
            "ASSIGNER / AUX_ASSIGNER / LOSSES, MODEL.MAX_FILTER.ENABLED)")

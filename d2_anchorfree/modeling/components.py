"""Which components a config chooses, and the check that it sets no key of a component it does
not use."""
from typing import Dict, Iterable, List, NamedTuple, Optional

from .assigners import ASSIGNER_REGISTRY
from .heads import HEAD_REGISTRY
from .losses.terms import BOX_WEIGHTINGS, LOSS_REGISTRY

POSTPROCESS_MODES = ("nms", "topk")


class Components(NamedTuple):
    """Resolved component names (registry names; None for an absent optional one)."""

    head: str
    assigner: str
    aux_assigner: Optional[str]
    initial_assigner: Optional[str]
    losses: List[str]
    initial_losses: Optional[List[str]]
    box_type: str
    box_weight: float
    box_weighting: str
    initial_box_weighting: str
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
        :class:`Components`. "none" for AUX_ASSIGNER / INITIAL_ASSIGNER gives None.
        ``initial_losses`` (``MODEL.DENSE.INITIAL_LOSSES``, the loss terms while the initial
        assigner is used; TOOD: focal loss and the centerness-weighted box loss) is None when they
        are the main ones, and ``initial_box_weighting`` (``MODEL.BOX_LOSS.INITIAL_WEIGHTING``)
        defaults to the main weighting.

    Raises:
        ValueError: a required choice left empty with no preset value, an unknown POSTPROCESS or
            WEIGHTING, a negative INITIAL_ASSIGNER_ITERS, an initial assigner with 0 iterations
            (or iterations without one), initial losses or weighting without an initial assigner;
            naming the key.
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
    iters = d.INITIAL_ASSIGNER_ITERS
    if iters < 0:
        raise ValueError(f"MODEL.DENSE.INITIAL_ASSIGNER_ITERS must be >= 0, got {iters}")
    if initial != "none" and iters == 0:
        source = "set in the config" if d.INITIAL_ASSIGNER else f"the {arch} preset's"
        raise ValueError(
            f"MODEL.DENSE.INITIAL_ASSIGNER is {initial!r} ({source}) but MODEL.DENSE.INITIAL_ASSIGNER_ITERS "
            "is 0: set the number of warm-up iterations (TOOD: 4 of 12 epochs), or INITIAL_ASSIGNER 'none'")
    if initial == "none" and iters > 0:
        raise ValueError(f"MODEL.DENSE.INITIAL_ASSIGNER_ITERS is {iters} but there is no initial assigner "
                         "(MODEL.DENSE.INITIAL_ASSIGNER)")
    if initial == "none" and (list(d.INITIAL_LOSSES) or cfg.MODEL.BOX_LOSS.INITIAL_WEIGHTING):
        raise ValueError("MODEL.DENSE.INITIAL_LOSSES / MODEL.BOX_LOSS.INITIAL_WEIGHTING are set but there "
                         "is no initial assigner (MODEL.DENSE.INITIAL_ASSIGNER)")
    postprocess = choice("POSTPROCESS", d.POSTPROCESS, "nms")
    if postprocess not in POSTPROCESS_MODES:
        raise ValueError(f"MODEL.DENSE.POSTPROCESS must be one of {POSTPROCESS_MODES}, got {postprocess!r}")
    weighting = cfg.MODEL.BOX_LOSS.WEIGHTING or preset.get("BOX_WEIGHTING", "none")
    if weighting not in BOX_WEIGHTINGS:
        raise ValueError(f"MODEL.BOX_LOSS.WEIGHTING must be one of {BOX_WEIGHTINGS}, got {weighting!r}")
    losses = list(choice("LOSSES", list(d.LOSSES)))
    initial_losses = None
    if initial != "none":
        initial_losses = list(d.INITIAL_LOSSES) or preset.get("INITIAL_LOSSES") or None
    for key, names in (("LOSSES", losses), ("INITIAL_LOSSES", initial_losses or [])):
        if "AuxFocalLoss" in names:
            raise ValueError(f"MODEL.DENSE.{key} must not list AuxFocalLoss: it is added with MODEL.DENSE.AUX_ASSIGNER")
    initial_weighting = cfg.MODEL.BOX_LOSS.INITIAL_WEIGHTING or preset.get("INITIAL_BOX_WEIGHTING") or weighting
    if initial_weighting not in BOX_WEIGHTINGS:
        raise ValueError(f"MODEL.BOX_LOSS.INITIAL_WEIGHTING must be one of {BOX_WEIGHTINGS}, got {initial_weighting!r}")
    b = cfg.MODEL.BOX_LOSS
    box_weight = b.WEIGHT if b.WEIGHT >= 0 else float(preset.get("BOX_LOSS_WEIGHT", 1.0))
    return Components(
        head=choice("HEAD", d.HEAD),
        assigner=choice("ASSIGNER", d.ASSIGNER),
        aux_assigner=None if aux == "none" else aux,
        initial_assigner=None if initial == "none" else initial,
        losses=losses,
        initial_losses=initial_losses,
        box_type=b.TYPE or preset.get("BOX_LOSS_TYPE", "giou"),
        box_weight=box_weight,
        box_weighting=weighting,
        initial_box_weighting=initial_weighting,
        qfl_target=cfg.MODEL.QFL.TARGET or preset.get("QFL_TARGET", "iou"),
        postprocess=postprocess,
    )


# MODEL.DENSE keys that only some components read (the others are read by every detector).
CONDITIONAL_DENSE_KEYS = ("DENSE.SIZES_OF_INTEREST", "DENSE.CENTER_SAMPLING_RADIUS", "DENSE.NMS_THRESH_TEST")


def component_sections() -> List[str]:
    """Every config section (under MODEL) that belongs to a registered component, plus
    MAX_FILTER (the 3DMF add-on)."""
    sections = {"MAX_FILTER"}
    for registry in (HEAD_REGISTRY, ASSIGNER_REGISTRY, LOSS_REGISTRY):
        for _, obj in registry:
            sections.update(k.split(".")[0] for k in getattr(obj, "CONFIG_KEYS", ()))
    sections.discard("DENSE")
    return sorted(sections)


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def read_keys(components: Iterable, cfg, postprocess: str) -> List[str]:
    """The config keys (under MODEL, "SECTION.KEY" or "SECTION.*") that ``components`` read:
    each component's ``config_keys`` (instance, for settings-dependent reads) or ``CONFIG_KEYS``;
    ``MAX_FILTER.*`` with 3DMF on; ``DENSE.NMS_THRESH_TEST`` with NMS post-processing."""
    keys = []
    for c in components:
        if c is not None:
            keys.extend(getattr(c, "config_keys", None) or getattr(c, "CONFIG_KEYS", ()))
    if cfg.MODEL.MAX_FILTER.ENABLED:
        keys.append("MAX_FILTER.*")
    if postprocess == "nms":
        keys.append("DENSE.NMS_THRESH_TEST")
    return keys


def check_unused_keys(cfg, components: Iterable, postprocess: str) -> None:
    """Reject a config that sets (to a non-default value) a key that none of the detector's
    components reads: e.g. ``MODEL.GFL_HEAD.REG_MAX`` with the FCOS head, ``MODEL.ATSS.TOPK`` or
    ``MODEL.DENSE.CENTER_SAMPLING_RADIUS`` with the ATSS assigner, ``MODEL.FOCAL_LOSS.WEIGHT``
    when only the auxiliary loss uses the focal loss's alpha and gamma, ``MODEL.DENSE.NMS_THRESH_TEST``
    with NMS-free post-processing. Such keys would otherwise be silently ignored.

    Args:
        cfg: the config. components: the built head, assigners and loss terms (None skipped).
        postprocess: the resolved ``MODEL.DENSE.POSTPROCESS``.

    Raises:
        ValueError: naming every such key and the components in use.

    Checked: every key of every component section (``component_sections``), ``MODEL.MAX_FILTER``
    KERNEL / TAU, and :data:`CONDITIONAL_DENSE_KEYS`; the other ``MODEL.DENSE`` keys are read by
    every detector. A key set to its default value cannot be told apart from an unset one and is
    accepted.
    """
    from detectron2.config import get_cfg

    from ..config import add_anchorfree_config

    components = [c for c in components if c is not None]
    read = read_keys(components, cfg, postprocess)
    whole = {k[:-2] for k in read if k.endswith(".*")}

    def is_read(section: str, key: str) -> bool:
        return section in whole or f"{section}.{key}" in read

    defaults = add_anchorfree_config(get_cfg()).MODEL
    candidates = [(section, key) for section in component_sections() for key in cfg.MODEL[section]]
    candidates += [tuple(k.split(".")) for k in CONDITIONAL_DENSE_KEYS]
    unused = [f"MODEL.{section}.{key}" for section, key in candidates
              if not (section == "MAX_FILTER" and key == "ENABLED") and not is_read(section, key)
              and not _same(cfg.MODEL[section][key], defaults[section][key])]
    if unused:
        names = ", ".join(type(c).__name__ for c in components)
        raise ValueError(
            f"{unused} set in the config, but no component of this detector reads them (components: "
            f"{names}); remove them (or set them to their defaults), or choose components that use "
            "them (MODEL.DENSE.HEAD / ASSIGNER / AUX_ASSIGNER / LOSSES / POSTPROCESS, "
            "MODEL.MAX_FILTER.ENABLED)")

"""Which components a config chooses, and the check that it sets no key that they do not read.

A detector is built in three steps (``detector.AnchorFreeDetector.from_config``):

1. :func:`apply_preset`: a copy of the config with every choice it leaves empty filled from the
   preset named by ``MODEL.META_ARCHITECTURE`` (``presets.py``). Every component then reads plain
   config keys: no placeholder value ("" / [] / -1) reaches a constructor.
2. The components are built from a :func:`recording_view` of that copy, which records the name of
   every config value read while they are built.
3. :func:`check_unused_keys`: a key of the model's own sections that the config sets to a
   non-default value but that no component read is an error (it would be silently ignored).

So "which keys does a component read" is what its ``from_config`` reads, not a hand-kept list.
"""
from typing import Dict, Iterable, Optional, Set, Tuple

from detectron2.config import CfgNode

from .losses.terms import BOX_WEIGHTINGS

POSTPROCESS_MODES = ("nms", "topk", "peaks")

# The choices a preset makes. The bare detector (``AnchorFreeDetector``, no preset) takes these
# values for the optional ones; HEAD, ASSIGNER and LOSSES it needs from the config.
BARE_DETECTOR_CHOICES: Dict[str, object] = {
    "MODEL.DENSE.AUX_ASSIGNER": "none",
    "MODEL.DENSE.INITIAL_ASSIGNER": "none",
    "MODEL.DENSE.POSTPROCESS": "nms",
    "MODEL.BOX_LOSS.TYPE": "giou",
    "MODEL.BOX_LOSS.WEIGHT": 1.0,
    "MODEL.BOX_LOSS.WEIGHTING": "none",
    "MODEL.QFL.TARGET": "iou",
}
REQUIRED_CHOICES = ("MODEL.DENSE.HEAD", "MODEL.DENSE.ASSIGNER", "MODEL.DENSE.LOSSES")
# Filled only when there is an initial assigner, from the preset or else from the main phase's key.
INITIAL_PHASE_CHOICES = {"MODEL.DENSE.INITIAL_LOSSES": "MODEL.DENSE.LOSSES",
                         "MODEL.BOX_LOSS.INITIAL_WEIGHTING": "MODEL.BOX_LOSS.WEIGHTING"}


def _get(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _set(cfg, key: str, value) -> None:
    *path, leaf = key.split(".")
    node = cfg
    for part in path:
        node = node[part]
    node[leaf] = value


def default_config() -> CfgNode:
    """detectron2's default config with this package's keys (the values a user has not set)."""
    from detectron2.config import get_cfg

    from ..config import add_anchorfree_config

    return add_anchorfree_config(get_cfg())


def _same(a, b) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def apply_preset(cfg: CfgNode, preset: Optional[Dict[str, object]], arch: str) -> CfgNode:
    """A copy of ``cfg`` with every component choice it leaves at its default ("", [] or -1: "the
    preset's") set to the preset's value, else to :data:`BARE_DETECTOR_CHOICES`; with an initial
    assigner, INITIAL_LOSSES and BOX_LOSS.INITIAL_WEIGHTING left unset become the preset's, else
    LOSSES and WEIGHTING. ``cfg`` itself is not modified.

    Args:
        cfg: the config. preset: config key -> value (``presets.PRESETS``), or None for the bare
            detector. arch: ``MODEL.META_ARCHITECTURE`` (for error messages).

    Returns:
        CfgNode: the filled copy, frozen if ``cfg`` is.

    Raises:
        ValueError: HEAD, ASSIGNER or LOSSES empty with no preset value; a negative
            INITIAL_ASSIGNER_ITERS; an initial assigner with 0 iterations (or iterations without
            one); INITIAL_LOSSES or INITIAL_WEIGHTING set without an initial assigner; an unknown
            POSTPROCESS, BOX_LOSS.WEIGHTING or INITIAL_WEIGHTING; AuxFocalLoss listed in LOSSES / INITIAL_LOSSES. Each names the key.
    """
    preset = dict(preset or {})
    defaults = default_config()
    out = cfg.clone()
    out.defrost()

    def unset(key: str) -> bool:
        return _same(_get(cfg, key), _get(defaults, key))

    for key in REQUIRED_CHOICES:
        if unset(key) and key not in preset:
            raise ValueError(f"{key} is empty and META_ARCHITECTURE {arch!r} has no preset for it; "
                             "set it (see docs/configs.md)")
    initial_from_preset = unset("MODEL.DENSE.INITIAL_ASSIGNER") and "MODEL.DENSE.INITIAL_ASSIGNER" in preset
    for key, value in {**BARE_DETECTOR_CHOICES, **preset}.items():
        if key not in INITIAL_PHASE_CHOICES and unset(key):
            _set(out, key, list(value) if isinstance(value, (list, tuple)) else value)
    d = out.MODEL.DENSE
    _check_initial_phase(d.INITIAL_ASSIGNER, d.INITIAL_ASSIGNER_ITERS, initial_from_preset, arch,
                         initial_set=[k for k in INITIAL_PHASE_CHOICES if not unset(k)])
    if d.INITIAL_ASSIGNER != "none":
        for key, main_key in INITIAL_PHASE_CHOICES.items():
            if unset(key):
                value = preset.get(key, _get(out, main_key))
                _set(out, key, list(value) if isinstance(value, (list, tuple)) else value)
    if d.POSTPROCESS not in POSTPROCESS_MODES:
        raise ValueError(f"MODEL.DENSE.POSTPROCESS must be one of {POSTPROCESS_MODES}, got {d.POSTPROCESS!r}")
    for key in ("WEIGHTING", "INITIAL_WEIGHTING"):
        value = out.MODEL.BOX_LOSS[key]
        if (value or key == "WEIGHTING") and value not in BOX_WEIGHTINGS:
            raise ValueError(f"MODEL.BOX_LOSS.{key} must be one of {BOX_WEIGHTINGS}, got {value!r}")
    for key in ("LOSSES", "INITIAL_LOSSES"):
        if "AuxFocalLoss" in d[key]:
            raise ValueError(f"MODEL.DENSE.{key} must not list AuxFocalLoss: it is added with MODEL.DENSE.AUX_ASSIGNER")
    if cfg.is_frozen():
        out.freeze()
    return out


def _check_initial_phase(initial: str, iters: int, from_preset: bool, arch: str, initial_set) -> None:
    """The initial assigner, its iterations and its phase's keys come together (see
    :func:`apply_preset`)."""
    if iters < 0:
        raise ValueError(f"MODEL.DENSE.INITIAL_ASSIGNER_ITERS must be >= 0, got {iters}")
    if initial != "none" and iters == 0:
        source = f"the {arch} preset's" if from_preset else "set in the config"
        raise ValueError(
            f"MODEL.DENSE.INITIAL_ASSIGNER is {initial!r} ({source}) but MODEL.DENSE.INITIAL_ASSIGNER_ITERS "
            "is 0: set the number of warm-up iterations (TOOD: 4 of 12 epochs), or INITIAL_ASSIGNER 'none'")
    if initial == "none" and iters > 0:
        raise ValueError(f"MODEL.DENSE.INITIAL_ASSIGNER_ITERS is {iters} but there is no initial assigner "
                         "(MODEL.DENSE.INITIAL_ASSIGNER)")
    if initial == "none" and initial_set:
        raise ValueError(f"{initial_set} set but there is no initial assigner (MODEL.DENSE.INITIAL_ASSIGNER)")


class _RecordingNode(CfgNode):
    """A config node that adds the full name ("MODEL.DENSE.HEAD") of every value (not section)
    read from it, by attribute or by item, to a set shared by the whole tree."""

    def __init__(self, init_dict=None, key_list=None, new_allowed=False):
        super().__init__(init_dict, key_list, new_allowed)
        self.__dict__["_name"] = ".".join(key_list or [])
        self.__dict__["_reads"] = None

    def __getitem__(self, key):
        value = super().__getitem__(key)
        reads = self.__dict__.get("_reads")
        if reads is not None and not isinstance(value, dict):
            reads.add(f"{self._name}.{key}" if self._name else key)
        return value


def recording_view(cfg: CfgNode) -> Tuple[CfgNode, Set[str]]:
    """A frozen copy of ``cfg`` that records which values are read from it.

    Returns:
        (view, reads): ``view`` reads like ``cfg`` (a ``CfgNode``, so detectron2's
        ``@configurable`` constructors accept it); ``reads`` is the set of full key names
        ("MODEL.ATSS.TOPK") read from it so far, filled as components are built from it.
        Reads through ``dict`` methods (``.get``, ``.items``) are not recorded.
    """
    view = _RecordingNode(cfg)
    reads: Set[str] = set()
    stack = [view]
    while stack:
        node = stack.pop()
        node.__dict__["_reads"] = reads
        stack.extend(v for v in dict.values(node) if isinstance(v, _RecordingNode))
    view.freeze()
    return view, reads


def model_sections(defaults: Optional[CfgNode] = None) -> Tuple[str, ...]:
    """The sections under ``MODEL`` that this package adds (``MODEL.DENSE``, the head, assigner
    and loss-term sections, ``MODEL.MAX_FILTER``, ...): those whose keys only its components read.
    ``defaults``: :func:`default_config` when the caller has it already."""
    from detectron2.config import get_cfg

    ours = (defaults or default_config()).MODEL
    theirs = get_cfg().MODEL
    return tuple(sorted(k for k, v in ours.items() if isinstance(v, dict) and k not in theirs))


def check_unused_keys(cfg: CfgNode, reads: Iterable[str], components: Iterable) -> None:
    """Reject a config that sets (to a non-default value) a key of the model's own sections
    (:func:`model_sections`) that building the detector did not read: e.g.
    ``MODEL.GFL_HEAD.REG_MAX`` with the FCOS head, ``MODEL.ATSS.TOPK`` or
    ``MODEL.DENSE.CENTER_SAMPLING_RADIUS`` with the ATSS assigner, ``MODEL.FOCAL_LOSS.WEIGHT``
    when only the auxiliary loss uses the focal loss's alpha and gamma,
    ``MODEL.DENSE.NMS_THRESH_TEST`` with NMS-free post-processing. Such keys would otherwise be
    silently ignored.

    Args:
        cfg: the config as given (before :func:`apply_preset`).
        reads: full key names read while the detector was built (:func:`recording_view`).
        components: the built head, assigners and loss terms (None skipped), named in the message.

    Raises:
        ValueError: naming every such key and the components in use.

    A key set to its default value cannot be told apart from an unset one and is accepted.
    """
    reads = set(reads)
    full_defaults = default_config()
    defaults = full_defaults.MODEL
    unused = [f"MODEL.{section}.{key}" for section in model_sections(full_defaults) for key in cfg.MODEL[section]
              if f"MODEL.{section}.{key}" not in reads
              and not _same(cfg.MODEL[section][key], defaults[section][key])]
    if unused:
        names = ", ".join(type(c).__name__ for c in components if c is not None)
        raise ValueError(
            f"{unused} set in the config, but no component of this detector reads them (components: "
            f"{names}); remove them (or set them to their defaults), or choose components that use "
            "them (MODEL.DENSE.HEAD / ASSIGNER / AUX_ASSIGNER / LOSSES / POSTPROCESS, "
            "MODEL.MAX_FILTER.ENABLED, MODEL.DUAL)")

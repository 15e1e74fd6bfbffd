"""Turning another framework's checkpoint into a d2_anchorfree (detectron2) checkpoint.

A *source* is a module with:

* ``NAME`` (str) and ``detect(state) -> bool`` (does a state dict come from this framework?);
* ``make_renamer(cfg, target_keys) -> Callable[[str], Optional[str]]``: source key -> our key, or ``None``
  when the key has no counterpart in our model (the conversion then fails, naming it);
* ``IGNORED``: regexes (``re.search``) of source keys that are dropped on purpose (e.g. BN
  counters);
* ``ZERO_FILLED``: regexes of our keys that the source model does not have because they are
  exactly zero in its arithmetic (e.g. a conv bias it never had); optional;
* ``convert_tensor(our_key, tensor) -> tensor``: optional, for a tensor stored in another shape
  with the same values (e.g. a [1] Scale that is 0-d in our model).

:func:`convert_state_dict` applies a source and refuses any partial result: a source tensor left
unused, a model tensor left unset, two source tensors landing on one key, or a shape that does
not fit all raise :class:`ConversionError`, naming the keys.
"""
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..safe_load import RestrictedUnpickler, UnsafeWeightFileError, _numpy_globals

__all__ = ["ConversionError", "ConversionReport", "DETECTRON2_BACKBONE_RULES", "convert_state_dict",
           "load_source_checkpoint", "matches_any", "rule_renamer", "scale_as_0d", "values_differ"]


class ConversionError(ValueError):
    """A checkpoint does not convert completely and exactly into the model."""


@dataclass
class ConversionReport:
    """What :func:`convert_state_dict` did: counts and the keys dropped or filled on purpose."""

    source: str
    converted: int = 0
    ignored: List[str] = field(default_factory=list)
    zero_filled: List[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs: counts of converted, ignored and zero-filled tensors."""
        return (f"{self.source}: {self.converted} tensors converted, {len(self.ignored)} ignored, "
                f"{len(self.zero_filled)} zero-filled")


def _numpy_safe_globals() -> List[Any]:
    """numpy types that checkpoints' metadata holds (scalars in logs and seeds, arrays, dtypes),
    under both the numpy 1.x names that published files carry (``numpy.core.multiarray.scalar``)
    and the numpy 2 ones; rebuilding them calls nothing but numpy's own constructors (the same
    allow-list as ``safe_load.RestrictedUnpickler``)."""
    allowed: List[Any] = [(obj, f"{module}.{name}") for (module, name), obj in _numpy_globals().items()]
    allowed += [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32", "uint8", "bool")]
    return allowed


def _unwrap(obj: Any, path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path} holds a {type(obj).__name__}, not a checkpoint dict")
    meta: Dict[str, Any] = {k: v for k, v in obj.items() if k in ("meta", "__author__", "iteration")}
    for key in ("state_dict", "model"):  # MMDetection / detectron2, AdelaiDet, cvpods
        if key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    state = {}
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.ascontiguousarray(v))
        if not isinstance(v, torch.Tensor):
            raise ConversionError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor; "
                                  "expected a state dict (or one under 'state_dict' / 'model')")
        state[k[len("module."):] if k.startswith("module.") else k] = v
    if not state:
        raise ConversionError(f"{path} holds no tensors")
    return state, meta


def load_source_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read a checkpoint of another framework without running code from it.

    ``.pkl`` files are read by :class:`~d2_anchorfree.checkpoint.RestrictedUnpickler` (dicts,
    numbers, strings, numpy arrays); every other file by ``torch.load(weights_only=True)`` with
    numpy's scalar and dtype types allow-listed (MMDetection and cvpods store numpy scalars in
    their metadata). The state dict is taken from ``"state_dict"`` (MMDetection), ``"model"``
    (detectron2, AdelaiDet, cvpods) or the top level; a DistributedDataParallel ``module.``
    prefix is removed.

    Args:
        path: a local file.

    Returns:
        (state dict {name: Tensor}, metadata: the file's "meta" / "__author__" / "iteration").

    Raises:
        FileNotFoundError: no such file.
        UnsafeWeightFileError: the file names another Python object (nothing was called); the
            message names it and says how to re-save the tensors alone from a trusted copy.
        ConversionError: the file is not a state dict.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.endswith(".pkl"):
        with open(path, "rb") as f:
            obj = RestrictedUnpickler(f, source=path).load()
    else:
        try:
            with torch.serialization.safe_globals(_numpy_safe_globals()):
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            first = str(e).strip().splitlines()
            found = re.search(r"GLOBAL ([\w.]+)", str(e))
            raise UnsafeWeightFileError(
                f"refusing to load {path}: it holds a Python object beyond tensors, containers, numbers "
                f"and numpy scalars ({found.group(1) if found else (first[0] if first else e)}), which "
                "unpickling would import and call. If you trust the file, keep only its tensors: "
                f"python -c \"import torch; c = torch.load('{path}', weights_only=False); "
                "torch.save({'state_dict': c.get('state_dict', c.get('model', c))}, 'weights_only.pth')\" "
                "and convert weights_only.pth") from e
    return _unwrap(obj, path)


# detectron2-layout backbones (AdelaiDet, cvpods): ResNet and FPN keep their names; the P6/P7
# block (``LastLevelP6P7.p6`` / ``.p7``) is our ``LastLevelsFromFeature.convs[0]`` / ``[1]``.
DETECTRON2_BACKBONE_RULES: Tuple[Tuple[str, str], ...] = (
    (r"^backbone\.bottom_up\.(.+)$", r"backbone.bottom_up.\1"),
    (r"^backbone\.(fpn_(?:lateral|output)\d)\.(.+)$", r"backbone.\1.\2"),
    (r"^backbone\.top_block\.p6\.(weight|bias)$", r"backbone.top_block.convs.0.\1"),
    (r"^backbone\.top_block\.p7\.(weight|bias)$", r"backbone.top_block.convs.1.\1"),
)


def rule_renamer(rules: Sequence[Tuple[str, str]], ignored: Sequence[str] = ()) -> Callable[[str], Optional[str]]:
    """A renamer from (source regex, replacement) rules, first match wins; keys matching
    ``ignored`` (``re.search``) or no rule give None."""
    compiled = [(re.compile(p), r) for p, r in rules]

    def rename(key: str) -> Optional[str]:
        if matches_any(key, ignored):
            return None
        for pattern, replacement in compiled:
            if pattern.match(key):
                return pattern.sub(replacement, key)
        return None

    return rename


def scale_as_0d(our_key: str, value: torch.Tensor) -> torch.Tensor:
    """A per-level ``Scale`` stored as a [1] tensor (AdelaiDet, cvpods) as our 0-d parameter
    (``layers/scale.py``; same product); every other tensor unchanged."""
    if our_key.startswith("head.scales") and our_key.endswith(".scale") and value.shape == (1,):
        return value.reshape(())
    return value


def matches_any(key: str, patterns: Iterable[str]) -> bool:
    """Whether ``key`` matches (``re.search``) one of ``patterns`` (``IGNORED`` / ``ZERO_FILLED``)."""
    return any(re.search(p, key) for p in patterns)


def values_differ(values: Sequence[float], ours: Sequence[float], atol: float = 1e-3) -> bool:
    """Whether a file's per-channel normalization (mean or std, 0-255 units) differs from ours
    (``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``): other length or any channel off by more than ``atol``."""
    return len(values) != len(ours) or any(abs(a - b) > atol for a, b in zip(values, ours))


def _listing(keys: Sequence[str], limit: int = 12) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def convert_state_dict(state: Mapping[str, torch.Tensor], source, cfg,
                       target_shapes: Mapping[str, Tuple[int, ...]],
                       meta: Optional[Mapping[str, Any]] = None) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """Rename a source state dict into our model's keys, completely and exactly.

    Args:
        state: the source state dict (:func:`load_source_checkpoint`).
        source: a source module (see the module docstring), e.g. ``conversion.mmdet``.
        cfg: our config (the renamer reads e.g. the FPN levels and the head's norm from it).
        target_shapes: {our key: shape} of the model the result is for (``model.state_dict()``).
        meta: the file's metadata (:func:`load_source_checkpoint`); a source's optional
            ``check_config(state, meta, cfg) -> [problems]`` compares what the file says about
            its model (head type, input normalization, ...) with ``cfg``.

    Returns:
        ({our key: tensor (same values and dtype)}, :class:`ConversionReport`).

    Raises:
        ConversionError: naming the keys, when a source tensor matches no rule and is not ignored
            (unused), a model tensor receives nothing and is not zero-fillable (unset), two source
            tensors land on one key, a shape differs, or the source's ``check_config`` finds the
            config does not describe the file's model (naming the setting).
    """
    rename: Callable[[str], Optional[str]] = source.make_renamer(cfg, set(target_shapes))
    report = ConversionReport(source=source.NAME)
    out: Dict[str, torch.Tensor] = {}
    origin: Dict[str, str] = {}
    unused, clashes, shapes, unknown = [], [], [], []
    for key, value in state.items():
        if matches_any(key, source.IGNORED):
            report.ignored.append(key)
            continue
        new = rename(key)
        if new is not None and hasattr(source, "convert_tensor"):
            value = source.convert_tensor(new, value)
        if new is None:
            unused.append(key)
            continue
        if new in origin:
            clashes.append(f"{origin[new]} and {key} -> {new}")
            continue
        origin[new] = key
        if new not in target_shapes:
            unknown.append(f"{key} -> {new}")
        elif tuple(value.shape) != tuple(target_shapes[new]):
            shapes.append(f"{key} {tuple(value.shape)} -> {new} {tuple(target_shapes[new])}")
        else:
            out[new] = value.detach().clone()
    unset = []
    for key, shape in target_shapes.items():
        if key in out:
            continue
        if matches_any(key, getattr(source, "ZERO_FILLED", ())):
            out[key] = torch.zeros(shape)
            report.zero_filled.append(key)
        else:
            unset.append(key)
    problems = list(source.check_config(state, meta or {}, cfg)) if hasattr(source, "check_config") else []
    if unused:
        problems.append(f"{len(unused)} source tensors have no counterpart in the model: {_listing(unused)}")
    if unknown:
        problems.append(f"{len(unknown)} source tensors map to keys the model does not have "
                        f"(check the config): {_listing(unknown)}")
    if clashes:
        problems.append(f"source tensors collide: {_listing(clashes)}")
    if shapes:
        problems.append(f"{len(shapes)} shapes differ (check NUM_CLASSES, depth, norms): {_listing(shapes)}")
    if unset:
        problems.append(f"{len(unset)} model tensors are left unset: {_listing(unset)}")
    if problems:
        raise ConversionError(f"{source.NAME} checkpoint does not convert exactly into this model:\n  "
                              + "\n  ".join(problems))
    report.converted = len(out) - len(report.zero_filled)
    return out, report

"""The configs shipped with d2_anchorfree, by their path under ``configs/``.

    from d2_anchorfree import model_zoo
    path = model_zoo.get_config_file("FCOS/FCOS_R_50_FPN_1x.yaml")   # an absolute path
    cfg = model_zoo.get_config("FCOS/FCOS_R_50_FPN_1x.yaml")         # a detectron2 CfgNode

The configs are the top-level ``configs/`` folder of the source tree; an installed wheel holds
them as ``d2_anchorfree/configs``. :func:`get_config_file` needs neither torch nor detectron2.
"""
import difflib
import os
from typing import List

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def configs_root() -> str:
    """The folder that holds the shipped configs.

    ``d2_anchorfree/configs`` in an installed wheel, else ``configs/`` next to the package folder
    (a source checkout, used directly or through an editable install).

    Raises:
        FileNotFoundError: neither folder exists (an incomplete installation), naming both.
    """
    candidates = [os.path.join(_PACKAGE_DIR, "configs"), os.path.join(os.path.dirname(_PACKAGE_DIR), "configs")]
    for path in candidates:
        if os.path.isdir(path):
            return path
    raise FileNotFoundError(f"no configs folder found at {' or '.join(candidates)}: d2_anchorfree is installed "
                            "without its configs")


def list_configs(subdir: str = "") -> List[str]:
    """The config files under ``subdir`` of :func:`configs_root` (all of them for ``""``), as
    sorted paths relative to the configs root with ``/`` separators."""
    root = configs_root()
    found = []
    for folder, _, files in os.walk(os.path.join(root, subdir)):
        for name in files:
            if name.endswith(".yaml"):
                found.append(os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/"))
    return sorted(found)


def _nearby_configs(config_path: str) -> List[str]:
    """Configs to suggest for a missing ``config_path``: those of its folder when that folder
    exists, else the closest names among all configs (at most 10)."""
    folder = os.path.dirname(config_path)
    if folder and os.path.isdir(os.path.join(configs_root(), folder)):
        return list_configs(folder)
    everything = list_configs()
    return difflib.get_close_matches(config_path, everything, n=10, cutoff=0.3) or everything[:10]


def get_config_file(config_path: str) -> str:
    """The absolute path of a shipped config, as detectron2's ``model_zoo.get_config_file``.

    Args:
        config_path (str): the config's path relative to ``configs/``, with ``/`` separators,
            e.g. ``"FCOS/FCOS_R_50_FPN_1x.yaml"``.

    Returns:
        str: the absolute path of the YAML file (its ``_BASE_`` files lie next to it).

    Raises:
        ValueError: ``config_path`` is empty, absolute or leads outside the configs folder.
        FileNotFoundError: no such config; the message names the path and lists nearby configs.
    """
    if not isinstance(config_path, str) or not config_path:
        raise ValueError(f"config_path must be a non-empty path relative to configs/, got {config_path!r}")
    normalized = os.path.normpath(config_path).replace(os.sep, "/")
    if os.path.isabs(config_path) or normalized == ".." or normalized.startswith("../"):
        raise ValueError(f"config_path must be relative to configs/ (e.g. 'FCOS/FCOS_R_50_FPN_1x.yaml'), "
                         f"got {config_path!r}")
    root = configs_root()
    path = os.path.join(root, normalized)
    if not os.path.isfile(path):
        nearby = _nearby_configs(normalized)
        raise FileNotFoundError(f"config {config_path!r} not found in {root}; nearby configs: "
                                + (", ".join(nearby) if nearby else "none"))
    return path


def get_config(config_path: str):
    """A detectron2 config with d2_anchorfree's keys, merged from a shipped config.

    Args:
        config_path (str): as in :func:`get_config_file`, e.g. ``"ATSS/ATSS_R_50_FPN_1x.yaml"``.

    Returns:
        CfgNode: ``detectron2.config.get_cfg()`` + ``add_anchorfree_config`` + the YAML (not frozen;
        datasets listed in ``DATASETS.REGISTER_COCO`` are not registered: ``setup_cfg`` does that).

    Raises:
        ValueError, FileNotFoundError: as :func:`get_config_file`.
        ImportError: detectron2 or torch is not installed.
    """
    path = get_config_file(config_path)
    from detectron2.config import get_cfg

    from .config import add_anchorfree_config

    cfg = get_cfg()
    add_anchorfree_config(cfg)
    cfg.merge_from_file(path)
    return cfg

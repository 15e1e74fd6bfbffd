"""Reading weight files without running code from them.

A ``.pkl`` weight file (detectron2's ImageNet backbones, Detectron/Caffe2 model-zoo files, the
output of ``tools/convert_torchvision_to_d2.py``) is a Python pickle, and ``pickle.load`` runs
whatever callable the file names: detectron2's ``DetectionCheckpointer`` calls it directly. Here a
``.pkl`` file is read by :class:`RestrictedUnpickler`, which admits only dicts, lists, tuples,
numbers, strings, bytes and numpy arrays; every other file (``.pth``, ``.pt``, ``.pyth``) is read
by ``torch.load(weights_only=True)``, torch's own restricted unpickler (tensors, containers,
primitive types). Either refuses a file that names anything else *before* calling it.

:func:`install_safe_loading` (called when ``d2_anchorfree`` is imported) makes detectron2's
``DetectionCheckpointer`` use :func:`load_checkpoint_file`, so ``DefaultPredictor``,
``DefaultTrainer`` and ``train_net.py --eval-only`` read weights this way too.
"""
import _codecs
import pickle
from typing import Any, Dict

import torch

__all__ = ["UnsafeWeightFileError", "RestrictedUnpickler", "load_checkpoint_file", "install_safe_loading"]


class UnsafeWeightFileError(pickle.UnpicklingError):
    """A weight file names a Python object that loading it would have to import or call."""


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    # Pickle protocols < 3 store ``bytes`` as ``_codecs.encode(text, "latin1")``. Only that use
    # is admitted: another codec name could make ``codecs.lookup`` import a module.
    if encoding not in ("latin1", "latin-1"):
        raise UnsafeWeightFileError(f"_codecs.encode with encoding {encoding!r} (only 'latin1' is allowed)")
    return _codecs.encode(text, "latin1", errors)


def _numpy_globals() -> Dict[tuple, Any]:
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
    # numpy 1.x wrote "numpy.core.multiarray", numpy 2.x writes "numpy._core.multiarray".
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct
        allowed[(module, "scalar")] = multiarray.scalar
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` for weight files: dicts (``OrderedDict`` too), lists, tuples,
    numbers, strings, bytes and numpy arrays/scalars, nothing else.

    Python 2 pickles load with ``encoding="latin1"`` (detectron2's convention for ``.pkl``
    files). Any other global the stream names raises :class:`UnsafeWeightFileError` naming it
    and ``source`` before it is imported or called.
    """

    def __init__(self, file, source: str = "<stream>"):
        super().__init__(file, encoding="latin1")
        self._source = source
        import collections

        self._allowed = {
            ("collections", "OrderedDict"): collections.OrderedDict,
            ("_codecs", "encode"): _latin1_encode,
            **_numpy_globals(),
        }

    def find_class(self, module: str, name: str):
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafeWeightFileError(
                f"refusing to load weight file {self._source}: it names the Python object "
                f"'{module}.{name}', which could run code when unpickled. Weight files may hold only "
                "dicts, lists, tuples, numbers, strings and numpy arrays. If you trust and need this "
                "file, load it yourself and save its arrays with pickle/torch.save."
            ) from None

    def persistent_load(self, pid):
        raise UnsafeWeightFileError(f"refusing to load weight file {self._source}: it uses persistent ids")


def _torch_load(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeWeightFileError(
            f"refusing to load weight file {path}: torch.load(weights_only=True) rejected it, because it "
            f"holds more than tensors, containers and numbers ({str(e).splitlines()[0]})"
        ) from e


def load_checkpoint_file(path: str) -> Dict[str, Any]:
    """Read a weight file into detectron2's checkpoint layout, running no code from the file.

    Formats (as detectron2's ``DetectionCheckpointer._load_file``, with safe readers):

    * ``.pkl``: detectron2 model-zoo layout ``{"model": {name: ndarray}, "__author__": ...}``
      is returned as is; otherwise a Caffe2/Detectron blob dict (``"blobs"`` unwrapped, ``*_momentum``
      dropped) is returned as ``{"model": ..., "__author__": "Caffe2", "matching_heuristics": True}``.
    * ``.pyth`` (pycls): ``{"model": model_state without num_batches_tracked, "__author__": "pycls",
      "matching_heuristics": True}``.
    * anything else (``.pth``): ``torch.load(weights_only=True)``; wrapped as ``{"model": ...}``
      when it has no ``"model"`` key.

    Args:
        path: a local file path.

    Returns:
        dict with at least ``"model"``: {name: Tensor or ndarray}.

    Raises:
        UnsafeWeightFileError: the file names an object outside the allow-list (nothing was called).
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a weight dict (e.g. a pickled list), naming the file.
        Other errors of a truncated or corrupt file propagate (``EOFError``, ``RuntimeError``,
        ``pickle.UnpicklingError``), with the file named by the caller.
    """
    if path.endswith(".pkl"):
        with open(path, "rb") as f:
            data = RestrictedUnpickler(f, source=path).load()
        if not isinstance(data, dict):
            raise ValueError(f"weight file {path} holds a {type(data).__name__}, not a dict of arrays")
        if "model" in data and "__author__" in data:  # detectron2 model-zoo layout
            return data
        if "blobs" in data:  # Caffe2 detection models; ImageNet models have no "blobs"
            data = data["blobs"]
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
    data = _torch_load(path)
    if not isinstance(data, dict):
        raise ValueError(f"weight file {path} holds a {type(data).__name__}, not a dict of tensors")
    if path.endswith(".pyth"):
        if "model_state" not in data:
            raise ValueError(f"cannot load .pyth file {path}: pycls checkpoints must contain 'model_state'")
        state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
        return {"model": state, "__author__": "pycls", "matching_heuristics": True}
    return data if "model" in data else {"model": data}


def _checkpointer_load_file(self, filename: str) -> Dict[str, Any]:
    data = load_checkpoint_file(filename)
    if "__author__" in data:
        self.logger.info("Reading a file from '{}'".format(data["__author__"]))
    return data


def install_safe_loading() -> None:
    """Make detectron2's ``DetectionCheckpointer`` (and so ``DefaultPredictor``, ``DefaultTrainer``
    and every subclass) read weight files with :func:`load_checkpoint_file`. Idempotent."""
    from detectron2.checkpoint import DetectionCheckpointer

    DetectionCheckpointer._load_file = _checkpointer_load_file

"""Checkpoints that a killed run cannot corrupt, resume that survives a bad file, and weight
loading that refuses weights which do not fit the model.

fvcore's ``Checkpointer.save`` opens ``model_final.pth`` for writing in place: a run killed while
rewriting it (e.g. a finished run resumed with a larger ``SOLVER.MAX_ITER``) leaves a truncated
file that ``last_checkpoint`` points to, and the only good weights are gone. Here every file is
written to a temporary file in the same folder, flushed, fsync'ed and then renamed over the old
one with ``os.replace`` (atomic on POSIX), and the folder is fsync'ed: at any instant the path
holds either the complete old file or the complete new one.
"""
import contextlib
import glob
import logging
import os
import tempfile
from typing import Callable, IO, List, Optional

import torch

from detectron2.checkpoint import DetectionCheckpointer

from .. import compat
from .classes import CLASSES_KEY, check_classes

__all__ = ["atomic_write", "AnchorFreeCheckpointer", "load_inference_weights", "WeightsMismatchError", "EMA_KEY",
           "RAW_MODEL_KEY"]

logger = logging.getLogger(__name__)

_TMP_SUFFIX = ".tmp"
# With model EMA (MODEL_EMA.ENABLED), a checkpoint's "model" holds the averaged weights (what
# evaluation, prediction and export load), RAW_MODEL_KEY the trained weights and EMA_KEY the
# average's update count: resuming training needs all three.
RAW_MODEL_KEY = "model_raw"
EMA_KEY = "ema"


class WeightsMismatchError(ValueError):
    """A checkpoint leaves (too much of) the model unset."""


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, write: Callable[[IO], None], binary: bool = True) -> None:
    """Write ``path`` so that it is never seen partially written, even if the process is killed.

    ``write(f)`` fills a temporary file ``.<basename>.<random>.tmp`` in the same folder, which is
    flushed and fsync'ed, then renamed to ``path`` (``os.replace``), and the folder is fsync'ed.
    On an exception the temporary file is removed and ``path`` is untouched; after a SIGKILL the
    temporary file stays behind (see :meth:`AnchorFreeCheckpointer.remove_stale_temp_files`).

    Args:
        path: destination file.
        write: called once with the open temporary file.
        binary: open it in binary ("wb") or text ("w") mode.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=_TMP_SUFFIX, dir=directory)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; give it an ordinary file's mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


def _coverage_error(model_state: dict, unset: List[str], min_fraction: float, source: str) -> Optional[str]:
    total = sum(v.numel() for v in model_state.values())
    unset_numel = sum(model_state[k].numel() for k in unset if k in model_state)
    loaded = 1.0 - unset_numel / max(total, 1)
    if loaded >= min_fraction and not (min_fraction >= 1.0 and unset):
        return None
    shown = ", ".join(sorted(unset)[:8]) + (f", ... ({len(unset)} in all)" if len(unset) > 8 else "")
    need = "every model tensor" if min_fraction >= 1.0 else f"at least {min_fraction:.0%} of the model's weights"
    return (f"weights {source} set only {loaded:.1%} of the model's weights ({len(unset)} of "
            f"{len(model_state)} tensors left unset: {shown}); {need} must come from the file. "
            "Check MODEL.WEIGHTS and that the config builds the model the weights were trained with.")


class AnchorFreeCheckpointer(DetectionCheckpointer):
    """detectron2's ``DetectionCheckpointer`` with:

    * atomic saves (:func:`atomic_write` for ``<name>.pth`` and ``last_checkpoint``);
    * resume that falls back: when the file ``last_checkpoint`` names cannot be loaded, the error
      is logged naming it and the newest other complete ``.pth`` in the folder is used;
    * a weight-coverage check: loading raises :class:`WeightsMismatchError` when the file sets
      less than ``min_loaded_fraction`` of the model's weights (counted in elements; missing keys
      and shape mismatches count as unset). Resuming always needs every tensor;
    * model EMA (``ema``, a ``d2_anchorfree.engine.ema.ModelEMA``): ``"model"`` holds the
      averaged weights, so every consumer that loads ``"model"`` (evaluation, ``DefaultPredictor``,
      prediction, export, :func:`load_inference_weights`, ``MODEL.WEIGHTS`` of a new run) gets
      them unchanged; ``"model_raw"`` holds the trained weights and ``"ema"`` the update count.
      Resuming with ``training=True`` loads ``"model_raw"`` into the model and ``"model"`` into
      ``ema``; any other load takes ``"model"`` and ignores ``"model_raw"``.

    Weight files are read by ``d2_anchorfree.checkpoint.load_checkpoint_file`` (no code runs).
    ``loaded_path`` is the file most recently loaded ("" before any).

    Args:
        model, save_dir, save_to_disk, checkpointables: as ``DetectionCheckpointer``.
        min_loaded_fraction: in [0, 1]; 0.5 for training from initial weights (an ImageNet
            backbone sets most of a detector, not its FPN and head), 1.0 for inference.
        classes: the class names and category ids of the training data
            (``classes.dataset_classes``), written into every checkpoint under ``"classes"``
            (strings and ints only) so that prediction and export need no dataset; None: not written.
        ema: the trainer's ``ModelEMA`` or None (no averaging: ``"model"`` is the trained model).
        training: the checkpointer of a training run: a resume restores the trained weights from
            ``"model_raw"`` when the checkpoint has them (written with model EMA), whether or not
            this run averages. False (inference): ``"model"`` is always what is loaded.

    Raises:
        ValueError: ``min_loaded_fraction`` outside [0, 1]; a malformed ``classes``.
    """

    def __init__(self, model, save_dir: str = "", *, save_to_disk=None, min_loaded_fraction: float = 0.5,
                 classes: Optional[dict] = None, ema=None, training: bool = False, **checkpointables):
        if ema is not None:
            checkpointables[EMA_KEY] = ema
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.ema = ema
        self.training = training
        self._resuming = False
        if not 0.0 <= min_loaded_fraction <= 1.0:
            raise ValueError(f"min_loaded_fraction must be in [0, 1], got {min_loaded_fraction}")
        self.min_loaded_fraction = min_loaded_fraction
        self.classes = None if classes is None else check_classes(classes, "AnchorFreeCheckpointer(classes=...)")
        self.loaded_path = ""

    # ---- saving
    def save(self, name: str, *, tag_last: bool = True, **kwargs) -> None:
        """Write ``<save_dir>/<name>.pth`` (model, checkpointables, ``classes`` when given,
        ``kwargs``) atomically, then, with ``tag_last`` (default, as detectron2), point
        ``last_checkpoint`` at it (atomically too). ``tag_last=False`` is for files that
        ``--resume`` must not continue from, e.g. ``model_best.pth``. With ``ema``, ``"model"`` is
        the averaged weights and ``"model_raw"`` the trained ones."""
        if not self.save_dir or not self.save_to_disk:
            return
        if self.ema is None:
            data = {"model": self.model.state_dict()}
        else:
            data = {"model": self.ema.module.state_dict(), RAW_MODEL_KEY: self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        if self.classes is not None:
            data[CLASSES_KEY] = self.classes
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to {}".format(save_file))
        atomic_write(save_file, lambda f: torch.save(data, f))
        if tag_last:
            self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                     lambda f: f.write(last_filename_basename), binary=False)

    def remove_stale_temp_files(self) -> List[str]:
        """Delete temporary files left in ``save_dir`` by a save that was killed; return them."""
        stale = glob.glob(os.path.join(glob.escape(self.save_dir), "." + "*" + _TMP_SUFFIX))
        for path in stale:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            self.logger.warning("removed %s, left by a checkpoint save that did not finish", path)
        return stale

    # ---- loading
    def load(self, path, *args, **kwargs):
        self.loaded_path = path
        return super().load(path, *args, **kwargs)

    def _load_model(self, checkpoint):
        raw = checkpoint.pop(RAW_MODEL_KEY, None)
        averaged = None
        if raw is not None and self.training and self._resuming:  # the trained weights go on training
            averaged, checkpoint["model"] = checkpoint["model"], raw
        incompatible = super()._load_model(checkpoint)
        unset = list(incompatible.missing_keys) + [k for k, *_ in incompatible.incorrect_shapes]
        error = _coverage_error(self.model.state_dict(), unset, self.min_loaded_fraction, self.loaded_path)
        if error:
            raise WeightsMismatchError(error)
        if averaged is not None and self.ema is not None:  # its update count: the "ema" checkpointable
            self.ema.load_weights(averaged)
        return incompatible

    def _resume_candidates(self) -> List[str]:
        first = self.get_checkpoint_file()  # "" when last_checkpoint cannot be read
        others = sorted(self.get_all_checkpoint_files(), key=os.path.getmtime, reverse=True)
        rest = [p for p in others if not first or os.path.abspath(p) != os.path.abspath(first)]
        return ([first] if first else []) + rest

    def resume_or_load(self, path: str, *, resume: bool = True):
        """``resume`` and a ``last_checkpoint`` in ``save_dir``: load model and checkpointables from
        it, requiring every model tensor; if that file cannot be loaded, log why (naming it) and
        try the other ``.pth`` files of ``save_dir``, newest first. Otherwise load only the model
        from ``path`` (``min_loaded_fraction`` applies; empty ``path``: nothing is loaded).

        Raises:
            RuntimeError: resuming, and no checkpoint in ``save_dir`` could be loaded (each
                file and its error named).
        """
        if not (resume and self.has_checkpoint()):
            return self.load(path, checkpointables=[])
        self.remove_stale_temp_files()
        failures = []
        required, self.min_loaded_fraction = self.min_loaded_fraction, 1.0
        self._resuming = True
        try:
            for candidate in self._resume_candidates():
                try:
                    return self.load(candidate)
                except Exception as e:  # truncated/corrupt file, missing file, wrong model
                    compat.reset_failed_checkpoint_load(self)
                    failures.append(f"{candidate}: {type(e).__name__}: {e}")
                    self.logger.error("cannot resume from %s (%s: %s); trying the previous checkpoint",
                                      candidate, type(e).__name__, e)
        finally:
            self.min_loaded_fraction = required
            self._resuming = False
        raise RuntimeError(f"--resume: no checkpoint in {self.save_dir} could be loaded:\n  "
                           + "\n  ".join(failures))


def load_inference_weights(model, weights: str, *, resume_dir: str = "", allow_untrained: bool = False) -> dict:
    """Load weights for evaluation or prediction, requiring every model tensor to be set.

    Args:
        model: the built model (``nn.Module``).
        weights: ``MODEL.WEIGHTS``; used unless ``resume_dir`` holds a ``last_checkpoint``.
        resume_dir: with a ``last_checkpoint`` in it, load that checkpoint instead
            (``train_net.py --eval-only --resume``).
        allow_untrained: with no weights at all, keep the untrained model (with a warning)
            instead of raising. Use only for reference numbers of an untrained model.

    Returns:
        dict: the checkpoint's entries other than the model (e.g. ``"iteration"``, ``"classes"``:
        see ``d2_anchorfree.checkpoint.classes``); empty when nothing was loaded.

    Raises:
        ValueError: no weights given and ``allow_untrained`` is False.
        WeightsMismatchError: the file leaves some model tensor unset.
        UnsafeWeightFileError: the file could run code (see ``load_checkpoint_file``).
    """
    checkpointer = AnchorFreeCheckpointer(model, resume_dir, min_loaded_fraction=1.0)
    resuming = bool(resume_dir) and checkpointer.has_checkpoint()
    if not weights and not resuming:
        if not allow_untrained:
            raise ValueError(
                "MODEL.WEIGHTS is empty: evaluating or predicting would use an untrained, random model. "
                "Set MODEL.WEIGHTS to a trained checkpoint (or pass --allow-untrained to do this on purpose).")
        logger.warning("MODEL.WEIGHTS is empty: using the untrained model (--allow-untrained)")
        return {}
    return dict(checkpointer.resume_or_load(weights, resume=resuming) or {})

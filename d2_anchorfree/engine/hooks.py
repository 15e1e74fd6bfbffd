"""Trainer hooks: tell the model what the trainer knows; keep the best checkpoint and stop early."""
import json
import logging
import math
import os
import uuid
from typing import Callable, Iterable, List, Tuple

import torch

from detectron2.engine import HookBase
from detectron2.engine.hooks import BestCheckpointer
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.utils import comm

from .. import compat
from ..checks import is_whole_number
from ..checkpoint import atomic_write


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


class CloseMosaicHook(HookBase):
    """Ends the mosaic augmentation for the last ``INPUT.MOSAIC.CLOSE_ITERS`` iterations
    (Ultralytics' ``close_mosaic``): before iteration ``close_iter`` the trainer's training loader
    is replaced by ``build_loader(close_iter)``, the loader of the same sample stream from that
    position on with the mosaic off (``AnchorFreeTrainer.build_train_loader``).

    A run resumed at or after ``close_iter`` already starts with that loader
    (``AnchorFreeTrainer.resume_or_load``) and this hook does nothing, so a killed and resumed run
    sees the images of an uninterrupted one.

    Args:
        close_iter (int): the first iteration without the mosaic (``data.mosaic_close_iter``).
        build_loader (callable): start iteration -> training data loader without the mosaic.
    """

    def __init__(self, close_iter: int, build_loader: Callable[[int], Iterable]):
        self._close_iter = close_iter
        self._build_loader = build_loader

    def before_step(self):
        if self.trainer.iter == self._close_iter and self.trainer.start_iter < self._close_iter:
            compat.replace_train_loader(self.trainer._trainer, self._build_loader(self._close_iter))
            logging.getLogger(__name__).info(
                f"Mosaic closed: iterations {self._close_iter} to {self.trainer.max_iter - 1} train on plain images "
                "(INPUT.MOSAIC.CLOSE_ITERS)")


class EarlyStop(BaseException):
    """Ends training early, cleanly: raised by :class:`AnchorFreeBestCheckpointer` after it wrote
    ``model_final.pth``, and caught by ``AnchorFreeTrainer.train``. A ``BaseException``, like
    ``KeyboardInterrupt``, so that detectron2's training loop does not log it as a failure
    (``TrainerBase.train`` logs every ``Exception``) while its ``after_train`` hooks still run."""


def best_checkpoint_enabled(cfg) -> bool:
    """True when training evaluates periodically (``TEST.EVAL_PERIOD`` > 0 on a non-empty
    ``DATASETS.TEST``) and ``SOLVER.BEST_CHECKPOINT.METRIC`` is set: then
    :class:`AnchorFreeBestCheckpointer` runs."""
    return bool(cfg.SOLVER.BEST_CHECKPOINT.METRIC) and cfg.TEST.EVAL_PERIOD > 0 and len(cfg.DATASETS.TEST) > 0


def check_best_checkpoint_config(cfg) -> None:
    """Reject ``SOLVER.BEST_CHECKPOINT`` / ``SOLVER.EARLY_STOP`` values that cannot work, naming
    the key: ``MODE`` not "max"/"min"; ``METRIC`` not a string; ``PATIENCE`` not an int >= 0;
    ``PATIENCE`` > 0 without periodic evaluation or without a metric (it would never stop).
    Whether the evaluator produces ``METRIC`` (:func:`best_checkpoint_metric`) is checked at
    the first evaluation (:class:`AnchorFreeBestCheckpointer`).

    Raises:
        ValueError: naming the first offending key and its value.
    """
    best, patience = cfg.SOLVER.BEST_CHECKPOINT, cfg.SOLVER.EARLY_STOP.PATIENCE
    if best.MODE not in ("max", "min"):
        raise ValueError(f"SOLVER.BEST_CHECKPOINT.MODE = {best.MODE!r}: must be \"max\" (higher is better) or \"min\"")
    if not isinstance(best.METRIC, str):
        raise ValueError(f"SOLVER.BEST_CHECKPOINT.METRIC = {best.METRIC!r}: must be a result name such as \"bbox/AP\", "
                         "or \"\" (off)")
    if not (is_whole_number(patience) and patience >= 0):
        raise ValueError(f"SOLVER.EARLY_STOP.PATIENCE = {patience!r}: must be an integer >= 0 (evaluations "
                         "without improvement before training stops; 0 = never stop early)")
    if patience > 0 and not best_checkpoint_enabled(cfg):
        raise ValueError(
            f"SOLVER.EARLY_STOP.PATIENCE = {patience} needs evaluations during training to watch: set "
            f"TEST.EVAL_PERIOD > 0 (now {cfg.TEST.EVAL_PERIOD}), a DATASETS.TEST (now {tuple(cfg.DATASETS.TEST)}) "
            f"and SOLVER.BEST_CHECKPOINT.METRIC (now {best.METRIC!r})")


def best_checkpoint_metric(cfg) -> str:
    """The result name the best checkpoint watches: ``SOLVER.BEST_CHECKPOINT.METRIC``; with
    several ``DATASETS.TEST`` (detectron2 then names the results ``<dataset>/<metric>``) a metric
    not prefixed by one of them is the first test dataset's (``<DATASETS.TEST[0]>/<metric>``)."""
    metric, tests = cfg.SOLVER.BEST_CHECKPOINT.METRIC, tuple(cfg.DATASETS.TEST)
    if len(tests) > 1 and not metric.startswith(tuple(t + "/" for t in tests)):
        return f"{tests[0]}/{metric}"
    return metric


def _fold_evaluations(evaluations, better):
    """(best value, its iteration, evaluations since it without improvement) after ``evaluations``
    [(iteration, value)]; a non-finite value never improves (as detectron2's ``BestCheckpointer``)."""
    best, best_iter, bad = None, None, 0
    for iteration, value in evaluations:
        if math.isfinite(value) and (best is None or better(value, best)):
            best, best_iter, bad = value, iteration, 0
        else:
            bad += 1
    return best, best_iter, bad


class AnchorFreeBestCheckpointer(BestCheckpointer):
    """detectron2's ``BestCheckpointer`` (after every periodic evaluation, save
    ``model_best.pth`` when ``val_metric`` improved, through the trainer's checkpointer: atomic
    with ``AnchorFreeCheckpointer``) with early stopping and a state that survives ``--resume``.

    * After each evaluation (the iterations of detectron2's ``EvalHook``, and its final one) the
      value is recorded; strictly better than the best so far (a finite value; "max" or "min")
      writes ``model_best.pth`` (a full checkpoint, as detectron2's, with the history in its
      ``"best_checkpoint"`` entry; ``last_checkpoint`` keeps naming the periodic checkpoints, so
      ``--resume`` continues from the newest state, not from the best one). Every evaluation is
      appended to ``best_checkpoint.json`` (atomic rewrite).
    * ``patience`` > 0: after ``patience`` evaluations in a row without improvement, write
      ``model_final.pth`` at this iteration, log why and raise :class:`EarlyStop`
      (``AnchorFreeTrainer.train`` returns normally). That evaluation is the final one.
    * Resume: the state is that after every evaluation before the resumed iteration, read from
      ``best_checkpoint.json`` or ``model_best.pth``, whichever has the later evaluation (a
      checkpoint saved at an evaluation iteration precedes that evaluation, so the trainer
      checkpoint alone would miss it; the two files are written one after the other). A new run
      writes a new run id into ``best_checkpoint.json`` first, so that the files of an earlier
      run in the same folder are never restored. A resumed run that had already stopped early
      stops again before training.
    * An evaluation whose results lack ``val_metric`` raises ``ValueError`` listing the names
      they have (so the first one does, when the name is wrong).

    Decisions are made on the main process and shared with the others (DDP).

    Args:
        eval_period: ``TEST.EVAL_PERIOD`` (> 0), the period of the ``EvalHook`` this follows.
        checkpointer: the trainer's ``AnchorFreeCheckpointer`` (its ``save_dir`` holds the files).
        val_metric: a flattened result name, e.g. "bbox/AP" (``SOLVER.BEST_CHECKPOINT.METRIC``).
        mode: "max" or "min" (``SOLVER.BEST_CHECKPOINT.MODE``).
        patience: evaluations without improvement before stopping, >= 0 (0 = never;
            ``SOLVER.EARLY_STOP.PATIENCE``).
        latest_results: callable returning the latest evaluation results (the nested dict of
            ``DefaultTrainer.test``; empty on non-main processes).

    Raises:
        ValueError: a bad ``mode`` or ``patience`` (constructor); a ``val_metric`` the evaluation
            does not produce (first evaluation).
    """

    STATE_FILE = "best_checkpoint.json"

    def __init__(self, eval_period: int, checkpointer, val_metric: str, mode: str = "max", patience: int = 0,
                 latest_results: Callable[[], dict] = dict):
        if mode not in ("max", "min"):
            raise ValueError(f"SOLVER.BEST_CHECKPOINT.MODE = {mode!r}: must be \"max\" or \"min\"")
        if not (isinstance(patience, int) and patience >= 0):
            raise ValueError(f"SOLVER.EARLY_STOP.PATIENCE = {patience!r}: must be an integer >= 0")
        super().__init__(eval_period, checkpointer, val_metric, mode=mode)
        self._logger = logging.getLogger(__name__)
        self._mode = mode
        self._patience = patience
        self._latest_results = latest_results
        self._evaluations: List[Tuple[int, float]] = []
        self.evaluations_without_improvement = 0
        self._run = uuid.uuid4().hex

    # ---- state
    def _record(self, iteration: int, value: float) -> bool:
        self._evaluations.append((iteration, value))
        before = self.best_metric
        self.best_metric, self.best_iter, self.evaluations_without_improvement = _fold_evaluations(
            self._evaluations, self._compare)
        return self.best_metric is not None and (before is None or self._compare(self.best_metric, before))

    def state(self) -> dict:
        """The run's id (random, kept on resume), the metric, mode, best value and iteration, the evaluations since the best without
        improvement, and every evaluation as [iteration, value] (what ``best_checkpoint.json``
        holds)."""
        return {"run": self._run, "metric": self._val_metric, "mode": self._mode, "best_value": self.best_metric,
                "best_iteration": self.best_iter,
                "evaluations_without_improvement": self.evaluations_without_improvement,
                "evaluations": [list(e) for e in self._evaluations]}

    def _path(self, name: str) -> str:
        return os.path.join(self._checkpointer.save_dir, name)

    def _read_saved_states(self):
        """(best_checkpoint.json's state, model_best.pth's), each None when absent or unreadable."""
        json_path, best_path = self._path(self.STATE_FILE), self._path(f"{self._file_prefix}.pth")
        states = []
        for path in (json_path, best_path):
            try:
                if not os.path.isfile(path):
                    states.append(None)
                elif path == json_path:
                    with open(path) as f:
                        states.append(json.load(f))
                else:  # mmap: only the small pickled part is read, not the weights
                    states.append(torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("best_checkpoint"))
            except Exception as e:  # noqa: BLE001  an unreadable file: go on without it
                self._logger.warning("cannot read the best-checkpoint state from %s (%s: %s)", path, type(e).__name__, e)
                states.append(None)
        return states

    def _restore(self, start_iter: int) -> None:
        """The state after the evaluations before ``start_iter`` (0: a new run, whose id is written
        to best_checkpoint.json at once, so that files of an earlier run in the folder are not
        taken for this run's)."""
        self._evaluations = []
        self.best_metric, self.best_iter, self.evaluations_without_improvement = None, None, 0
        saved, best = self._read_saved_states() if start_iter > 0 else (None, None)
        self._run = (saved or best or {}).get("run") or uuid.uuid4().hex
        histories = [s["evaluations"] for s in (saved, best) if s and s.get("run") == self._run
                     and s.get("metric") == self._val_metric and s.get("evaluations")]
        if not histories:
            self._write_state()
            return
        newest = max(histories, key=lambda h: (h[-1][0], len(h)))
        for iteration, value in newest:
            if iteration < start_iter:  # later evaluations run again
                self._record(int(iteration), float(value))
        self._logger.info("Best checkpoint: %d evaluations restored; best %s = %s at iteration %s, %d evaluations "
                          "since without improvement", len(self._evaluations), self._val_metric, self.best_metric,
                          self.best_iter, self.evaluations_without_improvement)

    # ---- evaluation
    def _latest_value(self) -> float:
        results = flatten_results_dict(self._latest_results() or {})
        if self._val_metric not in results:
            raise ValueError(
                f"SOLVER.BEST_CHECKPOINT.METRIC = {self._val_metric!r} is not among the evaluation results "
                f"{sorted(results)}; set one of them (or \"\" to turn best checkpoints and early stopping off)")
        return float(results[self._val_metric])

    def _write_state(self) -> None:
        os.makedirs(self._checkpointer.save_dir, exist_ok=True)
        atomic_write(self._path(self.STATE_FILE), lambda f: json.dump(self.state(), f, indent=1), binary=False)

    def _check_evaluation(self, iteration: int) -> bool:
        """Record the evaluation of the weights after ``iteration`` (main process), save
        ``model_best.pth`` if it improved; returns whether to stop (the same on every process)."""
        stop = False
        if comm.is_main_process() and not (self._evaluations and self._evaluations[-1][0] == iteration):
            value = self._latest_value()
            if self._record(iteration, value):
                self._checkpointer.save(self._file_prefix, iteration=iteration, best_checkpoint=self.state(),
                                        tag_last=False)
                self._logger.info("%s = %.5f at iteration %d: the best so far, saved %s.pth",
                                  self._val_metric, value, iteration, self._file_prefix)
            else:
                self._logger.info("%s = %.5f at iteration %d: not better than %s at iteration %s (%d evaluations "
                                  "without improvement)", self._val_metric, value, iteration, self.best_metric,
                                  self.best_iter, self.evaluations_without_improvement)
            self._write_state()
            stop = self._should_stop()
        return comm.all_gather(stop)[0]

    def _should_stop(self) -> bool:
        return self._patience > 0 and self.evaluations_without_improvement >= self._patience

    def _why(self) -> str:
        return (f"{self._val_metric} did not improve in the last {self.evaluations_without_improvement} "
                f"evaluations (SOLVER.EARLY_STOP.PATIENCE = {self._patience}; best {self.best_metric} at "
                f"iteration {self.best_iter}, in {self._file_prefix}.pth)")

    # ---- hook
    def before_train(self):
        if comm.is_main_process():
            self._restore(self.trainer.iter)
        if comm.all_gather(self._should_stop())[0]:
            message = f"Early stopping: this run already stopped, {self._why()}; nothing to train"
            self._logger.info(message)
            raise EarlyStop(message)

    def after_step(self):
        next_iter = self.trainer.iter + 1  # EvalHook's schedule: the last evaluation is in after_train
        if next_iter % self._period == 0 and next_iter != self.trainer.max_iter:
            if self._check_evaluation(self.trainer.iter):
                self._checkpointer.save("model_final", iteration=self.trainer.iter)
                message = f"Early stopping at iteration {self.trainer.iter}: {self._why()}; saved model_final.pth"
                self._logger.info(message)
                raise EarlyStop(message)

    def after_train(self):
        if self.trainer.iter + 1 >= self.trainer.max_iter:  # EvalHook evaluated the final weights
            self._check_evaluation(self.trainer.max_iter - 1)

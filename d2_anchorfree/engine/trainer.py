"""``AnchorFreeTrainer`` (detectron2 ``DefaultTrainer`` + our data layer) and ``setup_cfg``."""
import logging
import os
import weakref

import torch

from detectron2.config import get_cfg
from detectron2.data import build_detection_test_loader
from detectron2.engine import DefaultTrainer, TrainerBase, default_setup
from detectron2.engine.hooks import EvalHook, PeriodicWriter
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .. import compat
from ..checkpoint import AnchorFreeCheckpointer, dataset_classes
from ..config import add_anchorfree_config
from ..data import (CheckedDatasetMapper, build_train_mapper, check_mosaic_config, check_num_classes,
                    check_hsv_config, check_scale_jitter_config, config_at_iteration, mosaic_close_iter,
                    register_datasets_from_config)
from ..evaluation import AnchorFreeCOCOEvaluator
from ..inference import build_inference_model, needs_full_resolution
from ..modeling.layout import to_channels_last
from .clipping import CLIP_TYPES, add_gradient_clipping
from .ema import ModelEMA, ModelEMAHook, check_model_ema_config
from .health import TrainingHealthCheck, check_solver_config
from .optimizer import build_optimizer, check_optimizer_config
from .report import EvaluationReportHook, check_report_config
from .hooks import (AnchorFreeBestCheckpointer, CloseMosaicHook, CriterionIterationHook, EarlyStop,
                    best_checkpoint_enabled, best_checkpoint_metric, check_best_checkpoint_config)
from .resumable_loader import build_resumable_train_loader, check_sampler_config, train_dataset_dicts

logger = logging.getLogger("d2_anchorfree")


def setup_cfg(args, *, default_setup_logging: bool = True):
    """Build the config from ``default_argument_parser`` args (``--config-file`` and ``opts``).

    Adds d2_anchorfree's keys, merges the YAML and the command-line opts, falls back to the CPU
    (with a warning) when the config asks for CUDA and none is available, registers the
    COCO-format datasets listed in ``DATASETS.REGISTER_COCO`` and freezes the config. With
    ``default_setup_logging``, detectron2's ``default_setup`` (logging, the config saved to
    ``OUTPUT_DIR``, seeds) and the "d2_anchorfree" logger (console and ``OUTPUT_DIR/log.txt``).

    Raises:
        FileNotFoundError: the config file does not exist (named in the message).
        KeyError: an unknown config key (yacs: "Non-existent config key: ...").
    """
    cfg = get_cfg()
    add_anchorfree_config(cfg)
    if args.config_file:
        if not os.path.isfile(args.config_file):
            raise FileNotFoundError(f"config file not found: {args.config_file}")
        cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("MODEL.DEVICE=%s but CUDA is not available: using cpu", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    register_datasets_from_config(cfg)
    if default_setup_logging:
        default_setup(cfg, args)  # logs "detectron2" and "fvcore" to the console and OUTPUT_DIR/log.txt
        # ... and ours, which log under "d2_anchorfree" (kept propagating to the root logger, so that
        # handlers put there, e.g. by pytest, still see them).
        setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="d2_anchorfree",
                     abbrev_name="d2af").propagate = True
    return cfg


class AnchorFreeTrainer(DefaultTrainer):
    """detectron2's ``DefaultTrainer`` (SGD, LR schedule, periodic checkpoints every
    ``SOLVER.CHECKPOINT_PERIOD``, TensorBoard + JSON metrics, ``--resume``) with:

    * ``MODEL.*.NUM_CLASSES`` checked against the training datasets' class count;
    * solver values checked up front (:func:`check_solver_config`), and a
      :class:`TrainingHealthCheck` hook that stops the run, naming the iteration, when weights or
      gradients become non-finite or the weights explode (``SOLVER.HEALTH_CHECK``);
    * :class:`AnchorFreeCheckpointer`: atomic checkpoint files (a killed save never truncates
      ``model_final.pth``), a resume that falls back to the previous complete checkpoint, and
      initial weights that must set most of the model; every checkpoint holds the training
      data's class names and category ids (``"classes"``), so prediction and export need no dataset;
    * data loaders whose mapper reports unreadable images by file name, and the optional mosaic
      augmentation (``INPUT.MOSAIC``, ``data.MosaicDatasetMapper``; its keys checked up front),
      turned off for the last ``INPUT.MOSAIC.CLOSE_ITERS`` iterations (``hooks.CloseMosaicHook``);
    * exact resume: ``--resume`` restores model, optimizer, LR scheduler and iteration and
      continues the training data stream, augmentations included, where the checkpoint left
      off (see ``resumable_loader``), with the sampler of ``DATALOADER.SAMPLER_TRAIN``
      (``TrainingSampler``, ``RepeatFactorTrainingSampler``, ``RandomSubsetTrainingSampler``).
      detectron2 v0.6's ``DefaultTrainer`` leaves the optimizer (SGD momentum) and AMP's grad
      scaler out of its checkpoints; ``state_dict`` puts them back, and checkpoints are the same
      on detectron2 v0.6 and main;
    * with periodic evaluation, ``model_best.pth`` for the best ``SOLVER.BEST_CHECKPOINT.METRIC``
      and early stopping after ``SOLVER.EARLY_STOP.PATIENCE`` evaluations without improvement
      (:class:`~.hooks.AnchorFreeBestCheckpointer`; :meth:`train` then returns normally);
    * model EMA (``MODEL_EMA.ENABLED``, :class:`~.ema.ModelEMA`): an exponential moving average
      of the weights, updated after every step, is what the periodic and final evaluations run
      and what every checkpoint stores as ``"model"`` (``model_final.pth``, ``model_best.pth``,
      the periodic ones), so prediction and export use it; the trained weights (``"model_raw"``)
      and the update count (``"ema"``) make ``--resume`` exact for both;
    * the model's training criterion told the iteration of every step
      (:class:`~.hooks.CriterionIterationHook`: TOOD's warm-up phase, resumed with the run);
    * ``SOLVER.AMP.PRECISION`` ("float16" or, on detectron2 main, "bfloat16") for AMP;
    * ``SOLVER.CLIP_GRADIENTS`` clipped per parameter as detectron2 does, in batched calls
      (:mod:`~.clipping`: bitwise the same gradients; the real-time GFL's optimizer step 26 -> 10 ms on the CPU);
    * ``COCOEvaluator`` with ``maxDets = [1, 10, TEST.COCO_MAX_DETS_PER_IMAGE]`` and the
      fastest COCOeval that gives pycocotools' numbers: detectron2's C++ one with
      ``detectron2._C``, else faster-coco-eval when installed, else pycocotools
      (``d2_anchorfree.evaluation.AnchorFreeCOCOEvaluator``);
    * after the final evaluation, the evaluation report of every test dataset (``TEST.REPORT``:
      ``OUTPUT_DIR/report/<dataset>/``) and the best-F1 score threshold beside ``model_final.pth``
      (:class:`~.report.EvaluationReportHook`);
    * evaluation of sliced inference (``TEST.SLICE.ENABLED``) and test-time augmentation
      (``TEST.AUG.ENABLED``) for every detector: :meth:`test` wraps the model with
      ``d2_anchorfree.inference.build_inference_model`` and the test loader then gives the images
      at full resolution.
    """

    def __init__(self, cfg):
        check_solver_config(cfg)
        check_optimizer_config(cfg)
        check_sampler_config(cfg)
        check_best_checkpoint_config(cfg)
        check_report_config(cfg)
        check_model_ema_config(cfg)
        check_mosaic_config(cfg)
        check_scale_jitter_config(cfg)
        check_hsv_config(cfg)
        super().__init__(cfg)
        check_num_classes(cfg)  # after the loader: the training datasets' metadata is filled
        compat.set_amp_precision(self._trainer, cfg.SOLVER.AMP.PRECISION)  # SOLVER.AMP.ENABLED only

    def build_hooks(self):
        # DefaultTrainer.__init__ made a plain DetectionCheckpointer; swap in ours before the
        # PeriodicCheckpointer hook is built around it. The train loader has filled the training
        # datasets' metadata by now: their class names go into every checkpoint. The model EMA
        # (a copy of the model) is made here too, since the checkpointer stores it.
        self.model_ema = ModelEMA(self.cfg, self.model) if self.cfg.MODEL_EMA.ENABLED else None
        self.checkpointer = AnchorFreeCheckpointer(
            self.checkpointer.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self),
            classes=dataset_classes(self.cfg.DATASETS.TRAIN), ema=self.model_ema, training=True)
        hooks = super().build_hooks()
        # DefaultTrainer's EvalHook evaluates self.model; ours evaluates inference_model (the EMA).
        evaluation = next(i for i, h in enumerate(hooks) if isinstance(h, EvalHook))
        hooks[evaluation] = EvalHook(self.cfg.TEST.EVAL_PERIOD, self._test_and_save_results)
        if best_checkpoint_enabled(self.cfg):  # right after the EvalHook, whose results it reads
            best = self.cfg.SOLVER.BEST_CHECKPOINT
            hooks.insert(evaluation + 1, AnchorFreeBestCheckpointer(
                self.cfg.TEST.EVAL_PERIOD, self.checkpointer, best_checkpoint_metric(self.cfg), mode=best.MODE,
                patience=self.cfg.SOLVER.EARLY_STOP.PATIENCE,
                latest_results=lambda: getattr(self, "_last_eval_results", None) or {}))
        if self.cfg.TEST.REPORT.ENABLED:  # after the final evaluation, before the writer's last write
            writer = next((i for i, h in enumerate(hooks) if isinstance(h, PeriodicWriter)), len(hooks))
            hooks.insert(writer, EvaluationReportHook())
        hooks.insert(0, CriterionIterationHook())  # the training phase of each step
        close = mosaic_close_iter(self.cfg)
        if close is not None:  # INPUT.MOSAIC.CLOSE_ITERS: plain images for the last iterations
            hooks.insert(0, CloseMosaicHook(close, lambda start: self.build_train_loader(self.cfg, start_iter=start)))
        if self.model_ema is not None:  # before the checkpointer and the evaluation, which use it
            hooks.insert(0, ModelEMAHook(self.model_ema))
        health = self.cfg.SOLVER.HEALTH_CHECK
        if health.ENABLED:  # first, so that exploded weights are never checkpointed
            hooks.insert(0, TrainingHealthCheck(health.MAX_WEIGHT_NORM_GROWTH))
        return hooks

    @property
    def inference_model(self):
        """The model that evaluation runs and checkpoints store as ``"model"``: the EMA's averaged
        copy with ``MODEL_EMA.ENABLED``, else the trained model (``self.model``)."""
        return self.model if self.model_ema is None else self.model_ema.module

    def _test_and_save_results(self):
        self._last_eval_results = self.test(self.cfg, self.inference_model)
        return self._last_eval_results

    def train(self):
        """``DefaultTrainer.train``; a run ended by early stopping (:class:`~.hooks.EarlyStop`,
        after ``model_final.pth`` was written and the reason logged) returns None, as a run
        without ``TEST.EXPECTED_RESULTS`` does."""
        try:
            return super().train()
        except EarlyStop:
            return None

    @classmethod
    def build_model(cls, cfg):
        """detectron2's ``build_model`` (the ``MODEL.META_ARCHITECTURE``, on ``MODEL.DEVICE``), with
        ``MODEL.CHANNELS_LAST`` applied to every meta-architecture: d2_anchorfree's detectors store
        their weights channels-last themselves, detectron2's (``RetinaNet``) are converted here
        (:func:`~d2_anchorfree.modeling.layout.to_channels_last`).

        Raises:
            ValueError: ``MODEL.CHANNELS_LAST`` is not a bool.
        """
        return to_channels_last(super().build_model(cfg), cfg.MODEL.CHANNELS_LAST)

    @classmethod
    def build_optimizer(cls, cfg, model):
        """The optimizer of ``SOLVER.OPTIMIZER`` (:func:`~.optimizer.build_optimizer`: detectron2's
        SGD, or AdamW, over detectron2's ``get_default_optimizer_params``); with
        ``SOLVER.CLIP_GRADIENTS.ENABLED`` its per-parameter clipping is done in batched calls
        (:func:`~.clipping.add_gradient_clipping`: the same clipped gradients bit for bit, without
        ten small operations per parameter tensor on every step). A ``CLIP_TYPE`` other than
        "norm"/"value" is rejected by detectron2 (SGD) or by ``add_gradient_clipping`` (AdamW)."""
        clip = cfg.SOLVER.CLIP_GRADIENTS
        if cfg.SOLVER.OPTIMIZER == "SGD" and not (clip.ENABLED and clip.CLIP_TYPE in CLIP_TYPES):
            return super().build_optimizer(cfg, model)
        plain = cfg.clone()
        plain.defrost()
        plain.SOLVER.CLIP_GRADIENTS.ENABLED = False
        optimizer = build_optimizer(plain, model)
        return add_gradient_clipping(optimizer, clip) if clip.ENABLED else optimizer

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0):
        """The resumable training loader (``resumable_loader``) from iteration ``start_iter`` with the
        training mapper of ``cfg`` (``data.build_train_mapper``: the mosaic one with
        ``INPUT.MOSAIC.ENABLED``, drawing its other images from the same training dicts; the plain
        one from the ``INPUT.MOSAIC.CLOSE_ITERS`` point on, ``data.config_at_iteration``)."""
        dicts = train_dataset_dicts(cfg)
        mapper = build_train_mapper(config_at_iteration(cfg, start_iter), dicts)
        return build_resumable_train_loader(cfg, mapper, start_iter, dataset_dicts=dicts)

    def state_dict(self):
        # TrainerBase's (iteration, hooks), not DefaultTrainer's: detectron2 main's adds
        # "_trainer" itself, v0.6's does not; this way both versions write the same checkpoint.
        state = TrainerBase.state_dict(self)
        # SimpleTrainer: the optimizer; AMPTrainer: the optimizer and the grad scaler.
        state["_trainer"] = self._trainer.state_dict()
        return state

    def load_state_dict(self, state_dict):
        # TrainerBase's, not DefaultTrainer's: detectron2 main's reads state_dict["_trainer"]
        # unconditionally (a KeyError for checkpoints written by v0.6's DefaultTrainer).
        TrainerBase.load_state_dict(self, state_dict)
        if "_trainer" in state_dict:  # absent in checkpoints written by a plain DefaultTrainer
            self._trainer.load_state_dict(state_dict["_trainer"])

    def resume_or_load(self, resume=True):
        """Load weights (new run) or the last checkpoint (``resume``); on resume, restart the
        data stream at the checkpoint's iteration."""
        super().resume_or_load(resume=resume)
        loaded = os.path.basename(self.checkpointer.loaded_path)
        if resume and self.start_iter >= self.max_iter and loaded != "model_final.pth":
            # Killed after the last periodic checkpoint but before model_final was written:
            # nothing is left to train, so write model_final from the checkpoint now.
            self.checkpointer.save("model_final", iteration=self.start_iter - 1)
        if self.start_iter > 0:
            loader = self.build_train_loader(self.cfg, start_iter=self.start_iter)
            compat.replace_train_loader(self._trainer, loader)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """detectron2's test loader with our mapper; without the test resize when sliced inference
        or TTA resize the windows / augmentations themselves (``inference.needs_full_resolution``)."""
        mapper_args = CheckedDatasetMapper.from_config(cfg, is_train=False)
        if needs_full_resolution(cfg):
            mapper_args["augmentations"] = []
        return build_detection_test_loader(cfg, dataset_name, mapper=CheckedDatasetMapper(**mapper_args))

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """``DefaultTrainer.test`` of ``build_inference_model(cfg, model)``: plain, sliced
        (``TEST.SLICE.ENABLED``) and/or TTA (``TEST.AUG.ENABLED``) inference, evaluated on
        ``DATASETS.TEST`` in original-image pixels."""
        return super().test(cfg, build_inference_model(cfg, model), evaluators)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return AnchorFreeCOCOEvaluator(
            dataset_name, tasks=("bbox",), distributed=True, output_dir=output_folder,
            max_dets_per_image=cfg.TEST.COCO_MAX_DETS_PER_IMAGE,
        )

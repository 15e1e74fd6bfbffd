"""What depends on the detectron2 version or on optional packages, in one place.

Tested: detectron2 v0.6 (its Python sources, ``pb1-detectron2==0.6``, without ``detectron2._C``)
and detectron2 main at commit 02b5c4e (June 2026) built with ``detectron2._C`` (see the README).
Where the two differ for us:

* **Compiled ops.** Only main here has ``detectron2._C``; it gives detectron2's C++ COCOeval
  (``COCOeval_opt``). :func:`coco_eval_backend` picks the evaluation implementation from what is
  importable (see ``d2_anchorfree.evaluation``).
* **AMP precision.** main's ``AMPTrainer`` takes ``precision`` (``torch.bfloat16`` possible);
  v0.6's always autocasts to float16. :func:`set_amp_precision` applies
  ``SOLVER.AMP.PRECISION`` and refuses bfloat16 on v0.6.
* **Trainer state.** main's ``DefaultTrainer.state_dict`` stores ``_trainer`` (optimizer, grad
  scaler) itself and its ``load_state_dict`` reads ``state_dict["_trainer"]`` unconditionally
  (a KeyError for checkpoints without it); v0.6's stores neither. ``AnchorFreeTrainer`` calls
  ``TrainerBase``'s methods directly and handles ``_trainer`` itself, so both versions write and
  read the same checkpoints (no version test needed there).
* **Train loader iterator.** main's ``SimpleTrainer`` creates its data iterator lazily (a
  read-only ``_data_loader_iter`` property); v0.6's sets it in the constructor.
  :func:`replace_train_loader` swaps the loader on both (exact resume).
* **Failed checkpoint loads.** main's ``DetectionCheckpointer.load`` asserts on entry that no
  load is in progress and clears that state only on success, so after one corrupt file every
  later ``load`` fails with a bare AssertionError; :func:`reset_failed_checkpoint_load` clears it
  (resume falling back to the previous checkpoint).
* **Repeat factors.** main's ``RepeatFactorTrainingSampler.repeat_factors_from_category_frequency``
  takes ``sqrt`` (``DATALOADER.REPEAT_SQRT``, default True: ``max(1, sqrt(t / f))``; False:
  ``max(1, t / f)``); v0.6's always takes the square root and has no such key.
  ``add_engine_config`` adds the key where detectron2 lacks it, and
  :func:`repeat_factors_from_category_frequency` refuses ``False`` on v0.6 (:func:`check_repeat_sqrt`).
  ``DATALOADER.RANDOM_SUBSET_RATIO``, which both versions' loaders read for
  ``RandomSubsetTrainingSampler``, is in neither version's defaults; ``add_engine_config`` adds it.
* **Prefetching.** main's ``build_batch_data_loader`` takes ``prefetch_factor`` (torch
  ``DataLoader``'s); v0.6's leaves torch's default, 2 items per worker, which with aspect-ratio
  grouping means 2 images, not 2 batches. :func:`build_batch_data_loader` passes it on main and
  sets it on v0.6's ``DataLoader`` before the first iterator is made.
* **DenseDetector.** main pads with ``backbone.padding_constraints`` and adds tracing helpers;
  our detectors use ``DenseDetector`` only through its constructor, ``forward`` and
  ``preprocess_image``, which behave the same for our backbones on both versions.
"""
import functools
import importlib
import inspect

import torch

COCO_EVAL_BACKENDS = ("detectron2_C", "faster_coco_eval", "pycocotools")
AMP_PRECISIONS = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@functools.lru_cache(maxsize=None)
def has_module(name: str) -> bool:
    """True when ``import name`` succeeds (cached). Any ImportError (e.g. a compiled extension
    built against another torch) counts as absent."""
    try:
        importlib.import_module(name)
        return True
    except ImportError:
        return False


def detectron2_has_C() -> bool:
    """True when detectron2's compiled ops (``detectron2._C``) import in this environment."""
    return has_module("detectron2._C")


def coco_eval_backend(max_dets_per_image: int = 100) -> str:
    """The COCO bbox evaluation implementation to use, fastest first among those that give
    pycocotools' numbers:

    1. ``"detectron2_C"``: detectron2's C++ ``COCOeval_opt`` (``COCOEvaluator(use_fast_impl=True)``),
       when ``detectron2._C`` imports and ``max_dets_per_image == 100``: for another value
       detectron2 itself switches to its pycocotools-based ``COCOevalMaxDets``;
    2. ``"faster_coco_eval"``: the ``faster-coco-eval`` package (C++ evaluate/accumulate), when
       installed; its numbers equal pycocotools' (``benchmarks/cocoeval.py``);
    3. ``"pycocotools"``: COCO's official Python implementation.

    Args:
        max_dets_per_image: the last ``maxDets`` of the evaluation (``TEST.COCO_MAX_DETS_PER_IMAGE``).
    """
    if detectron2_has_C() and max_dets_per_image == 100:
        return "detectron2_C"
    if has_module("faster_coco_eval"):
        return "faster_coco_eval"
    return "pycocotools"


def amp_trainer_takes_precision() -> bool:
    """True when detectron2's ``AMPTrainer`` has a ``precision`` argument (main; not v0.6)."""
    from detectron2.engine import AMPTrainer

    return "precision" in inspect.signature(AMPTrainer.__init__).parameters


def set_amp_precision(trainer_loop, precision: str) -> None:
    """Make an ``AMPTrainer`` autocast to ``precision`` (``SOLVER.AMP.PRECISION``).

    Args:
        trainer_loop: the trainer's inner loop (``DefaultTrainer._trainer``); nothing is done
            unless it is an ``AMPTrainer`` (``SOLVER.AMP.ENABLED``).
        precision: "float16" (the default, both versions) or "bfloat16" (detectron2 main only).

    Raises:
        ValueError: an unknown precision, or "bfloat16" with a detectron2 whose ``AMPTrainer``
            has no ``precision`` (v0.6), naming the value.
    """
    if precision not in AMP_PRECISIONS:
        raise ValueError(f"SOLVER.AMP.PRECISION must be one of {sorted(AMP_PRECISIONS)}, got {precision!r}")
    from detectron2.engine import AMPTrainer

    if not isinstance(trainer_loop, AMPTrainer):
        return
    if not amp_trainer_takes_precision():
        if precision != "float16":
            raise ValueError(
                f"SOLVER.AMP.PRECISION={precision!r} needs a detectron2 whose AMPTrainer takes "
                "`precision` (main after v0.6); this one autocasts to float16 only")
        return
    trainer_loop.precision = AMP_PRECISIONS[precision]


def replace_train_loader(trainer_loop, data_loader) -> None:
    """Make ``trainer_loop`` (a ``SimpleTrainer`` / ``AMPTrainer``) read its next batches from
    ``data_loader``. detectron2 main creates the iterator lazily (``_data_loader_iter`` is a
    read-only property over ``_data_loader_iter_obj``); v0.6 creates it in the constructor as a
    plain attribute."""
    trainer_loop.data_loader = data_loader
    if isinstance(getattr(type(trainer_loop), "_data_loader_iter", None), property):
        trainer_loop._data_loader_iter_obj = None  # main: re-created from data_loader on first use
    else:
        trainer_loop._data_loader_iter = iter(data_loader)


def build_batch_data_loader(dataset, sampler, total_batch_size: int, *, aspect_ratio_grouping: bool,
                            num_workers: int, prefetch_factor: int):
    """detectron2's ``build_batch_data_loader`` whose ``DataLoader`` loads ``prefetch_factor`` items
    ahead per worker (images with aspect-ratio grouping, else batches); ignored with
    ``num_workers`` 0. main takes the argument; on v0.6 it is set on the ``DataLoader`` (inside
    ``AspectRatioGroupedDataset`` with grouping) after construction, which torch allows and reads
    when an iterator is made.

    Returns:
        what detectron2's function returns (an iterable of lists of dataset items).

    Raises:
        ValueError: ``prefetch_factor`` < 1 with workers.
    """
    from detectron2.data.build import build_batch_data_loader as build
    from torch.utils.data import DataLoader

    if num_workers > 0 and prefetch_factor < 1:
        raise ValueError(f"prefetch_factor = {prefetch_factor}: must be >= 1 with data-loader workers")
    kwargs = dict(aspect_ratio_grouping=aspect_ratio_grouping, num_workers=num_workers)
    takes_it = "prefetch_factor" in inspect.signature(build).parameters
    if takes_it and num_workers > 0:
        kwargs["prefetch_factor"] = prefetch_factor
    loader = build(dataset, sampler, total_batch_size, **kwargs)
    if not takes_it and num_workers > 0:
        torch_loader = loader if isinstance(loader, DataLoader) else loader.dataset  # AspectRatioGroupedDataset
        if not isinstance(torch_loader, DataLoader):
            raise TypeError(f"cannot find the DataLoader in detectron2's training loader ({type(loader).__name__})")
        torch_loader.prefetch_factor = prefetch_factor
    return loader


def repeat_factors_take_sqrt() -> bool:
    """True when detectron2's ``repeat_factors_from_category_frequency`` has a ``sqrt`` argument
    (main; not v0.6)."""
    from detectron2.data.samplers import RepeatFactorTrainingSampler

    return "sqrt" in inspect.signature(RepeatFactorTrainingSampler.repeat_factors_from_category_frequency).parameters


def check_repeat_sqrt(sqrt) -> None:
    """Refuse a ``DATALOADER.REPEAT_SQRT`` that this detectron2 cannot apply.

    Args:
        sqrt: the key's value; True (default, both versions) or False (detectron2 main only).

    Raises:
        ValueError: not a bool, or False with detectron2 v0.6 (whose repeat factors always take
            the square root), naming the key and value.
    """
    if not isinstance(sqrt, bool):
        raise ValueError(f"DATALOADER.REPEAT_SQRT must be True or False, got {sqrt!r}")
    if not sqrt and not repeat_factors_take_sqrt():
        raise ValueError(
            "DATALOADER.REPEAT_SQRT = False needs a detectron2 whose repeat_factors_from_category_frequency "
            "takes `sqrt` (main after v0.6); this one always uses max(1, sqrt(REPEAT_THRESHOLD / frequency))")


def repeat_factors_from_category_frequency(dataset_dicts, repeat_thresh: float, sqrt: bool = True) -> torch.Tensor:
    """detectron2's ``RepeatFactorTrainingSampler.repeat_factors_from_category_frequency`` on
    either version: per image ``max(1, g(repeat_thresh / f_c))`` maximised over the image's
    categories c, ``f_c`` the fraction of images containing c, ``g`` = sqrt (or the identity with
    ``sqrt=False``, main only); 1 for images without annotations.

    Args:
        dataset_dicts: detectron2 dataset dicts with ``annotations`` (``category_id``).
        repeat_thresh: the frequency threshold t (> 0).
        sqrt: ``DATALOADER.REPEAT_SQRT``.

    Returns:
        float32 tensor [len(dataset_dicts)] of repeat factors >= 1.

    Raises:
        ValueError: ``sqrt=False`` on detectron2 v0.6 (:func:`check_repeat_sqrt`).
    """
    from detectron2.data.samplers import RepeatFactorTrainingSampler

    check_repeat_sqrt(sqrt)
    compute = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency
    if repeat_factors_take_sqrt():
        return compute(dataset_dicts, repeat_thresh, sqrt=sqrt)
    return compute(dataset_dicts, repeat_thresh)


def reset_failed_checkpoint_load(checkpointer) -> None:
    """Make ``checkpointer`` (a ``DetectionCheckpointer``) usable again after a ``load`` that
    raised. detectron2 main sets ``_parsed_url_during_load`` at the start of ``load``, resets it
    only when the load succeeds, and asserts it is ``None`` on entry; v0.6 has no such state."""
    if getattr(checkpointer, "_parsed_url_during_load", None) is not None:
        checkpointer._parsed_url_during_load = None

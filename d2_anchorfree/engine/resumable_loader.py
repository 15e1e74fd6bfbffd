"""A training data loader that a resumed run continues exactly where the checkpoint left off.

detectron2's default training loader draws a fresh sampler seed and fresh augmentation random
states on every start, so ``--resume`` continues with different images and augmentations than an
uninterrupted run would have used. Here:

* the index stream is that of detectron2's training sampler named by
  ``DATALOADER.SAMPLER_TRAIN`` (:func:`build_train_sampler`: ``TrainingSampler``,
  ``RepeatFactorTrainingSampler`` or ``RandomSubsetTrainingSampler``), seeded from ``cfg.SEED``
  (when >= 0), and a resumed run skips the ``start_iter * images_per_worker`` indices already
  consumed. Each of these samplers draws its whole stream (shuffles, the repeat sampler's
  stochastic rounding, the random subset) from generators seeded once, so the stream is a
  function of the seed and the position alone;
* every sample's augmentation randomness (numpy / random / torch, which detectron2's
  augmentations and the mosaic of ``INPUT.MOSAIC`` draw from) is seeded from (SEED, position in
  the stream), so it does not depend on which data-loader worker maps it or on what was mapped
  before.

With ``DATALOADER.ASPECT_RATIO_GROUPING`` the images buffered in a not-yet-full aspect-ratio
bucket at checkpoint time are not replayed; the stream is exact when all images share one
orientation (e.g. square tiles) or when grouping is off.
"""
import copy
import itertools
import logging
import math
import random
from typing import Optional

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from detectron2.data import get_detection_dataset_dicts
from detectron2.data.samplers import RandomSubsetTrainingSampler, RepeatFactorTrainingSampler, TrainingSampler
from detectron2.utils import comm

from .. import compat

__all__ = ["TRAIN_SAMPLERS", "build_train_sampler", "check_sampler_config", "build_resumable_train_loader",
           "prefetch_factor", "train_dataset_dicts"]

logger = logging.getLogger(__name__)

TRAIN_SAMPLERS = ("TrainingSampler", "RepeatFactorTrainingSampler", "RandomSubsetTrainingSampler")


def check_sampler_config(cfg) -> None:
    """Reject training-sampler settings that detectron2 would reject late or ignore, naming the
    key: ``DATALOADER.SAMPLER_TRAIN`` not in :data:`TRAIN_SAMPLERS`; with
    ``RepeatFactorTrainingSampler``, ``REPEAT_THRESHOLD`` not a finite number > 0 (detectron2
    accepts 0, which repeats nothing) or ``REPEAT_SQRT False`` where detectron2 cannot drop the
    square root (v0.6, ``compat.repeat_factors_take_sqrt``); with ``RandomSubsetTrainingSampler``,
    ``RANDOM_SUBSET_RATIO`` outside (0, 1].

    Raises:
        ValueError: naming the first offending key and its value.
    """
    loader = cfg.DATALOADER
    name = loader.SAMPLER_TRAIN
    if name not in TRAIN_SAMPLERS:
        raise ValueError(f"DATALOADER.SAMPLER_TRAIN = {name!r} is not a training sampler; use one of {list(TRAIN_SAMPLERS)}")
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    if name == "RepeatFactorTrainingSampler":
        threshold = loader.REPEAT_THRESHOLD
        if not (number(threshold) and threshold > 0):
            raise ValueError(
                f"DATALOADER.REPEAT_THRESHOLD = {threshold!r}: RepeatFactorTrainingSampler repeats the images "
                "of categories present in fewer than this fraction of the training images; it must be a "
                "number > 0 (0 repeats nothing), e.g. 0.5, or LVIS's 0.001")
        compat.check_repeat_sqrt(loader.REPEAT_SQRT)
    if name == "RandomSubsetTrainingSampler":
        ratio = loader.RANDOM_SUBSET_RATIO
        if not (number(ratio) and 0 < ratio <= 1):
            raise ValueError(f"DATALOADER.RANDOM_SUBSET_RATIO = {ratio!r}: must be in (0, 1] (the fraction of "
                             "the training images to train on)")


def _repeat_factor_sampler(cfg, dataset_dicts, seed: int) -> RepeatFactorTrainingSampler:
    factors = compat.repeat_factors_from_category_frequency(
        dataset_dicts, cfg.DATALOADER.REPEAT_THRESHOLD, cfg.DATALOADER.REPEAT_SQRT)
    logger.info("RepeatFactorTrainingSampler: %d of %d images repeated (factors up to %.2f), %.1f images per epoch",
                int((factors > 1).sum()), len(factors), float(factors.max()), float(factors.sum()))
    return RepeatFactorTrainingSampler(factors, shuffle=True, seed=seed)


def _random_subset_sampler(cfg, size: int, seed: int) -> RandomSubsetTrainingSampler:
    ratio = cfg.DATALOADER.RANDOM_SUBSET_RATIO
    if int(size * ratio) == 0:
        raise ValueError(f"DATALOADER.RANDOM_SUBSET_RATIO = {ratio!r} keeps none of the {size} training images")
    # detectron2 draws both seeds at random on every start; fixed seeds keep the subset on resume.
    return RandomSubsetTrainingSampler(size, ratio, shuffle=True, seed_shuffle=seed, seed_subset=seed + 1)


def build_train_sampler(cfg, dataset_dicts, seed: int) -> Sampler:
    """detectron2's training sampler named by ``DATALOADER.SAMPLER_TRAIN``, with fixed seeds.

    Follows ``detectron2.data.build._train_loader_from_config`` (same classes and keys), except
    that every seed is derived from ``seed``, so that the stream is the same on every start
    (detectron2 draws a fresh seed per start unless given one):

    * ``"TrainingSampler"``: every image once per epoch, shuffled.
    * ``"RepeatFactorTrainingSampler"``: image i is drawn ``r_i`` times per epoch in expectation
      (stochastic rounding), ``r_i = max over its categories c of max(1, sqrt(t / f_c))`` with
      ``t = DATALOADER.REPEAT_THRESHOLD`` (> 0) and ``f_c`` the fraction of training images that
      contain c (LVIS's repeat factor sampling; ``DATALOADER.REPEAT_SQRT False``, detectron2 main
      only, drops the square root).
    * ``"RandomSubsetTrainingSampler"``: a fixed random ``DATALOADER.RANDOM_SUBSET_RATIO`` (in
      (0, 1]) of the images, shuffled every epoch.

    Args:
        cfg: the config (``DATALOADER.*`` above).
        dataset_dicts: the training dataset dicts (detectron2 format), in loader order.
        seed: int >= 0, the same on every worker.

    Returns:
        A detectron2 sampler: ``iter()`` gives this worker's infinite stream of dataset indices.

    Raises:
        ValueError: a setting refused by :func:`check_sampler_config`, or a
            ``RANDOM_SUBSET_RATIO`` that keeps no image of the dataset, naming the key and value.
    """
    check_sampler_config(cfg)
    name = cfg.DATALOADER.SAMPLER_TRAIN
    logger.info("Using training sampler %s", name)
    if name == "RepeatFactorTrainingSampler":
        return _repeat_factor_sampler(cfg, dataset_dicts, seed)
    if name == "RandomSubsetTrainingSampler":
        return _random_subset_sampler(cfg, len(dataset_dicts), seed)
    return TrainingSampler(len(dataset_dicts), shuffle=True, seed=seed)


class _OffsetSampler(Sampler):
    """Yields (position, index) pairs of ``sampler``'s stream (this worker's part) from its
    ``start``-th index on; ``position`` counts from the beginning of training."""

    def __init__(self, sampler: Sampler, start: int):
        self._sampler = sampler
        self._start = start

    def __iter__(self):
        stream = iter(self._sampler)
        yield from zip(itertools.count(self._start), itertools.islice(stream, self._start, None))


class _PositionSeededDataset(Dataset):
    """Maps ``(position, index)`` to ``mapper(dataset_dicts[index])`` under RNGs seeded by
    ``seed`` and ``position``."""

    def __init__(self, dataset_dicts, mapper, seed: int):
        self._dicts = dataset_dicts
        self._mapper = mapper
        self._seed = seed

    def __len__(self):
        return len(self._dicts)

    def __getitem__(self, item):
        position, index = item
        s = (self._seed * 1_000_003 + position) % (2**31)
        np.random.seed(s)
        random.seed(s)
        torch.manual_seed(s)
        return self._mapper(copy.deepcopy(self._dicts[index]))


def train_dataset_dicts(cfg) -> list:
    """The training dataset dicts of ``cfg``, as the training loader indexes them: the datasets of
    ``DATASETS.TRAIN`` concatenated, without images lacking annotations when
    ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``, with proposals when ``MODEL.LOAD_PROPOSALS``
    (detectron2's ``get_detection_dataset_dicts``; loading runs the data checks)."""
    return get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )


def prefetch_factor(cfg) -> int:
    """Items each data-loader worker loads ahead (torch ``DataLoader``'s ``prefetch_factor``):
    ``DATALOADER.PREFETCH_FACTOR`` when > 0, else two batches' worth: ``2 * ceil(images per batch
    per process / NUM_WORKERS)`` with ``ASPECT_RATIO_GROUPING`` (the loader then yields single
    images, and torch's default of 2 leaves the trainer waiting for the rest of every batch), 2
    (batches) without. Only how far ahead the workers run: the stream is the same.

    Raises:
        ValueError: a negative ``DATALOADER.PREFETCH_FACTOR``.
    """
    loader = cfg.DATALOADER
    if not (isinstance(loader.PREFETCH_FACTOR, int) and loader.PREFETCH_FACTOR >= 0):
        raise ValueError(f"DATALOADER.PREFETCH_FACTOR = {loader.PREFETCH_FACTOR!r}: must be an integer >= 0 "
                         "(items loaded ahead per worker; 0 = two batches)")
    if loader.PREFETCH_FACTOR > 0:
        return loader.PREFETCH_FACTOR
    if not loader.ASPECT_RATIO_GROUPING:
        return 2
    per_process = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
    return 2 * -(-per_process // max(loader.NUM_WORKERS, 1))


def build_resumable_train_loader(cfg, mapper, start_iter: int = 0, dataset_dicts: Optional[list] = None):
    """Training loader over ``cfg.DATASETS.TRAIN`` that starts at iteration ``start_iter``.

    Args:
        cfg: a detectron2 config (uses DATASETS.TRAIN, DATALOADER.* including the sampler keys of
            :func:`build_train_sampler` and ``PREFETCH_FACTOR`` (:func:`prefetch_factor`),
            SOLVER.IMS_PER_BATCH, SEED).
        mapper: callable dataset dict -> model input dict (e.g. a ``DatasetMapper``); it may draw
            from numpy / random / torch's global generators, seeded per sample position.
        start_iter: number of iterations already trained (0 for a new run).
        dataset_dicts: the dicts of :func:`train_dataset_dicts` when the caller has loaded them
            already (e.g. for a mapper that needs them, the mosaic's); None loads them.

    Returns:
        An infinite iterable of lists of mapped dicts, ``IMS_PER_BATCH / world_size`` per list.

    Raises:
        ValueError: a bad sampler setting (:func:`build_train_sampler`) or ``PREFETCH_FACTOR``.
    """
    prefetch = prefetch_factor(cfg)
    dicts = train_dataset_dicts(cfg) if dataset_dicts is None else dataset_dicts
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    per_worker = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
    sampler = _OffsetSampler(build_train_sampler(cfg, dicts, seed), start=start_iter * per_worker)
    dataset = _PositionSeededDataset(dicts, mapper, seed + comm.get_rank())
    return compat.build_batch_data_loader(
        dataset, sampler, cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS, prefetch_factor=prefetch,
    )

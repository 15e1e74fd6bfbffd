"""A training data loader that a resumed run continues exactly where the checkpoint left off.

detectron2's default training loader draws a fresh sampler seed and fresh augmentation random
states on every start, so ``--resume`` continues with different images and augmentations than an
uninterrupted run would have used. Here:

* the index stream is detectron2's ``TrainingSampler`` seeded from ``cfg.SEED`` (when >= 0), and
  a resumed run skips the ``start_iter * images_per_worker`` indices already consumed;
* every sample's augmentation randomness (numpy / random / torch, which detectron2's
  augmentations draw from) is seeded from (SEED, position in the stream), so it does not depend
  on which data-loader worker maps it or on what was mapped before.

With ``DATALOADER.ASPECT_RATIO_GROUPING`` the images buffered in a not-yet-full aspect-ratio
bucket at checkpoint time are not replayed; the stream is exact when all images share one
orientation (e.g. square tiles) or when grouping is off.
"""
import copy
import itertools
import random

import numpy as np
import torch
from torch.utils.data import Dataset

from detectron2.data import get_detection_dataset_dicts
from detectron2.data.build import build_batch_data_loader
from detectron2.data.samplers import TrainingSampler
from detectron2.utils import comm


class _OffsetSampler(TrainingSampler):
    """``TrainingSampler`` that yields (position, index) pairs starting at ``start`` of this
    worker's stream; ``position`` counts from the beginning of training."""

    def __init__(self, size: int, seed: int, start: int):
        super().__init__(size, shuffle=True, seed=seed)
        self._start = start

    def __iter__(self):
        stream = super().__iter__()
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


def build_resumable_train_loader(cfg, mapper, start_iter: int = 0):
    """Training loader over ``cfg.DATASETS.TRAIN`` that starts at iteration ``start_iter``.

    Args:
        cfg: a detectron2 config (uses DATASETS.TRAIN, DATALOADER.*, SOLVER.IMS_PER_BATCH, SEED).
        mapper: callable dataset dict -> model input dict (e.g. a ``DatasetMapper``).
        start_iter: number of iterations already trained (0 for a new run).

    Returns:
        An infinite iterable of lists of mapped dicts, ``IMS_PER_BATCH / world_size`` per list.
    """
    dicts = get_detection_dataset_dicts(
        cfg.DATASETS.TRAIN,
        filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
        proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
    )
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    per_worker = cfg.SOLVER.IMS_PER_BATCH // comm.get_world_size()
    sampler = _OffsetSampler(len(dicts), seed=seed, start=start_iter * per_worker)
    dataset = _PositionSeededDataset(dicts, mapper, seed + comm.get_rank())
    return build_batch_data_loader(
        dataset, sampler, cfg.SOLVER.IMS_PER_BATCH,
        aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
    )

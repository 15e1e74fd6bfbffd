"""DATALOADER.SAMPLER_TRAIN in the resumable training loader: detectron2's samplers, their repeat
factors on a hand-counted skewed dataset, draw frequencies, the resume offset, and the errors;
DATALOADER.PREFETCH_FACTOR: how far a worker loads ahead, with the same stream."""
import collections
import itertools
import math

import numpy as np
import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.samplers import RepeatFactorTrainingSampler

import d2_anchorfree
from d2_anchorfree import compat
from d2_anchorfree.engine import AnchorFreeTrainer
from d2_anchorfree.engine.resumable_loader import (build_resumable_train_loader, build_train_sampler,
                                                   check_sampler_config, prefetch_factor)

A, B = 0, 1  # contiguous category ids (detectron2 format): A frequent, B rare


def skewed_dicts():
    """10 images: 0-6 hold A only, 7 nothing, 8 B only, 9 A and B. Without the empty image 7
    (FILTER_EMPTY_ANNOTATIONS), A is in 8 of 9 images and B in 2 of 9."""
    cats = [[A]] * 7 + [[]] + [[B], [A, B]]
    return [{"file_name": f"{i}.png", "image_id": i, "height": 8, "width": 8,
             "annotations": [{"bbox": [0, 0, 4, 4], "bbox_mode": 1, "category_id": c} for c in cs]}
            for i, cs in enumerate(cats)]


def make_cfg(sampler="TrainingSampler", *opts):
    cfg = get_cfg()
    d2_anchorfree.add_anchorfree_config(cfg)
    cfg.merge_from_list(["DATALOADER.SAMPLER_TRAIN", sampler, "DATALOADER.NUM_WORKERS", 0,
                         "DATALOADER.ASPECT_RATIO_GROUPING", False, "SOLVER.IMS_PER_BATCH", 2, "SEED", 7, *opts])
    return cfg


@pytest.fixture
def skewed(names):
    """A registered dataset of :func:`skewed_dicts`; returns its name."""
    name = names("skewed")
    DatasetCatalog.register(name, skewed_dicts)
    MetadataCatalog.get(name).thing_classes = ["a", "b"]
    return name


def test_repeat_factors_hand_counted():
    """t = 0.5. Image 7 has no annotations (factor 1). A is in 8 of 10 images: sqrt(0.5 / 0.8) < 1,
    so 1; B in 2 of 10: sqrt(0.5 / 0.2) = sqrt(2.5). Without the empty image (9 images):
    sqrt(0.5 / (2/9)) = sqrt(2.25) = 1.5."""
    dicts = skewed_dicts()
    want = torch.tensor([1.0] * 8 + [math.sqrt(2.5)] * 2)
    got = compat.repeat_factors_from_category_frequency(dicts, 0.5)
    assert torch.allclose(got, want)
    assert torch.equal(got, RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(dicts, 0.5))
    non_empty = [d for d in dicts if d["annotations"]]
    assert compat.repeat_factors_from_category_frequency(non_empty, 0.5).tolist() == [1.0] * 7 + [1.5, 1.5]


def test_repeat_sqrt_false_on_main_refused_on_v06():
    """Without the square root (detectron2 main): B's factor is 0.5 / (2/9) = 2.25."""
    non_empty = [d for d in skewed_dicts() if d["annotations"]]
    if compat.repeat_factors_take_sqrt():
        got = compat.repeat_factors_from_category_frequency(non_empty, 0.5, sqrt=False)
        assert torch.allclose(got, torch.tensor([1.0] * 7 + [2.25, 2.25]))
    else:
        with pytest.raises(ValueError, match=r"DATALOADER.REPEAT_SQRT = False needs .*main"):
            compat.repeat_factors_from_category_frequency(non_empty, 0.5, sqrt=False)
        with pytest.raises(ValueError, match="REPEAT_SQRT"):
            check_sampler_config(make_cfg("RepeatFactorTrainingSampler", "DATALOADER.REPEAT_THRESHOLD", 0.5,
                                          "DATALOADER.REPEAT_SQRT", False))


def test_rare_images_are_drawn_as_often_as_their_factors_say():
    """Over 1500 epochs of the 9 non-empty images (factors 1 x 7, 1.5 x 2), each rare image is drawn
    1.5 times as often as each frequent one; with TrainingSampler all equally often."""
    dicts = [d for d in skewed_dicts() if d["annotations"]]
    cfg = make_cfg("RepeatFactorTrainingSampler", "DATALOADER.REPEAT_THRESHOLD", 0.5)
    counts = collections.Counter(itertools.islice(iter(build_train_sampler(cfg, dicts, seed=3)), 15000))
    frequent = sum(counts[i] for i in range(7)) / 7
    for rare in (7, 8):  # dataset indices of images 8 and 9 once the empty image is gone
        assert counts[rare] / frequent == pytest.approx(1.5, rel=0.03)
    plain = collections.Counter(itertools.islice(iter(build_train_sampler(make_cfg(), dicts, seed=3)), 9000))
    assert set(plain.values()) == {1000}


def test_random_subset_keeps_a_fixed_fraction():
    """RANDOM_SUBSET_RATIO 0.5 of 9 images: int(4.5) = 4 distinct images, each once per epoch; the
    same subset for the same seed (so a resumed run keeps it)."""
    dicts = [d for d in skewed_dicts() if d["annotations"]]
    cfg = make_cfg("RandomSubsetTrainingSampler", "DATALOADER.RANDOM_SUBSET_RATIO", 0.5)
    drawn = list(itertools.islice(iter(build_train_sampler(cfg, dicts, seed=3)), 400))
    counts = collections.Counter(drawn)
    assert len(counts) == 4 and set(counts.values()) == {100}
    again = list(itertools.islice(iter(build_train_sampler(cfg, dicts, seed=3)), 400))
    assert again == drawn


def _image_ids_and_draws(loader, batches):
    """(image_id, first augmentation random number) of each image of the first ``batches`` batches."""
    return [item for batch in itertools.islice(loader, batches) for item in batch]


def _mapper(d):
    return d["image_id"], float(np.random.rand())  # the position-seeded augmentation RNG


@pytest.mark.parametrize("sampler,opts", [
    ("TrainingSampler", []),
    ("RepeatFactorTrainingSampler", ["DATALOADER.REPEAT_THRESHOLD", 0.5]),
    ("RandomSubsetTrainingSampler", ["DATALOADER.RANDOM_SUBSET_RATIO", 0.5]),
])
def test_loader_uses_the_sampler_and_resumes_exactly(skewed, sampler, opts):
    """The training loader draws the configured sampler's stream (image ids, images 7 filtered as
    empty), and a loader started at iteration 5 continues it exactly, augmentation RNG included."""
    cfg = make_cfg(sampler, "DATASETS.TRAIN", (skewed,), *opts)
    dicts = [d for d in skewed_dicts() if d["annotations"]]
    want_ids = [dicts[i]["image_id"] for i in itertools.islice(iter(build_train_sampler(cfg, dicts, seed=7)), 40)]
    straight = _image_ids_and_draws(build_resumable_train_loader(cfg, _mapper), 20)
    assert [image_id for image_id, _ in straight] == want_ids
    resumed = _image_ids_and_draws(build_resumable_train_loader(cfg, _mapper, start_iter=5), 15)
    assert resumed == straight[10:]


def test_repeat_factor_loader_differs_from_plain(skewed):
    """The rare images 8 and 9 come more often than under TrainingSampler (the issue: the setting
    was accepted and ignored)."""
    rare = []
    for sampler, opts in (("TrainingSampler", []), ("RepeatFactorTrainingSampler", ["DATALOADER.REPEAT_THRESHOLD", 0.5])):
        cfg = make_cfg(sampler, "DATASETS.TRAIN", (skewed,), *opts)
        ids = [i for i, _ in _image_ids_and_draws(build_resumable_train_loader(cfg, _mapper), 500)]
        rare.append(sum(i in (8, 9) for i in ids) / len(ids))
    assert rare[0] == pytest.approx(2 / 9, abs=0.01)  # 1000 images = 111 epochs and a bit
    assert rare[1] == pytest.approx(3 / 10, abs=0.02)  # 2 x 1.5 of 10 per epoch


@pytest.mark.parametrize("opts,message", [
    (["DATALOADER.SAMPLER_TRAIN", "RepeatFactorSampler"],
     r"DATALOADER.SAMPLER_TRAIN = 'RepeatFactorSampler' is not a training sampler; use one of \['TrainingSampler'"),
    (["DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler"], r"DATALOADER.REPEAT_THRESHOLD = 0.0: .* > 0"),
    (["DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler", "DATALOADER.REPEAT_THRESHOLD", -1.0],
     "DATALOADER.REPEAT_THRESHOLD = -1.0"),
    (["DATALOADER.SAMPLER_TRAIN", "RandomSubsetTrainingSampler", "DATALOADER.RANDOM_SUBSET_RATIO", 1.5],
     r"DATALOADER.RANDOM_SUBSET_RATIO = 1.5: must be in \(0, 1\]"),
    (["DATALOADER.SAMPLER_TRAIN", "RandomSubsetTrainingSampler", "DATALOADER.RANDOM_SUBSET_RATIO", 0.0],
     "DATALOADER.RANDOM_SUBSET_RATIO = 0.0"),
])
def test_bad_sampler_settings_fail_before_training(opts, message):
    cfg = make_cfg("TrainingSampler", *opts)
    with pytest.raises(ValueError, match=message):
        AnchorFreeTrainer(cfg)  # checked first, before the model and the datasets


def test_subset_that_keeps_no_image_is_refused():
    dicts = [d for d in skewed_dicts() if d["annotations"]]
    cfg = make_cfg("RandomSubsetTrainingSampler", "DATALOADER.RANDOM_SUBSET_RATIO", 0.1)
    with pytest.raises(ValueError, match=r"RANDOM_SUBSET_RATIO = 0.1 keeps none of the 9 training images"):
        build_train_sampler(cfg, dicts, seed=0)


@pytest.mark.parametrize("opts,want", [
    ([], 4),  # aspect-ratio grouping: the DataLoader yields images; 2 per batch, 1 worker: two batches = 4
    (["DATALOADER.NUM_WORKERS", 2, "SOLVER.IMS_PER_BATCH", 5], 6),  # 2 * ceil(5 / 2)
    (["DATALOADER.ASPECT_RATIO_GROUPING", False], 2),  # the DataLoader yields batches
    (["DATALOADER.PREFETCH_FACTOR", 3], 3),
])
def test_prefetch_factor_is_two_batches_unless_set(opts, want):
    cfg = make_cfg("TrainingSampler", "DATALOADER.NUM_WORKERS", 1, "DATALOADER.ASPECT_RATIO_GROUPING", True, *opts)
    assert prefetch_factor(cfg) == want
    with pytest.raises(ValueError, match="DATALOADER.PREFETCH_FACTOR = -1"):
        prefetch_factor(make_cfg("TrainingSampler", "DATALOADER.PREFETCH_FACTOR", -1))


def _dict_mapper(d):
    return {"image_id": d["image_id"], "draw": float(np.random.rand()), "width": d["width"], "height": d["height"]}


def test_prefetching_leaves_the_stream_alone(skewed):
    """With a worker and aspect-ratio grouping, the torch DataLoader loads PREFETCH_FACTOR images
    ahead (default: two batches; 2 is detectron2's), and the images and augmentation draws are
    those of the loader without workers, batch for batch."""
    streams = {}
    for workers, prefetch in ((0, 0), (1, 0), (1, 2)):
        cfg = make_cfg("TrainingSampler", "DATASETS.TRAIN", (skewed,), "DATALOADER.NUM_WORKERS", workers,
                       "DATALOADER.ASPECT_RATIO_GROUPING", True, "DATALOADER.PREFETCH_FACTOR", prefetch)
        loader = build_resumable_train_loader(cfg, _dict_mapper)
        if workers:
            assert loader.dataset.prefetch_factor == (prefetch or 4)  # AspectRatioGroupedDataset's DataLoader
        streams[workers, prefetch] = [[(x["image_id"], x["draw"]) for x in batch]
                                      for batch in itertools.islice(loader, 12)]
    assert streams[1, 0] == streams[0, 0] and streams[1, 2] == streams[0, 0]

"""Shared test helpers: config loading and tiny synthetic batches."""
import os
import subprocess
import sys
import uuid

import pytest
import torch

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import Boxes, Instances

import d2_anchorfree

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


CACHE_ROOT = os.environ.get("D2AF_CACHE", os.path.expanduser("~/.cache/d2af"))


def spawn_with_deadline(worker, args, nprocs: int, timeout_s: float) -> None:
    """Run ``torch.multiprocessing.spawn(worker, args, nprocs)`` and never wait forever. A worker
    error raises (mp.spawn's ProcessRaisedException). Workers still alive after ``timeout_s``
    (seen in gloo's teardown after all results were written: the process group's destructor
    joining a thread that waits for the GIL) are killed; callers then read the result files, so a
    run that did not finish its work still fails on a missing file."""
    import time

    import torch.multiprocessing as mp

    context = mp.spawn(worker, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout_s
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                if process.is_alive():
                    process.kill()
            return


def trees_dir() -> str:
    """The prepared tree-crown data: the checkout's datasets/trees (make demo), else prepared once
    into the cache by tools/prepare_trees.py (``d2af prepare-data``; a fresh clone, e.g. CI, has no datasets/)."""
    trees = os.path.join(REPO, "datasets", "trees")
    if os.path.isfile(os.path.join(trees, "val_whole.json")):  # the last file of a complete preparation
        return trees
    trees = os.path.join(CACHE_ROOT, "trees")
    if not os.path.isfile(os.path.join(trees, "val_whole.json")):
        subprocess.run([sys.executable, os.path.join(REPO, "tools", "prepare_trees.py"), "--out", trees],
                       check=True, capture_output=True, text=True)
    return trees


def load_cfg(config_file: str, *opts):
    """A detectron2 config with our keys, merged from ``config_file`` (relative to the repo),
    forced to CPU with no pretrained weights; ``opts`` are extra "KEY", value pairs."""
    cfg = get_cfg()
    d2_anchorfree.add_anchorfree_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, config_file))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", *opts])
    return cfg


def make_instances(image_size, boxes, classes):
    """Ground-truth ``Instances`` from python lists (boxes XYXY pixels)."""
    inst = Instances(image_size)
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(classes, dtype=torch.long)
    return inst


def make_batch(height=128, width=160, seed=0):
    """Two training inputs: one with two objects, one with none (uint8 CHW images)."""
    g = torch.Generator().manual_seed(seed)
    img = lambda: torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g)  # noqa: E731
    with_gt = make_instances((height, width), [[10, 12, 70, 90], [40, 30, 150, 120]], [0, 0])
    empty = make_instances((height, width), [], [])
    return [{"image": img(), "instances": with_gt}, {"image": img(), "instances": empty}]


def train_step_and_predict(cfg, min_detections: int = 0):
    """Build ``cfg``'s model, run one training step on :func:`make_batch` (one image without
    objects), check the losses are finite and every parameter gets a gradient, then run one
    inference asking for a 256x320 output and check its fields, size, count and score range.

    Returns:
        (model, losses dict).
    """
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    torch.manual_seed(0)
    model = build_model(cfg)
    model.train()
    batch = make_batch(128, 160)
    with EventStorage():
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:5]}"
    model.eval()
    with torch.no_grad():
        out = model([{"image": batch[0]["image"], "height": 256, "width": 320}])
    inst = out[0]["instances"]
    assert inst.image_size == (256, 320)  # rescaled to the requested output size
    assert min_detections <= len(inst) <= cfg.TEST.DETECTIONS_PER_IMAGE
    assert {"pred_boxes", "scores", "pred_classes"} <= set(inst.get_fields())
    assert ((inst.scores >= 0) & (inst.scores <= 1)).all()
    return model, losses


class FixedAssigner:
    """A stub assigner that returns a given assignment: ``matched[i]`` (and ``quality[i]``) for
    the i-th image it is called on (the criterion assigns the images of a batch in order)."""

    def __init__(self, matched, quality=None):
        self.matched, self.quality, self.calls = matched, quality, 0

    def __call__(self, shifts, gt, pred_scores=None, pred_boxes=None):
        from d2_anchorfree.modeling.assigners.base import AssignResult

        i = self.calls
        self.calls += 1
        return AssignResult(self.matched[i], None if self.quality is None else self.quality[i])


def loss_terms_on(model, shifts, gt_instances, matched, flat, quality=None, aux_matched=None):
    """``model``'s loss terms on hand-made predictions and a fixed assignment: a
    ``DenseCriterion`` with ``model``'s loss terms and a :class:`FixedAssigner`, called directly.

    Args:
        model: a built ``AnchorFreeDetector``.
        shifts: per level [R_l, 2] points (pixels), one level per stride of the model.
        gt_instances: N ``Instances``.
        matched: [N, R] long, GT index / BACKGROUND (-1) / IGNORE (-2) per point.
        flat: the head's outputs, flattened: name -> [N, R, C] ("logits" and what the head
            decodes its boxes from: "ltrb" in pixels, or GFL's "box_logits"; plus its extras).
        quality: optional [N, R] soft targets of the assignment. aux_matched: optional [N, R]
            labels of the auxiliary assigner (default: the model's auxiliary assigner, if any).

    Returns:
        dict of named losses, as ``model(batch)`` in training.
    """
    from d2_anchorfree.modeling.criterion import DenseCriterion
    from d2_anchorfree.modeling.geometry import Points
    from d2_anchorfree.modeling.heads import DenseOutputs

    points = Points.from_levels(shifts, model.strides)
    flat = dict(flat)
    logits = flat.pop("logits")
    ltrb = model.head.decode_ltrb(flat, points.point_strides)
    out = DenseOutputs(logits, ltrb, flat)
    out = out._replace(scores=model.head.cls_scores(out))
    main = model.criterion
    criterion = DenseCriterion(
        num_classes=main.num_classes, assigner=FixedAssigner(matched, quality), loss_terms=main.loss_terms,
        aux_assigner=main.aux_assigner if aux_matched is None else FixedAssigner(aux_matched))
    return criterion(out, points, gt_instances)


def slow_unless_tiny(configs):
    """``configs`` (paths) as pytest parameters, those that are not ``*tiny*`` (R-50 backbones:
    a train step is several seconds on 2 busy cores) marked ``slow``; the fast tier keeps the tiny ones."""
    return [c if "tiny" in os.path.basename(c) else pytest.param(c, marks=pytest.mark.slow) for c in configs]


@pytest.fixture
def tiny_batch():
    return make_batch()


def make_toy_data(root, train: int, val: int):
    """Write projects/CustomData's synthetic 2-class COCO data (``train``/``val`` images) under
    ``root`` (train.json, val.json, images/); returns ``root``."""
    subprocess.run([sys.executable, os.path.join(REPO, "projects", "CustomData", "make_toy_data.py"),
                    "--out", str(root), "--train", str(train), "--val", str(val)], check=True, capture_output=True)
    return root


@pytest.fixture
def names():
    """Unique dataset names (``names(prefix)``), unregistered from both catalogs afterwards."""
    created = []

    def make(prefix="d2af_test"):
        created.append(f"{prefix}_{uuid.uuid4().hex[:8]}")
        return created[-1]

    yield make
    for name in created:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)

"""``train`` section: one training step (forward + backward, no optimizer step).

``--train-batch`` images with ``--train-gt`` random boxes each, ``--train-runs`` steps after
``--warmup-train``, round-robin over the models (:func:`benchmarks.timing.interleaved`), split into
forward (preprocess + backbone + head), target assignment, losses and backward. Assignment is
timed by replacing the model's assigner attributes with a timing proxy
(:class:`benchmarks.timing.TimedCall`; ours: ``model.criterion.assigner`` and DeFCN's ``aux_assigner``;
detectron2's RetinaNet and FCOS: the bound method ``model.label_anchors``, which for FCOS calls
``match_anchors``). "losses" = time of ``forward_training`` minus the assignment. On CUDA also
images/s and the peak memory of the step.
"""
from typing import Dict, List, Tuple

import torch

from .inputs import make_inputs
from .memory import CudaPeak
from .models import assign_hooks
from .report import print_progress
from .timing import LapTimer, TimedCall, entry_row, interleaved


def train_step_laps(model, inputs, proxies: Dict[str, TimedCall], device: str):
    """One timed training step (forward + backward, no optimizer step) on ``inputs``.

    Returns (seconds of "forward", "assign", "losses", "backward", "total"; finite loss). The
    assignment time is read from the ``proxies`` installed by :func:`install_assign_proxies`.
    """
    from detectron2.utils.events import EventStorage

    model.train()
    model.zero_grad(set_to_none=True)
    for p in proxies.values():
        p.elapsed = 0.0
    gt = [x["instances"].to(model.device) for x in inputs]  # data loading, not timed
    timer = LapTimer(device)
    start = timer.last
    with EventStorage(0):
        images = model.preprocess_image(inputs)
        features = model.backbone(images.tensor)
        features = [features[f] for f in model.head_in_features]
        predictions = model.head(features)
        timer.lap("forward")
        losses = model.forward_training(images, features, predictions, gt)
        timer.lap("assign+losses")
        total = sum(losses.values())
    total.backward()
    timer.lap("backward")
    assign = sum(p.elapsed for p in proxies.values())
    laps = {"forward": timer.laps["forward"], "assign": assign, "losses": timer.laps["assign+losses"] - assign,
            "backward": timer.laps["backward"], "total": timer.last - start}
    return laps, bool(torch.isfinite(total).item())


def install_assign_proxies(model, device: str) -> Dict[str, TimedCall]:
    """Replace the model's assignment attributes (:func:`benchmarks.models.assign_hooks`) by timing proxies."""
    proxies = {(owner, n): TimedCall(getattr(owner, n), device) for owner, n in assign_hooks(model)}
    for (owner, n), p in proxies.items():
        setattr(owner, n, p)
    return proxies


def remove_assign_proxies(model, proxies: Dict[Tuple[object, str], TimedCall]):
    for (owner, n), p in proxies.items():
        if n == "label_anchors":
            delattr(owner, n)  # back to the class method
        else:
            setattr(owner, n, p.fn)


def run_training(args, entries: List[Dict], base: Dict, height: int, width: int, results: Dict):
    """Time a training step of every entry but the inference-only ones on ``height`` x ``width``
    inputs; appends one row per entry to ``results["train"]``."""
    train_entries = [dict(e) for e in entries if not e.get("infer_only")]
    for e in train_entries:
        e["inputs"] = make_inputs(args.train_batch, height, width, args.train_gt, e["num_classes"], seed=1)
        e["proxies"] = install_assign_proxies(e["model"], args.device)
        e["finite"] = True

    def measure_train(e):
        with CudaPeak(e, args.device):
            laps, finite = train_step_laps(e["model"], e["inputs"], e["proxies"], args.device)
        e["finite"] = e["finite"] and finite
        return laps

    try:
        samples = interleaved(train_entries, args.train_runs, args.warmup_train, measure_train)
    finally:
        for e in train_entries:
            remove_assign_proxies(e["model"], e["proxies"])
            e["model"].zero_grad(set_to_none=True)
    for e in train_entries:
        row = entry_row(e, samples, {"model": e["label"], **base, "batch": args.train_batch,
                                     "gt_per_image": args.train_gt},
                        lambda: {"assign_hooks": [n for _, n in e["proxies"]], "finite_loss": e["finite"]},
                        args.device, images=len(e["inputs"]))
        results["train"].append(row)
        print_progress("train", row)

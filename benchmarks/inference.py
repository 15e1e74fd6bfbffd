"""``infer`` section: inference latency per image.

Median and min/max/IQR over ``--runs`` runs after ``--warmup``, taken round-robin over the
models (:func:`benchmarks.timing.interleaved`), split by calling the model's parts in turn:
``preprocess_image`` (normalize, pad), ``backbone`` (ResNet + FPN), ``head``, and
post-processing (``forward_inference`` + ``detector_postprocess``: candidate selection, decode,
NMS or NMS-free top-k, rescale). Before timing, each model's split path is checked against
``model(inputs)`` (``split_matches_forward`` in the JSON). The score threshold is forced to
``--score-thresh`` (default 0) for everyone: with untrained weights the configured thresholds
would leave some models (RetinaNet, prior 0.01) without a single candidate and others with
thousands; with 0 every model post-processes its full ``TOPK_CANDIDATES_TEST`` candidates per
level (the worst case). On CUDA also images/s and the peak memory of the call.
"""
import traceback
from typing import Dict, List

import torch

from .inputs import make_inputs
from .memory import CudaPeak
from .models import set_variant
from .report import print_progress
from .timing import LapTimer, entry_row, interleaved


def inference_once(model, inputs, timer: LapTimer):
    from detectron2.modeling.postprocessing import detector_postprocess

    images = model.preprocess_image(inputs)
    timer.lap("preprocess")
    features = model.backbone(images.tensor)
    features = [features[f] for f in model.head_in_features]
    timer.lap("backbone_fpn")
    predictions = model.head(features)
    timer.lap("head")
    results = model.forward_inference(images, features, predictions)
    out = [detector_postprocess(r, x["height"], x["width"]) for r, x in zip(results, inputs)]
    timer.lap("post")
    return out


def split_matches_forward(model, inputs) -> bool:
    """The split path of :func:`inference_once` gives what ``model(inputs)`` gives (same
    detections of the first image): the parts timed are the parts the model runs."""
    model.eval()
    with torch.no_grad():
        ref = model(inputs)[0]["instances"]
        split = inference_once(model, inputs, LapTimer("cpu"))[0]
    return len(ref) == len(split) and torch.allclose(ref.scores, split.scores, atol=1e-5)


def inference_laps(model, inputs, device: str):
    """One timed inference of ``inputs``: (seconds per part and "total", per image; detections)."""
    model.eval()
    with torch.no_grad():
        timer = LapTimer(device)
        start = timer.last
        out = inference_once(model, inputs, timer)
    laps = {k: v / len(inputs) for k, v in timer.laps.items()}
    laps["total"] = (timer.last - start) / len(inputs)
    return laps, out


def run_inference(args, entries: List[Dict], base: Dict, height: int, width: int, results: Dict):
    """Time inference of every entry (see :func:`benchmarks.models.build_entries`) on
    ``height`` x ``width`` inputs; appends one row per entry to ``results["inference"]``."""
    infer_entries = [dict(e) for e in entries]
    for e in infer_entries:
        set_variant(e)
        e["inputs"] = make_inputs(args.batch, height, width, 0, e["num_classes"])
        try:
            e["consistent"] = split_matches_forward(e["model"], e["inputs"])
        except Exception as exc:
            e["error"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
    ok = [e for e in infer_entries if "error" not in e]

    def measure_infer(e):
        set_variant(e)
        with CudaPeak(e, args.device):
            laps, out = inference_laps(e["model"], e["inputs"], args.device)
        e["detections_per_image"] = sum(len(o) for o in out) / len(out)
        return laps

    samples = interleaved(ok, args.runs, args.warmup, measure_infer)
    for e in infer_entries:
        row = entry_row(e, samples, {"model": e["label"], **base, "batch": args.batch},
                        lambda: {"detections_per_image": e["detections_per_image"],
                                 "split_matches_forward": bool(e["consistent"])}, args.device, images=1)
        results["inference"].append(row)
        print_progress("infer", row)
    for e in entries:
        if not e.get("infer_only"):
            set_variant(e)  # DeFCN back to its configured post-processing

"""The best-F1 score threshold of a model, stored beside its weights.

The evaluation report (``d2_anchorfree.evaluation.report``; written after training's final
evaluation, by ``d2af evaluate`` and by ``d2af report --weights``) finds the score threshold whose
detections have the best F1 at IoU 0.5 on a validation set. It is written next to the weights
file, ``<weights without .pth>.best_f1.json`` (``model_final.pth`` -> ``model_final.best_f1.json``),
with the SHA-256 of the weights it was measured for: the threshold belongs to those weights and
that dataset, so a weights file that changed since (training resumed, another run in the same
folder) makes it stale, and it is not used. ``d2af predict --min-score best`` and ``d2af export``
(into the ONNX / TorchScript metadata, for ``predict-onnx --min-score best``) read it.

The checkpoint itself is not rewritten: training writes ``model_final.pth`` before its final
evaluation, and an evaluation should not modify the weights it evaluates.
"""
import hashlib
import json
import os
from typing import Optional, Union

from ..runtime.predict_onnx import DEFAULT_MIN_SCORE

__all__ = ["BEST_F1_SUFFIX", "DEFAULT_MIN_SCORE", "best_f1_path", "load_best_f1", "parse_min_score",
           "resolve_min_score", "save_best_f1", "weights_sha256"]

#: Suffix of the file beside the weights.
BEST_F1_SUFFIX = ".best_f1.json"
_HOW = ("run 'd2af report --results <coco_instances_results.json> --coco-json <val.json> --out <dir> "
        "--weights {weights}' (or 'd2af evaluate' with these weights, or train: the final evaluation writes it)")


def best_f1_path(weights: str) -> str:
    """``<weights without extension>.best_f1.json``: where the threshold of ``weights`` is kept."""
    return os.path.splitext(weights)[0] + BEST_F1_SUFFIX


def weights_sha256(weights: str) -> str:
    """SHA-256 (hex) of the file ``weights``, read in 1 MiB blocks.

    Raises:
        FileNotFoundError: no such file.
    """
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_best_f1(weights: str, report: dict, dataset: str) -> str:
    """Write the best-F1 thresholds of ``report`` beside ``weights``.

    Args:
        weights: the weights file the report's detections came from (must exist: its SHA-256 is stored).
        report: ``evaluation.report.build_report``'s dict.
        dataset: the evaluation data (dataset name or COCO json path), recorded.

    Returns:
        str: the written path (:func:`best_f1_path`).

    Raises:
        FileNotFoundError: ``weights`` does not exist.
        ValueError: the report has no best-F1 threshold (no true positive at any threshold).
    """
    best = report["best_f1"]
    if best["score_threshold"] is None:
        raise ValueError(f"the report of {dataset} has no best-F1 threshold (no detection matches a ground "
                         "truth at any score): nothing to save for " + weights)
    entry = {
        "score_threshold": best["score_threshold"], "f1": best["f1"], "precision": best["precision"],
        "recall": best["recall"], "iou": best["iou"], "dataset": dataset,
        "per_class": {c["name"]: c["best_f1"]["score_threshold"] for c in report["classes"]},
        "weights": os.path.basename(weights), "weights_sha256": weights_sha256(weights),
    }
    path = best_f1_path(weights)
    with open(path, "w") as f:
        json.dump(entry, f, indent=1)
    return path


def load_best_f1(weights: str) -> Optional[dict]:
    """The saved best-F1 entry of ``weights`` (see :func:`save_best_f1`), or None when there is
    none (no such file, or ``weights`` is not a local file, e.g. empty or a URL).

    Raises:
        ValueError: the file is malformed, or was measured for other weights (its SHA-256
            differs from the file's now), naming the file and what to run.
    """
    path = best_f1_path(weights) if weights else ""
    if not (weights and os.path.isfile(weights) and os.path.isfile(path)):
        return None
    try:
        with open(path) as f:
            entry = json.load(f)
        threshold = float(entry["score_threshold"])
        sha = entry["weights_sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a best-F1 threshold file ({e!r}); " + _HOW.format(weights=weights)) from e
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"{path}: score_threshold {threshold} is outside [0, 1]")
    if sha != weights_sha256(weights):
        raise ValueError(f"{path} was measured for other weights than {weights} (SHA-256 differs: the weights "
                         "changed since); " + _HOW.format(weights=weights))
    return entry


def parse_min_score(text: str) -> Union[float, str]:
    """``--min-score`` value: a score in [0, 1], or "best" (the model's saved best-F1 threshold).

    Raises:
        ValueError: anything else (argparse shows it as a usage error).
    """
    if text == "best":
        return text
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"--min-score must be in [0, 1] or 'best', got {text}")
    return value


def resolve_min_score(value: Union[None, float, str], weights: str):
    """The drawing threshold for ``--min-score value`` with weights ``weights``.

    Args:
        value: a float (used as is), "best" (the saved best-F1 threshold, required) or None (the
            saved one when there is a valid one, else :data:`DEFAULT_MIN_SCORE`).
        weights: the weights file (``MODEL.WEIGHTS``).

    Returns:
        (float, str): the threshold and a sentence saying where it comes from.

    Raises:
        ValueError: "best" and no valid saved threshold (naming the file looked for and what to run).
    """
    if isinstance(value, float):
        return value, f"--min-score {value:g}"
    try:
        entry = load_best_f1(weights)
        problem = None if entry else f"no {best_f1_path(weights) if weights else 'weights file'}"
    except ValueError as e:
        entry, problem = None, str(e)
    if entry is not None:
        return float(entry["score_threshold"]), (f"the best-F1 threshold of {weights} ({entry['score_threshold']:.3f}, "
                                                 f"F1 {entry['f1']:.3f} on {entry['dataset']})")
    if value == "best":
        raise ValueError(f"--min-score best: {weights or 'the model'} has no saved best-F1 threshold ({problem}); "
                         + _HOW.format(weights=weights or "<weights.pth>"))
    return DEFAULT_MIN_SCORE, f"the default {DEFAULT_MIN_SCORE} ({problem}: no saved best-F1 threshold)"

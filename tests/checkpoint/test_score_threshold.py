"""The best-F1 threshold stored beside the weights (d2_anchorfree/checkpoint/score_threshold.py)
and how --min-score reads it."""
import json

import pytest

from d2_anchorfree.checkpoint.score_threshold import (DEFAULT_MIN_SCORE, best_f1_path, load_best_f1, parse_min_score,
                                                       resolve_min_score, save_best_f1)

REPORT = {"best_f1": {"score_threshold": 0.42, "f1": 0.8, "precision": 0.75, "recall": 0.857, "iou": 0.5},
          "classes": [{"name": "tree", "best_f1": {"score_threshold": 0.42}}]}


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "model_final.pth"
    path.write_bytes(b"weights v1")
    return str(path)


def test_saved_threshold_is_found_and_used(weights):
    path = save_best_f1(weights, REPORT, "trees_val")
    assert path == weights[:-4] + ".best_f1.json" == best_f1_path(weights)
    entry = json.load(open(path))
    assert entry["score_threshold"] == 0.42 and entry["per_class"] == {"tree": 0.42} and entry["dataset"] == "trees_val"
    assert load_best_f1(weights)["score_threshold"] == 0.42
    assert resolve_min_score("best", weights)[0] == 0.42
    assert resolve_min_score(None, weights)[0] == 0.42
    assert resolve_min_score(0.7, weights)[0] == 0.7


def test_best_without_saved_threshold_is_an_error_naming_what_to_run(weights):
    with pytest.raises(ValueError, match=r"no saved best-F1 threshold .*model_final.best_f1.json.*d2af report"):
        resolve_min_score("best", weights)
    value, why = resolve_min_score(None, weights)
    assert value == DEFAULT_MIN_SCORE and "default" in why
    with pytest.raises(ValueError, match="no saved best-F1"):
        resolve_min_score("best", "")


def test_threshold_of_changed_weights_is_not_used(weights):
    save_best_f1(weights, REPORT, "trees_val")
    with open(weights, "wb") as f:
        f.write(b"weights v2: training resumed")
    with pytest.raises(ValueError, match="measured for other weights"):
        load_best_f1(weights)
    with pytest.raises(ValueError, match="measured for other weights"):
        resolve_min_score("best", weights)
    assert resolve_min_score(None, weights)[0] == DEFAULT_MIN_SCORE


def test_report_without_threshold_is_not_saved(weights):
    with pytest.raises(ValueError, match="no best-F1 threshold"):
        save_best_f1(weights, {**REPORT, "best_f1": {**REPORT["best_f1"], "score_threshold": None}}, "trees_val")


@pytest.mark.parametrize("text", ["1.5", "-0.1", "good"])
def test_min_score_values(text):
    assert parse_min_score("best") == "best" and parse_min_score("0.25") == 0.25
    with pytest.raises(ValueError):
        parse_min_score(text)

"""The drawing shared by d2af predict and d2af predict-onnx (runtime/predict_onnx.py draw) and
predict-onnx's --min-score from the model's metadata."""
import numpy as np
import pytest

from d2_anchorfree.runtime.predict_onnx import DEFAULT_MIN_SCORE, default_labels, draw, min_score_of

IMAGE = np.zeros((60, 80, 3), dtype=np.uint8)
BOXES = np.array([[10, 20, 30, 40], [50, 20, 70, 40]], dtype=np.float32)


def changed(out):
    return set(map(tuple, np.argwhere(out.any(2)).tolist()))


def outline(x0, y0, x1, y1):
    return {(y, x) for y in range(y0, y1 + 1) for x in range(x0, x1 + 1) if y in (y0, y1) or x in (x0, x1)}


def test_boxes_are_one_pixel_outlines_without_labels_and_below_min_score_are_left_out():
    out = draw(IMAGE, BOXES, [0.9, 0.2], [0, 0], ["tree"], 0.5, "none")
    assert changed(out) == outline(10, 20, 30, 40)  # thin box only, no text, second box below 0.5
    assert not IMAGE.any()  # a copy is drawn on


def test_labels_add_text_above_the_box():
    plain = changed(draw(IMAGE, BOXES, [0.9, 0.9], [0, 1], ["a", "b"], 0.0, "none"))
    named = changed(draw(IMAGE, BOXES, [0.9, 0.9], [0, 1], ["a", "b"], 0.0, "class"))
    scored = changed(draw(IMAGE, BOXES, [0.9, 0.9], [0, 1], ["a", "b"], 0.0, "score"))
    assert plain < named < scored and all(y < 20 for y, _ in named - plain)
    with pytest.raises(ValueError, match="labels must be one of"):
        draw(IMAGE, BOXES, [0.9, 0.9], [0, 1], ["a", "b"], 0.0, "big")


def test_default_labels_and_min_score_from_metadata():
    assert default_labels(1) == "none" and default_labels(3) == "class"
    assert min_score_of(None, {"best_f1_score_threshold": 0.37})[0] == 0.37
    assert min_score_of("best", {"best_f1_score_threshold": 0.37})[0] == 0.37
    assert min_score_of(0.6, {"best_f1_score_threshold": 0.37})[0] == 0.6
    assert min_score_of(None, {"best_f1_score_threshold": None})[0] == DEFAULT_MIN_SCORE
    with pytest.raises(ValueError, match="no saved best-F1 threshold.*d2af report.*d2af export"):
        min_score_of("best", {})

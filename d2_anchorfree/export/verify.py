"""Check an exported file against the eager model: same detections, boxes within 0.01 px and
scores within 1e-4, matched one to one whatever their order (candidates tied at the per-image
cut may swap)."""
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = ["BOX_TOL_PX", "SCORE_TOL", "MatchReport", "match_detections", "run_exported"]

BOX_TOL_PX = 0.01
SCORE_TOL = 1e-4

Detections = Tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [D, 4], scores [D], classes [D]


@dataclass
class MatchReport:
    """Result of :func:`match_detections`.

    Attributes:
        num_ref, num_got: detection counts of the reference and of the checked output.
        matched: pairs matched one to one (same class, boxes within the tolerance).
        max_box_diff: largest |coordinate difference| in pixels over the matched pairs.
        max_score_diff: largest |score difference| over the matched pairs.
        unmatched: ``(side, score)`` of every detection without a partner ("ref" or "got").
        cut_score: the higher of the two sides' lowest scores (None when a side is empty): the
            score where ``TEST.DETECTIONS_PER_IMAGE`` cut both lists.
        above_tie: (ref, got) counts of detections scoring more than ``score_tol`` above the
            highest unmatched score (all of them matched, by definition).
    """

    num_ref: int
    num_got: int
    matched: int
    max_box_diff: float
    max_score_diff: float
    unmatched: List[Tuple[str, float]] = field(default_factory=list)
    box_tol: float = BOX_TOL_PX
    score_tol: float = SCORE_TOL
    cut_score: Optional[float] = None
    above_tie: Tuple[int, int] = (0, 0)

    @property
    def ties_at_cut(self) -> bool:
        """Every unmatched detection scores within ``score_tol`` of :attr:`cut_score`, as many on
        each side: candidates tied at the cut of the per-image maximum, which float rounding
        (another backend, another CPU) may order either way, so either is a right answer."""
        sides = [side for side, _ in self.unmatched]
        return (self.cut_score is not None and sides.count("ref") == sides.count("got")
                and all(score <= self.cut_score + self.score_tol for _, score in self.unmatched))

    @property
    def ties_in_nms_order(self) -> bool:
        """Two candidates tied in score (within ``score_tol``) that the two backends' NMS visited in
        opposite order: the highest-scoring unmatched detection of each side is within
        ``score_tol`` of the other side's (each side kept a different one of the tied pair; below
        the tie the two NMS runs suppressed differently, so the counts may differ too), the
        detections above the tie (:attr:`above_tie`, at least one on each side) all matched, and
        at most a tenth of each side unmatched. Seen with briefly trained weights, whose scores
        crowd within 1e-3 of each other. A shifted box, a lost detection above the tie or a
        changed list is still a mismatch."""
        refs = [score for side, score in self.unmatched if side == "ref"]
        gots = [score for side, score in self.unmatched if side == "got"]
        if not refs or not gots or abs(max(refs) - max(gots)) > self.score_tol:
            return False
        return (min(self.above_tie) >= 1 and 10 * len(refs) <= self.num_ref and 10 * len(gots) <= self.num_got)

    @property
    def ok(self) -> bool:
        """The same detections: equal counts, every detection matched (except candidates swapped
        at the cut, :attr:`ties_at_cut`, or a tie visited in another order by NMS low in the lists,
        :attr:`ties_in_nms_order`), boxes within ``box_tol`` px, scores within ``score_tol``."""
        nms_tie = self.ties_in_nms_order  # False without unmatched detections on both sides
        return ((not self.unmatched or self.ties_at_cut or nms_tie) and (self.num_ref == self.num_got or nms_tie)
                and self.max_box_diff <= self.box_tol and self.max_score_diff <= self.score_tol)

    def summary(self) -> str:
        """One line: counts, largest differences and the unmatched detections."""
        text = (f"{self.matched}/{self.num_ref} reference detections matched ({self.num_got} checked), "
                f"max box diff {self.max_box_diff:.2e} px, max score diff {self.max_score_diff:.2e}")
        if self.unmatched:
            text += f", unmatched {self.unmatched[:5]}"
        return text


def _as_numpy(detections: Sequence) -> Detections:
    boxes, scores, classes = (x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
                              for x in detections)
    return boxes.reshape(-1, 4).astype(np.float64), scores.reshape(-1).astype(np.float64), classes.reshape(-1)


def match_detections(ref: Sequence, got: Sequence, box_tol: float = BOX_TOL_PX,
                     score_tol: float = SCORE_TOL) -> MatchReport:
    """Match two detection sets one to one: a pair has the same class and differs by at most
    ``box_tol`` px in every coordinate; among such pairings the one minimizing the summed largest
    coordinate difference is taken (``scipy.optimize.linear_sum_assignment``), so the order of
    the detections does not matter (ties in score may sort differently across backends).

    Args:
        ref, got: (boxes [D, 4] XYXY px, scores [D], classes [D]) as tensors or arrays.
        box_tol: pixels. score_tol: absolute score difference allowed.

    Returns:
        :class:`MatchReport` (``ok`` tells whether the two sets are the same detections).
    """
    rb, rs, rc = _as_numpy(ref)
    gb, gs, gc = _as_numpy(got)
    report = MatchReport(len(rs), len(gs), 0, 0.0, 0.0, box_tol=box_tol, score_tol=score_tol)
    matched_ref, matched_got = set(), set()
    if len(rs) and len(gs):
        diff = np.abs(rb[:, None, :] - gb[None, :, :]).max(axis=2)  # [Dr, Dg] px
        feasible = (rc[:, None] == gc[None, :]) & (diff <= box_tol)
        cost = np.where(feasible, diff, 1e6)
        rows, cols = linear_sum_assignment(cost)
        for r, c in zip(rows, cols):
            if feasible[r, c]:
                matched_ref.add(r)
                matched_got.add(c)
                report.max_box_diff = max(report.max_box_diff, float(diff[r, c]))
                report.max_score_diff = max(report.max_score_diff, float(abs(rs[r] - gs[c])))
    if len(rs) and len(gs):
        report.cut_score = float(max(rs.min(), gs.min()))
    report.matched = len(matched_ref)
    report.unmatched = ([("ref", float(rs[i])) for i in range(len(rs)) if i not in matched_ref]
                        + [("got", float(gs[i])) for i in range(len(gs)) if i not in matched_got])
    if report.unmatched:
        tie = max(score for _, score in report.unmatched) + score_tol
        report.above_tie = (int((rs > tie).sum()), int((gs > tie).sum()))
    return report


def run_exported(path: str, image: np.ndarray, session=None) -> Detections:
    """Run an exported file on one image.

    Args:
        path: ``.onnx`` (onnxruntime, CPU) or ``.ts`` (``torch.jit.load``) file.
        image: uint8 [H, W, 3] BGR array.
        session: an existing ``onnxruntime.InferenceSession`` of ``path`` to reuse (ONNX only).

    Returns:
        (boxes [D, 4] float32, scores [D] float32, classes [D] int64) as numpy arrays.

    Raises:
        ValueError: ``path`` is neither ``.onnx`` nor ``.ts``. ImportError: onnxruntime missing.
    """
    if path.endswith(".onnx"):
        if session is None:
            from .exporter import optional_import

            session = optional_import("onnxruntime").InferenceSession(path, providers=["CPUExecutionProvider"])
        boxes, scores, classes = session.run(None, {"image": np.ascontiguousarray(image)})
        return boxes, scores, classes
    if path.endswith(".ts"):
        module = torch.jit.load(path)
        with torch.no_grad():
            return tuple(x.numpy() for x in module(torch.from_numpy(np.ascontiguousarray(image))))
    raise ValueError(f"unknown export file type (expected .onnx or .ts): {path}")

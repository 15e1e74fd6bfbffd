"""Wall-clock timing and its statistics.

Every reading is ``time.perf_counter()``, with ``torch.cuda.synchronize()`` before it on CUDA so
that queued kernels are counted where they run. :class:`LapTimer` splits one call into
consecutive parts; :class:`TimedCall` wraps a callable attribute (an assigner) to add up the
time spent inside it. :func:`interleaved` times several models round-robin: run ``i`` runs
every model once, in an order rotated by ``i``, so that a slow spell of the machine (another
process, clock changes) lands on all models alike instead of on whichever was being measured,
which made one-model-after-another ratios unreliable on a shared 2-core CPU. Samples are
reported as median / min / max / quartiles (:func:`summarize`), in milliseconds.
"""
import statistics
import time
import traceback
from typing import Callable, Dict, List

import torch


def synchronize(device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class LapTimer:
    """Consecutive wall-clock laps (seconds); synchronizes CUDA before every reading."""

    def __init__(self, device: str):
        self.device = device
        synchronize(device)
        self.last = time.perf_counter()
        self.laps: Dict[str, float] = {}

    def lap(self, name: str):
        synchronize(self.device)
        now = time.perf_counter()
        self.laps[name] = self.laps.get(name, 0.0) + now - self.last
        self.last = now


class TimedCall:
    """Timing proxy for a callable attribute (an assigner object or a bound method).

    Calls go through unchanged; ``elapsed`` accumulates their wall time in seconds (CUDA
    synchronized before and after each call); ``started`` / ``finished`` are the
    ``time.perf_counter()`` readings at the start and end of the latest call (None before the
    first), for callers that place the call on a timeline (benchmarks/train_loop.py).
    """

    def __init__(self, fn: Callable, device: str):
        self.fn = fn
        self.device = device
        self.elapsed = 0.0
        self.started = self.finished = None

    def __call__(self, *args, **kwargs):
        synchronize(self.device)
        self.started = time.perf_counter()
        out = self.fn(*args, **kwargs)
        synchronize(self.device)
        self.finished = time.perf_counter()
        self.elapsed += self.finished - self.started
        return out


def summarize(values: List[float], scale: float = 1000.0) -> Dict[str, float]:
    """median / min / max / p25 / p75 of ``values`` times ``scale`` (s -> ms by default)."""
    v = sorted(x * scale for x in values)
    if not v:
        return {}
    q = statistics.quantiles(v, n=4, method="inclusive") if len(v) > 1 else [v[0]] * 3
    return {"median": statistics.median(v), "min": v[0], "max": v[-1], "p25": q[0], "p75": q[2], "n": len(v)}


def interleaved(entries: List[Dict], rounds: int, warmup: int, measure: Callable[[Dict], Dict[str, float]]):
    """Time every entry ``warmup + rounds`` times, round-robin: round ``i`` runs the entries in
    an order rotated by ``i``, so that a slow spell of the machine (another process, frequency
    changes, allocator warm-up) hits every model alike instead of the one measured at that
    moment, and no model always runs first. Returns {label: {part: [seconds, ...]}} over the
    rounds after the warm-up; an entry whose ``measure`` raises gets ``"error"`` and is dropped
    from later rounds."""
    samples = {e["label"]: {} for e in entries}
    alive = list(entries)
    for i in range(warmup + rounds):
        k = i % max(len(alive), 1)
        for e in alive[k:] + alive[:k]:
            try:
                laps = measure(e)
            except Exception as exc:  # one broken model must not stop the others
                e["error"] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
                continue
            if i >= warmup:
                for part, v in laps.items():
                    samples[e["label"]].setdefault(part, []).append(v)
        alive = [e for e in alive if "error" not in e]
    return samples


def entry_row(entry: Dict, samples: Dict, row: Dict, extra: Callable[[], Dict], device: str, images: int) -> Dict:
    """``row`` completed for one :func:`interleaved` entry: its error, or the summary of each
    timed part, then ``extra()``, then on CUDA images/s (``images`` per timed call) and the
    entry's peak memory (see :class:`benchmarks.memory.CudaPeak`)."""
    if "error" in entry:
        row["error"] = entry["error"]
        return row
    row.update({k: summarize(v) for k, v in samples[entry["label"]].items()})
    row.update(extra())
    if device.startswith("cuda"):
        row["images_per_s"] = images * 1000.0 / row["total"]["median"]
        row["peak_mem_mb"] = entry.get("peak_mem_mb")
    return row

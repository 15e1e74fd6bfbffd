"""The parts of tools/benchmark.py (the command line lives there; these are not a library).

* :mod:`bench.timing`: wall-clock laps, timing proxies, round-robin timing, summaries.
* :mod:`bench.memory`: peak memory of a call (CUDA allocator, Linux RSS high-water mark).
* :mod:`bench.inputs`: synthetic images, GT boxes, FPN points and predictions.
* :mod:`bench.models`: the detectors and assigners under test; the one module that uses
  d2_anchorfree's internals and config keys.
"""
import os

TOOLS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TOOLS)

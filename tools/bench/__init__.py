"""The parts of tools/benchmark.py (the command line lives there; these are not a library).

* :mod:`bench.timing`: wall-clock laps, timing proxies, round-robin timing, summaries.
* :mod:`bench.memory`: peak memory of a call (CUDA allocator, Linux RSS high-water mark).
* :mod:`bench.inputs`: synthetic images, GT boxes, FPN points and predictions.
"""
import os

TOOLS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TOOLS)

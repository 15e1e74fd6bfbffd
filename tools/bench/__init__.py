"""The parts of tools/benchmark.py (the command line lives there; these are not a library).

* :mod:`bench.timing`: wall-clock laps, timing proxies, round-robin timing, summaries.
* :mod:`bench.memory`: peak memory of a call (CUDA allocator, Linux RSS high-water mark).
* :mod:`bench.inputs`: synthetic images, GT boxes, FPN points and predictions.
* :mod:`bench.models`: the detectors and assigners under test; the one module that uses
  d2_anchorfree's internals and config keys.
* :mod:`bench.inference`, :mod:`bench.training`, :mod:`bench.assign`, :mod:`bench.hungarian`:
  one section each (``--sections infer,train,assign,hungarian``).
* :mod:`bench.report`: run description, progress lines and the Markdown tables.
"""
import os

TOOLS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO = os.path.dirname(TOOLS)
